"""sweeps/control.py, on the bundled sample: the run's split rebuilt exactly (checked against the notebook's own
cells), the combination fitted on validation alone, and the CSV files it writes.

The runs here are made by executing the notebook's data and split cells on the sample, with made-up LSTM and
n-gram logits (the control does not read them, only the combination does) and a small out-of-domain file.
"""

import csv
import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import helpers
from notebook_code import cell_containing, default_parameters
from sweeps import control, stats

SPLIT = {"use_sample": True, "imdb_archive": "", "valid_fraction": 0.3, "test_size": 120, "train_size": 0,
         "valid_size": 0}
# The notebook's cells that read the data, tokenize it and split it, found by a line each holds.
DATA_CELLS = ('helpers.read_imdb(data_root, "train")', "train_tokens = helpers.tokenize_all(train_texts)",
              "helpers.stratified_split(")
NOTEBOOK_RULE = "LogisticRegression().fit(np.column_stack([valid_lstm_logits, baseline_valid_logits]), valid_labels)"
SENTENCES = [("Great phone, works well.", 1), ("Terrible battery, broke at once.", 0), ("I love it.", 1),
             ("Waste of money.", 0), ("Excellent sound and a good price.", 1), ("Awful, do not buy.", 0),
             ("Very happy with this.", 1), ("Poor quality and bad service.", 0)] * 4

SEEDS_COLUMNS = [
    "run", "seed", "control", "n_train_reviews", "n_valid_reviews", "control_n_ngrams", "control_best_epoch",
    "control_epochs",
    *[f"{s}_{m}_acc" for s in ("valid",) for m in control.MODELS], "valid_cv_lstm_combined_acc",
    "valid_cv_control_combined_acc", *[f"{s}_{m}_acc" for s in ("test", "amazon") for m in control.MODELS],
    "control_combined_control_weight", "control_combined_ngram_weight", "control_combined_bias",
    "lstm_combined_lstm_weight", "lstm_combined_ngram_weight", "lstm_combined_bias", "control_train_seconds",
    "seconds", "torch_threads"]


def notebook_data(seed, split=SPLIT):
    """The namespace of the notebook's data and split cells, run on the sample with the given seed."""
    namespace = {"helpers": helpers, "np": np, "display": lambda *a, **k: None, "print": lambda *a, **k: None,
                 **default_parameters(), **split, "seed": seed}
    for text in DATA_CELLS:
        exec(cell_containing(text), namespace)  # noqa: S102 - the notebook's own cells
    return namespace


def make_run(folder, seed, ood_folder, split=SPLIT):
    """A finished run's metrics.json and logits.npz on the sample: the notebook's split, made-up model logits,
    combined by the notebook's rule."""
    notebook = notebook_data(seed, split)
    ood = helpers.load_ood_sets(ood_folder, download_missing=False, log=lambda *a: None)["amazon"]
    sets = {"valid": (notebook["valid_labels"], [notebook["train_tokens"][i] for i in notebook["valid_idx"]]),
            "test": (notebook["test_labels"], notebook["test_tokens"]), "amazon": (ood.labels, ood.tokens)}
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (labels, tokens) in sets.items():
        labels = np.array(labels)
        arrays.update({f"{name}_labels": labels, f"{name}_length": np.array([len(t) for t in tokens]),
                       f"{name}_coverage": np.ones(len(labels))})
        for model, noise in (("lstm", 2.0), ("ngram", 1.5)):
            arrays[f"{name}_{model}"] = (2 * labels - 1) + rng.normal(0, noise, len(labels))
    combiner = LogisticRegression().fit(np.column_stack([arrays["valid_lstm"], arrays["valid_ngram"]]),
                                        arrays["valid_labels"])
    for name in sets:
        arrays[f"{name}_combined"] = combiner.decision_function(np.column_stack([arrays[f"{name}_lstm"],
                                                                                 arrays[f"{name}_ngram"]]))
    params = {**default_parameters(), **split, "seed": seed, "ood_data": str(ood_folder)}
    metrics = {"params": params, "n_train_reviews": len(notebook["train_idx"]),
               "combined": {"rule": "stacked", "weights": combiner.coef_[0].tolist(),
                            "bias": float(combiner.intercept_[0])},
               "out_of_domain": {"amazon": {"sha256": ood.sha256}}}
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    np.savez_compressed(folder / "logits.npz", **arrays)
    return folder, notebook


@pytest.fixture
def ood_folder(tmp_path):
    folder = tmp_path / "ood"
    folder.mkdir()
    (folder / "amazon_cells_labelled.txt").write_text("".join(f"{text}\t{label}\n" for text, label in SENTENCES),
                                                      encoding="utf-8")
    return folder


def quiet(*args):
    pass


def quick_control():
    """The control with a larger step: the sample's 140 training reviews make a handful of steps an epoch."""
    return control.BagOfNgrams(lr=0.1, max_epochs=30, patience=3)


def test_the_rebuilt_split_is_the_notebooks_review_for_review(tmp_path, ood_folder):
    run, notebook = make_run(tmp_path / "run", 7, ood_folder)
    metrics, logits = control.load_run(run)
    data, checksums = control.rebuild_data(metrics["params"], ood_names=["amazon"], log=quiet)
    control.check_data(data, checksums, metrics, logits)  # raises on any difference
    assert data["train"] == ([notebook["train_tokens"][i] for i in notebook["train_idx"]],
                             [notebook["train_labels"][i] for i in notebook["train_idx"]])
    assert data["valid"] == ([notebook["train_tokens"][i] for i in notebook["valid_idx"]], notebook["valid_labels"])
    assert data["test"] == (notebook["test_tokens"], notebook["test_labels"]) and len(data["test"][1]) == 120
    assert len(data["valid"][1]) == 60 and not set(notebook["train_idx"]) & set(notebook["valid_idx"])


@pytest.mark.parametrize("change, message", [
    ({"seed": 8}, "valid reviews are not those"),  # the labels agree (sorted by class); the lengths do not
    ({"test_size": 0}, "test reviews are not those"),
    ({"valid_fraction": 0.25}, "valid reviews are not those"),
])
def test_a_run_whose_split_cannot_be_rebuilt_is_refused(tmp_path, ood_folder, change, message):
    run, _ = make_run(tmp_path / "run", 7, ood_folder)
    metrics, logits = control.load_run(run)
    data, checksums = control.rebuild_data({**metrics["params"], **change}, ood_names=["amazon"], log=quiet)
    with pytest.raises(control.SplitMismatchError, match=message):
        control.check_data(data, checksums, metrics, logits)


def test_another_out_of_domain_file_is_refused(tmp_path, ood_folder):
    run, _ = make_run(tmp_path / "run", 7, ood_folder)
    metrics, logits = control.load_run(run)
    # one word changed: the same labels and token counts, another file
    (ood_folder / "amazon_cells_labelled.txt").write_text("".join(f"{text}\t{label}\n" for text, label in SENTENCES)
                                                          .replace("Great phone", "Good phone", 1), encoding="utf-8")
    data, checksums = control.rebuild_data(metrics["params"], ood_names=["amazon"], log=quiet)
    with pytest.raises(control.SplitMismatchError, match="amazon reviews are not those"):
        control.check_data(data, checksums, metrics, logits)


def test_the_rule_is_the_notebooks_and_a_run_fitted_otherwise_is_refused(tmp_path, ood_folder):
    assert NOTEBOOK_RULE in cell_containing("combination_rule = \"stacked\"")
    run, _ = make_run(tmp_path / "run", 7, ood_folder)
    metrics, logits = control.load_run(run)
    control.check_rule(metrics, logits)  # the notebook's weights, refitted
    metrics["combined"]["weights"][1] += 0.01
    with pytest.raises(control.SplitMismatchError, match="not the notebook's rule"):
        control.check_rule(metrics, logits)


def test_the_combination_is_fitted_on_the_validation_reviews_alone():
    rng = np.random.default_rng(0)
    labels = {name: rng.integers(0, 2, n) for name, n in (("valid", 300), ("test", 500))}
    scores = {name: {model: (2 * y - 1) + rng.normal(0, 1.5, len(y)) for model in ("control", "lstm", "ngram",
                                                                                     "lstm_combined")}
              for name, y in labels.items()}
    weights, bias, rights, _ = control.evaluate(scores, labels)
    permuted = {**labels, "test": rng.permutation(labels["test"])}
    weights_permuted, bias_permuted, rights_permuted, _ = control.evaluate(scores, permuted)
    assert np.array_equal(weights, weights_permuted) and bias == bias_permuted
    assert not np.array_equal(rights["test"]["control_combined"], rights_permuted["test"]["control_combined"])
    # the validation labels do move them: the check above could fail
    weights_other, _, _, _ = control.evaluate(scores, {**labels, "valid": rng.permutation(labels["valid"])})
    assert not np.allclose(weights, weights_other)


def test_no_test_label_reaches_the_control_or_its_combination(tmp_path, ood_folder, monkeypatch):
    whole_test = {**SPLIT, "test_size": 0}  # a subset of the test reviews would be drawn by their labels
    run, _ = make_run(tmp_path / "run", 7, ood_folder, whole_test)
    row, _ = control.run_row(run, quick_control(), log=quiet)
    read_imdb = helpers.read_imdb

    def flipped_test_labels(root, split):
        texts, labels = read_imdb(root, split)
        return texts, (labels if split == "train" else [1 - label for label in labels])

    monkeypatch.setattr(helpers, "read_imdb", flipped_test_labels)
    flipped_run, _ = make_run(tmp_path / "flipped", 7, ood_folder, whole_test)
    flipped, _ = control.run_row(flipped_run, quick_control(), log=quiet)
    for key in ("control_combined_control_weight", "control_combined_ngram_weight", "control_combined_bias",
                "valid_control_acc", "valid_control_combined_acc", "valid_cv_control_combined_acc",
                "amazon_control_acc", "amazon_control_combined_acc", "control_best_epoch", "control_n_ngrams"):
        assert flipped[key] == row[key], key
    assert flipped["test_control_acc"] == pytest.approx(1 - row["test_control_acc"])
    assert row["valid_control_acc"] > 0.7 and row["test_control_acc"] > 0.6  # it learnt something


def test_the_csv_files_hold_a_row_per_seed_and_a_summary_judged_by_holm(tmp_path, ood_folder, monkeypatch, capsys):
    runs = [str(make_run(tmp_path / f"run-{seed}", seed, ood_folder)[0]) for seed in (7, 8)]
    out, keep = tmp_path / "figures" / "control", tmp_path / "keep"
    control.main([*runs, "--out", str(out), "--keep", str(keep)])
    with open(f"{out}_seeds.csv", encoding="utf-8") as f:
        seeds = list(csv.DictReader(f))
    assert list(seeds[0]) == SEEDS_COLUMNS and [row["seed"] for row in seeds] == ["7", "8"]
    for row in seeds:
        assert all(0 <= float(row[k]) <= 1 for k in SEEDS_COLUMNS if k.endswith("_acc"))
    with open(f"{out}_seeds_summary.csv", encoding="utf-8") as f:
        summary = list(csv.DictReader(f))
    assert [row["set"] for row in summary] == ["valid", "test", "amazon"]
    def column(name, model):  # validation's combinations are judged held out (10-fold), as the record does
        return f"valid_cv_{model}_acc" if name == "valid" and model.endswith("combined") else f"{name}_{model}_acc"

    for row in summary:
        for model in control.MODELS:
            assert float(row[f"{model}_mean"]) == pytest.approx(np.mean([float(s[column(row["set"], model)])
                                                                         for s in seeds]))
        for a, b in control.COMPARISONS:
            key = f"{a}_minus_{b}"
            assert {f"{key}_points", f"{key}_se", f"{key}_seed_se", f"{key}_set_se", f"{key}_p", f"{key}_p_holm",
                    f"{key}_beyond_noise", f"{key}_low", f"{key}_high"} <= set(row)
            assert float(row[f"{key}_p"]) <= float(row[f"{key}_p_holm"]) <= 1
            mean = np.mean([float(s[column(row["set"], a)]) - float(s[column(row["set"], b)]) for s in seeds])
            assert float(row[f"{key}_points"]) == pytest.approx(100 * mean)
    family = [float(row[f"{a}_minus_{b}_p"]) for row in summary for a, b in control.COMPARISONS]
    assert [float(row[f"{a}_minus_{b}_p_holm"]) for row in summary for a, b in control.COMPARISONS] == (
        pytest.approx(stats.holm(family)[1].tolist()))  # Holm over the whole table: nine comparisons
    # a second pass reuses the kept logits: no training, the same figures
    monkeypatch.setattr(control.BagOfNgrams, "fit", lambda *a, **k: pytest.fail("retrained"))
    control.main([*runs, "--out", str(tmp_path / "again"), "--keep", str(keep)])
    with open(tmp_path / "again_seeds_summary.csv", encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == summary
