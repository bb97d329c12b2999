"""The NB-weighted n-gram baseline and its combination with the LSTM, on hand-checked examples."""

import math

import numpy as np
import pytest
from scipy import sparse
from sklearn.linear_model import LogisticRegression

import helpers
from notebook_code import cell_containing

# Four training reviews, already tokenized as helpers.tokenize would: two positive, two negative.
REVIEWS = [["not", "bad", "at", "all"], ["great", "film"], ["bad", "film"], ["not", "great"]]
LABELS = [1, 1, 0, 0]


def test_the_log_count_ratio_matches_a_hand_computation():
    features = sparse.csr_matrix(np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=np.float32))
    # p = 1 + column sums over the positive rows (0 and 1) = [3, 2, 2]; q over rows 2 and 3 = [1, 2, 3]
    p, q = np.array([3, 2, 2]) / 7, np.array([1, 2, 3]) / 6
    assert np.allclose(helpers.nb_log_count_ratios(features, [1, 1, 0, 0]), np.log(p / q))
    assert helpers.nb_log_count_ratios(features, [1, 1, 0, 0])[0] == pytest.approx(math.log((3 / 7) / (1 / 6)))


def test_the_ratios_need_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        helpers.nb_log_count_ratios(sparse.csr_matrix(np.ones((2, 2))), [1, 1])


def test_features_are_binary_ngrams_scaled_by_their_ratios():
    ngrams = helpers.NBNgramFeatures(ngram_range=(1, 2)).fit(REVIEWS, LABELS)
    names = list(ngrams.feature_names())
    assert set(names) == {"not", "bad", "at", "all", "great", "film", "not bad", "bad at", "at all", "great film",
                          "bad film", "not great"}
    # By the definition, counted here without scikit-learn: p_j = 1 + positive reviews holding n-gram j.
    p = np.array([1 + sum(_holds(r, n) for r, y in zip(REVIEWS, LABELS, strict=True) if y == 1) for n in names])
    q = np.array([1 + sum(_holds(r, n) for r, y in zip(REVIEWS, LABELS, strict=True) if y == 0) for n in names])
    assert np.allclose(ngrams.ratios, np.log((p / p.sum()) / (q / q.sum())))
    assert ngrams.ratios[names.index("not bad")] > 0 > ngrams.ratios[names.index("bad")]
    row = ngrams.transform([["film", "film", "not", "bad"]]).toarray()[0]
    held = {"film", "not", "bad", "not bad"}  # "film film" and "film not" are no training bigrams
    for name in names:  # binary: "film" twice counts once, times its ratio
        assert row[names.index(name)] == pytest.approx(ngrams.ratios[names.index(name)] if name in held else 0.0)


def _holds(review, ngram):
    words = ngram.split(" ")
    return any(review[i:i + len(words)] == words for i in range(len(review)))


def test_an_ngram_seen_only_after_fitting_gets_no_column_and_no_weight():
    ngrams = helpers.NBNgramFeatures(ngram_range=(1, 2)).fit(REVIEWS, LABELS)
    assert "masterpiece" not in set(ngrams.feature_names())
    unseen = ngrams.transform([["masterpiece", "masterpiece"], ["a", "masterpiece"]])
    assert unseen.nnz == 0  # a token only in test (or validation) reviews adds nothing to any review's features
    assert ngrams.transform([["masterpiece", "great"]]).nnz == 1  # only "great" counts


def test_the_notebook_fits_the_baseline_on_the_training_split_only():
    source = cell_containing("ngrams.fit(")
    # A token that only a validation or test review holds must not become a feature.
    train_tokens = [["good", "film"], ["fine", "film"], ["awful", "film"], ["dull", "plot"], ["onlyvalid"],
                    ["onlytest"]]
    train_labels = [1, 1, 0, 0, 1, 0]
    space = {"helpers": helpers, "np": np, "time": __import__("time"), "train_tokens": train_tokens,
             "train_labels": train_labels, "train_idx": [0, 1, 2, 3], "valid_idx": [4, 5], "ngram_max_n": 2,
             "print": lambda *args: None, "init_checkpoint": ""}
    exec(source, space)  # noqa: S102 - the notebook's own cell
    names = set(space["ngrams"].feature_names())
    assert "good" in names and "onlyvalid" not in names and "onlytest" not in names
    assert space["ngram_valid"].nnz == 0


def run_the_combination_cell(valid_lstm, valid_ngram, valid_labels, test_lstm, test_ngram, test_labels):
    """The notebook's own combination cell, on given logits; returns the names it defines."""
    space = {
        "helpers": _HelpersWith(valid_lstm), "np": np, "LogisticRegression": LogisticRegression, "model": None,
        "device": "cpu", "valid_batches": None, "valid_labels": list(valid_labels), "test_labels": list(test_labels),
        "baseline_valid_logits": valid_ngram, "baseline_test_logits": test_ngram, "test_logits": test_lstm,
        "test_probs": helpers.sigmoid(test_lstm), "baseline_metrics": {"accuracy": 0.5}, "baseline_seconds": 1.0,
        "test_metrics": {"accuracy": 0.5}, "pretraining_seconds": 1.0, "training_seconds": 1.0,
        "baseline_n_features": 2, "print": lambda *args: None, "checkpoint_dir": None, "init_checkpoint": "",
        "n_epochs": 1, "valid_tokens": [["a"]] * len(valid_labels), "test_tokens": [["a"]] * len(test_labels),
        "reuse_ngrams": False, "history": {"epoch": [1]},
    }
    exec(cell_containing("combiner = LogisticRegression("), space)  # noqa: S102 - the notebook's own cell
    return space


def two_views(rng, n, lstm_noise=1.5, ngram_noise=1.5, scale=4.0):
    """Labels, and two over-confident logits of them (each `scale` times a noisy signal), independent noise."""
    labels = rng.integers(0, 2, n)
    signal = 2.0 * labels - 1.0
    return (labels, scale * (signal + rng.normal(0, lstm_noise, n)), scale * (signal + rng.normal(0, ngram_noise, n)))


def test_the_combination_weighs_two_overconfident_views_by_a_fit_on_validation():
    rng = np.random.default_rng(0)
    valid_labels, valid_lstm, valid_ngram = two_views(rng, 4000)
    test_labels, test_lstm, test_ngram = two_views(rng, 4000)
    space = run_the_combination_cell(valid_lstm, valid_ngram, valid_labels, test_lstm, test_ngram, test_labels)
    # Each logit is 4 * x with x = ±1 + noise of sd 1.5: the log-odds given both views is 2 * (x1 + x2) / 1.5**2,
    # that is each logit times 2 / (4 * 2.25) = 2 / 9, and no bias.
    assert space["lstm_weight"] == pytest.approx(2 / 9, abs=0.03)
    assert space["ngram_weight"] == pytest.approx(2 / 9, abs=0.03)
    assert abs(space["combination_bias"]) < 0.1
    combined = space["lstm_weight"] * test_lstm + space["ngram_weight"] * test_ngram + space["combination_bias"]
    assert np.allclose(space["combined_test_logits"], combined)
    accuracy = np.mean((combined >= 0) == test_labels)
    assert space["combined_metrics"]["accuracy"] == accuracy
    assert accuracy > max(np.mean((test_lstm >= 0) == test_labels), np.mean((test_ngram >= 0) == test_labels)) + 0.03
    # A view that holds no signal gets (almost) no weight.
    noise = rng.normal(0, 4, 4000)
    useless = run_the_combination_cell(valid_lstm, noise, valid_labels, test_lstm, test_ngram, test_labels)
    assert abs(useless["ngram_weight"]) < 0.02 < useless["lstm_weight"]


def test_the_notebooks_combination_is_fitted_on_validation_only():
    rng = np.random.default_rng(1)
    valid_labels, valid_lstm, valid_ngram = two_views(rng, 500)
    test_labels, test_lstm, test_ngram = two_views(rng, 400)
    honest = run_the_combination_cell(valid_lstm, valid_ngram, valid_labels, test_lstm, test_ngram, test_labels)
    # test logits that a combination fitted on test would weigh the other way round
    poisoned = run_the_combination_cell(valid_lstm, valid_ngram, valid_labels, test_lstm, -100 * test_ngram,
                                        test_labels)
    for name in ("lstm_weight", "ngram_weight", "combination_bias", "combined_valid_acc"):
        assert honest[name] == poisoned[name], name
    assert honest["ngram_weight"] > 0


class _HelpersWith:
    """helpers, with predict_logits returning fixed validation logits and count_parameters a constant."""

    def __init__(self, valid_logits):
        self._valid_logits = valid_logits

    def predict_logits(self, model, batches, device):
        return self._valid_logits

    def count_parameters(self, model):
        return 10

    def load_ngram_model(self, folder):  # every n-gram seen: coverage 1
        return type("AllSeen", (), {"coverage": lambda self, token_lists: np.ones(len(token_lists))})()

    def save_combiner(self, folder, rule, weights, bias):
        self.saved = (rule, weights, bias)

    def __getattr__(self, name):
        return getattr(helpers, name)


class _OneRightSplit:
    """A fitted model, set by its C: right on validation (4 reviews) or on test (6 reviews), wrong elsewhere."""

    RIGHT_ON = {0.1: None, 0.3: "valid", 1.0: "test"}
    LABELS = {"valid": np.array([1, 0, 1, 0]), "test": np.array([0, 1, 1, 0, 1, 0])}

    def __init__(self, C, solver):  # noqa: N803 (scikit-learn's name)
        self.c = C

    def fit(self, features, labels):
        return self

    def predict(self, features):
        split = "valid" if len(features) == 4 else "test"
        labels = self.LABELS[split]
        return labels if self.RIGHT_ON[self.c] == split else 1 - labels

    def decision_function(self, features):
        return 4.0 * self.predict(features) - 2.0


def test_the_notebook_chooses_c_by_validation_accuracy_not_by_test_accuracy():
    """Issue 33: C chosen on the test set was caught only by a consistency check of the saved logits."""
    space = {"helpers": _FittedAsItIs(), "np": np, "time": __import__("time"), "LogisticRegression": _OneRightSplit,
             "display": lambda *args: None, "print": lambda *args: None, "ngram_c_values": [0.1, 0.3, 1.0],
             "ngram_train": np.zeros((8, 1)), "baseline_train_labels": np.array([0, 1] * 4),
             "ngram_valid": np.zeros((4, 1)), "valid_labels": list(_OneRightSplit.LABELS["valid"]),
             "ngrams": None, "valid_tokens": [["a"]] * 4, "test_tokens": [["a"]] * 6,
             "test_labels": list(_OneRightSplit.LABELS["test"]), "baseline_start": 0.0, "reuse_ngrams": False,
             "init_checkpoint": "", "checkpoint_dir": None}
    exec(cell_containing("chosen_c = max("), space)  # noqa: S102 - the notebook's own cell
    assert space["baseline_valid_acc_by_c"] == {0.1: 0.0, 0.3: 1.0, 1.0: 0.0}
    assert space["baseline_c"] == 0.3  # validation's choice; the test set would have chosen 1.0
    assert space["baseline_metrics"]["accuracy"] == 0.0  # C = 0.3 is wrong on every test review, and that is kept


class _FittedAsItIs:
    """helpers, with an NgramModel that scores as the fitted regression it is made from, and no files written."""

    class NgramModel:
        def __init__(self, regression):
            self.c, self.regression, self.effect = regression.c, regression, np.zeros(1)

        @classmethod
        def from_fitted(cls, features, regression):
            return cls(regression)

        def logits(self, token_lists):
            return self.regression.decision_function(np.zeros((len(token_lists), 1)))

    def save_ngram_model(self, folder, model):
        pass

    def __getattr__(self, name):
        return getattr(helpers, name)
