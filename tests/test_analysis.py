"""Explanations (integrated gradients), calibration and error analysis helpers."""


import time

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import helpers
from conftest import TinyModel
from notebook_code import cell_containing


@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
def test_integrated_gradients_have_one_finite_score_per_token_and_are_complete(pooling):
    torch.manual_seed(1)
    model = TinyModel(vocab_size=30, dim=6, pooling=pooling)
    token_ids = [3, 17, 5, 9, 22, 4, 11]
    contributions, logit, reference_logit = helpers.integrated_gradients(model, token_ids, "cpu", steps=128)
    assert contributions.shape == (7,) and np.all(np.isfinite(contributions))
    with torch.no_grad():
        assert logit == pytest.approx(float(model(torch.tensor([token_ids]), torch.tensor([7]))), abs=1e-5)
        pads = torch.zeros(1, 7, dtype=torch.long)
        assert reference_logit == pytest.approx(float(model(pads, torch.tensor([7]))), abs=1e-5)
    # Completeness: the contributions add up to the change in logit from the baseline.
    assert contributions.sum() == pytest.approx(logit - reference_logit, abs=0.01 * max(1, abs(logit)))


def test_integrated_gradients_in_parts_match_them_in_one_go():
    # A long review's 65 points of the path go through in parts of at most max_tokens tokens; every point's
    # gradient is its own, so the contributions and the two logits must not change (7 tokens: parts of 1 to 65).
    torch.manual_seed(2)
    model = TinyModel(vocab_size=30, dim=6)
    token_ids = [3, 17, 5, 9, 22, 4, 11]
    whole = helpers.integrated_gradients(model, token_ids, "cpu", steps=64, max_tokens=10_000)
    for max_tokens in (7, 30, 100):
        contributions, logit, reference_logit = helpers.integrated_gradients(model, token_ids, "cpu", steps=64,
                                                                            max_tokens=max_tokens)
        assert np.allclose(contributions, whole[0], atol=1e-6)
        assert (logit, reference_logit) == pytest.approx(whole[1:], abs=1e-6)


def test_a_token_the_model_ignores_gets_no_credit():
    model = TinyModel(vocab_size=30, dim=6)
    with torch.no_grad():
        model.embedding.weight[5] = 0  # token 5 looks exactly like padding
    contributions, *_ = helpers.integrated_gradients(model, [3, 5, 7], "cpu")
    assert contributions[1] == 0


def test_attribution_html_escapes_tokens_and_colours_by_sign():
    page = helpers.attribution_html(["<b>", "bad"], np.array([0.5, -1.0]))
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert "background:#00960080" in page and "background:#d20000ff" in page  # half and full opacity


def test_expected_calibration_error_on_a_hand_made_example():
    # Bin 0.5-0.55: two predictions with confidence 0.52, one right -> |0.5 - 0.52| weighted 2/5.
    # Bin 0.95-1.0: three with confidence 0.98 (two say positive, one negative), all right -> 0.02 weighted 3/5.
    probs = [0.52, 0.48, 0.98, 0.98, 0.02]
    labels = [1, 1, 1, 1, 0]
    ece, bins = helpers.expected_calibration_error(probs, labels, n_bins=10)
    assert ece == pytest.approx(2 / 5 * 0.02 + 3 / 5 * 0.02)
    assert bins == [(pytest.approx(0.52), 0.5, 2), (pytest.approx(0.98), 1.0, 3)]


def test_a_perfectly_calibrated_model_has_almost_no_ece():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, 200_000)
    labels = (rng.uniform(0, 1, probs.size) < probs).astype(int)
    assert helpers.expected_calibration_error(probs, labels)[0] < 0.005


@pytest.mark.slow
def test_fit_temperature_recovers_the_temperature_that_made_logits_overconfident():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 50_000)
    labels = (rng.uniform(0, 1, true_logits.size) < helpers.sigmoid(true_logits)).astype(int)
    assert helpers.fit_temperature(3 * true_logits, labels) == pytest.approx(3, rel=0.05)
    assert helpers.fit_temperature(true_logits, labels) == pytest.approx(1, rel=0.05)


def test_sigmoid_is_stable_for_large_logits():
    assert helpers.sigmoid(np.array([-800.0, 0.0, 800.0])).tolist() == [0.0, 0.5, 1.0]


def test_accuracy_by_length_bins_cover_every_review():
    counts = np.arange(1, 101)
    probs = np.where(counts >= 50, 0.9, 0.1)  # right exactly for the reviews of 50 tokens and more
    names, accuracies, sizes = helpers.accuracy_by_length(counts, probs, labels=[1] * 100, max_length=200, n_bins=2)
    assert names == ["1–49", "50–100"] and sizes == [49, 51]
    assert accuracies == [0.0, 1.0]


def test_reviews_longer_than_max_length_get_a_bin_of_their_own():
    counts = np.arange(1, 101)
    probs = np.where(counts > 80, 0.1, 0.9)  # wrong exactly for the reviews cut at 80 tokens
    names, accuracies, sizes = helpers.accuracy_by_length(counts, probs, labels=[1] * 100, max_length=80, n_bins=2)
    assert names == ["1–39", "40–80", "> 80 (cut)"] and sizes == [39, 41, 20]
    assert accuracies == [1.0, 1.0, 0.0]


def test_strongest_window_holds_the_largest_total_attribution():
    contributions = np.array([0.1, -0.2, 0.3, 3.0, -2.5, 0.0, 0.0, 0.4])
    assert helpers.strongest_window(contributions, 3) == (2, 5)
    assert helpers.strongest_window(contributions, 20) == (0, 8)


def test_shaded_tokens_have_a_plain_text_form_that_marks_the_strongest_words():
    shaded = helpers.ShadedTokens(["not", "bad", "at", "all"], np.array([0.39, -1.7, 0.01, 0.02]), "probe", n_marked=2)
    assert repr(shaded) == "probe\nnot[+0.39] bad[-1.70] at all"
    assert "<span" in shaded._repr_html_() and "probe" in shaded._repr_html_()


def test_a_table_rounds_floats_in_text_and_html():
    table = helpers.Table([("accuracy", 0.912712345), ("reviews", 25000)], ("", "value"))
    assert repr(table).splitlines() == ["          value", "accuracy  0.9127", "reviews   25,000"]
    assert "<td>0.9127</td>" in table._repr_html_()


class FixedLogits(torch.nn.Module):
    """A model whose logit for a review is set by the review's first token: logits[token]."""

    def __init__(self, logits):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, tokens, lengths):
        return self.table[tokens[:, 0]]


def test_the_notebook_fits_the_temperature_on_validation_and_never_on_test(tmp_path):
    # Validation: logits of +-3 that are right 4 times in 5, so the best temperature is a moderate one.
    valid_labels = [1, 1, 1, 1, 0] * 4 + [0, 0, 0, 0, 1] * 4
    valid_ids = [[1]] * 20 + [[2]] * 20  # token 1: logit +3, token 2: logit -3
    model = FixedLogits([0.0, 3.0, -3.0])
    valid_batches = helpers.BucketBatches(valid_ids, valid_labels, 8)
    # Test: poisoned, confidently wrong logits, whose own best temperature is far larger.
    test_labels = [1, 0] * 10
    test_logits = np.array([-30.0, 30.0] * 10)
    test_probs = helpers.sigmoid(test_logits)
    space = {"helpers": helpers, "np": np, "valid_lstm_logits": helpers.predict_logits(model, valid_batches, "cpu"),
             "valid_labels": valid_labels, "test_logits": test_logits, "test_probs": test_probs,
             "test_labels": test_labels, "test_metrics": helpers.binary_metrics(test_probs, test_labels),
             "display": lambda table: None, "plt": plt, "figures_dir": tmp_path, "time": time, "analysis_start": 0.0}
    exec(cell_containing("helpers.fit_temperature("), space)  # noqa: S102 - the notebook's own cell
    on_validation = helpers.fit_temperature(np.array([3.0] * 20 + [-3.0] * 20), valid_labels)
    assert 1.5 < on_validation < 3 and helpers.fit_temperature(test_logits, test_labels) > 10
    assert space["temperature"] == on_validation == space["calibration"]["temperature"]
    np.testing.assert_allclose(space["scaled_probs"], helpers.sigmoid(test_logits / on_validation))
