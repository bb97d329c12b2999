"""The README's numbers that can be checked against committed files are checked here.

The results table against figures/metrics.json (the committed run), and the sweep tables
(ablation, pooling, exercises) against their summaries in figures/.
"""

import csv
import itertools
import json
import math
import re
from pathlib import Path

import pytest

from notebook_code import default_parameters

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
METRICS = json.loads((REPO / "figures" / "metrics.json").read_text(encoding="utf-8"))


def section(heading):
    """The README text from a heading to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = README.index(heading + "\n")
    rest = README[start + len(heading):]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def table_rows(text):
    """The rows of the first markdown table in text, as lists of stripped cells (header and rule left out)."""
    lines = list(itertools.dropwhile(lambda line: not line.startswith("|"), text.splitlines()))
    lines = list(itertools.takewhile(lambda line: line.startswith("|"), lines))
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def csv_rows(name, key="run"):
    """A summary CSV of figures/, as {the row's `key` column: row}."""
    with open(REPO / "figures" / name, newline="", encoding="utf-8") as f:
        return {row[key]: row for row in csv.DictReader(f)}


def test_the_results_table_is_the_committed_runs_metrics():
    rows = dict(table_rows(section("## Results of the committed run")))
    m, calibration = METRICS, METRICS["calibration"]
    ece = f"{calibration['test_ece']:.4f} / {calibration['test_ece_scaled']:.4f}"
    expected = {
        "test accuracy (25,000 reviews)": f"**{m['test_accuracy']:.4f}**",
        "test loss (binary cross-entropy)": f"{m['test_loss']:.4f}",
        "precision / recall / F1": f"{m['test_precision']:.4f} / {m['test_recall']:.4f} / {m['test_f1']:.4f}",
        "models (their seeds)": f"{m['n_models']} ({', '.join(str(member['seed']) for member in m['members'])})",
        "best epoch (by validation loss)":
            " / ".join(f"{member['best_epoch']} of {len(member['history']['epoch'])} run" for member in m["members"]),
        "validation accuracy at the best epoch": f"{m['best_valid_acc']:.4f}",
        "epochs averaged into the final model":
            " / ".join(" and ".join(map(str, member["averaged_epochs"])) for member in m["members"]),
        "validation accuracy of the final model": f"{m['valid_acc']:.4f}",
        "word-vector pretraining": f"{m['pretraining_seconds']:.0f} s",
        "training time (all models)": f"{m['training_seconds'] / 60:.1f} min",
        "expected calibration error, before / after temperature scaling":
            f"{ece} (T = {calibration['temperature']:.2f})",
        "peak memory (resident, the notebook's kernel)": f"{m['peak_memory']['cpu_rss_mib'] / 1024:.1f} GiB",
    }
    for name, value in expected.items():
        assert rows.get(name) == value, name


def test_the_model_size_in_the_readme_is_the_committed_runs():
    assert f"{METRICS['n_parameters']:,} parameters" in README
    assert f"{METRICS['config']['model']['vocab_size']:,} word vectors" in README


@pytest.mark.parametrize("heading, summary, columns", [
    ("### Earlier: one run per choice", "sweep_ablation_summary.csv",
     {2: "best_valid_acc", 4: "best_valid_loss", 6: "test_accuracy"}),
    ("### A sweep on the full data: how to pool the LSTM's outputs", "sweep_pooling_summary.csv",
     {3: "best_valid_acc", 4: "best_valid_loss", 5: "test_accuracy"}),
])
def test_every_sweep_table_matches_its_summary(heading, summary, columns):
    rows, expected = table_rows(section(heading)), csv_rows(summary)
    assert sorted(row[0] for row in rows) == sorted(expected)
    for row in rows:
        for index, key in columns.items():
            assert row[index] == f"{float(expected[row[0]][key]):.4f}", (row[0], key)


def test_the_seeded_ablation_table_matches_its_summary():
    """Best-epoch validation accuracy (mean ± sd over seeds), and its difference from the default ± standard error."""
    rows = table_rows(section("## What each choice is worth: the ablation"))
    # The seeded ablation's own configurations, and those of later sweeps with the same seeds.
    expected = csv_rows("sweep_ablation_seeds_by_config.csv", "config") | csv_rows(
        "sweep_adversarial_seeds_by_config.csv", "config")
    assert sorted(row[0] for row in rows) == sorted(expected)
    reference = expected["default"]
    for row in rows:
        want = expected[row[0]]
        mean, sd, n = float(want["best_valid_acc_mean"]), float(want["best_valid_acc_sd"]), int(want["seeds"])
        assert row[2] == str(n) and row[3] == f"{mean:.4f} ± {sd:.4f}", row[0]
        assert row[6] == f"{float(want['best_valid_loss_mean']):.4f} ± {float(want['best_valid_loss_sd']):.4f}"
        assert row[7] == f"{float(want['run_seconds_mean']) / 60:.1f}"
        if row[0] != "default":
            difference = mean - float(reference["best_valid_acc_mean"])
            se = math.sqrt(sd**2 / n + float(reference["best_valid_acc_sd"]) ** 2 / int(reference["seeds"]))
            assert row[4] == f"{100 * difference:+.1f} ± {100 * se:.1f} pt".replace("+-", "-"), row[0]
            assert row[5] == ("yes" if abs(difference) > 2 * se else "no"), row[0]


def test_the_weight_averaging_table_matches_its_summary():
    rows = table_rows(section("### Weight averaging: the best epoch and the next"))
    with open(REPO / "figures" / "sweep_ablation_seeds_averaging.csv", newline="", encoding="utf-8") as f:
        expected = {row["epochs_averaged"]: row for row in csv.DictReader(f) if row["config"] == "(all)"}
    assert [row[0].split(" ")[0] for row in rows] == sorted(expected)
    for row in rows:
        want = expected[row[0].split(" ")[0]]
        assert row[1] == want["runs"] and row[2] == f"{float(want['valid_acc_mean']):.4f}"
        assert row[5] == f"{float(want['valid_loss_mean']):.4f}"
        if want["acc_vs_one_epoch"]:
            gain, se = 100 * float(want["acc_vs_one_epoch"]), 100 * float(want["acc_vs_one_epoch_se"])
            assert row[3] == f"{gain:+.2f} ± {se:.2f} pt"
            assert row[4] == want["acc_beyond_noise"] and row[7] == want["loss_beyond_noise"]
            assert row[6] == f"{float(want['loss_vs_one_epoch']):+.4f} ± {float(want['loss_vs_one_epoch_se']):.4f}"


def test_the_default_averages_the_window_that_won_on_validation():
    averaged = [row for row in table_rows(section("### Weight averaging: the best epoch and the next"))
                if row[4] == "yes"]
    assert [row[0] for row in averaged] == [str(default_parameters()["average_epochs"])]


def test_the_exercise_runs_kept_their_best_epoch_so_both_columns_describe_one_model():
    """The exercise tables quote best_valid_acc, and the difference from the baseline is computed on the
    final model's valid_acc: the same numbers only while those runs' final model is the best epoch's.
    A rerun with weight averaging must update the tables (and the notebook's answers) from valid_acc."""
    for config, row in csv_rows("sweep_exercises_by_config.csv", "config").items():
        assert row["valid_acc_mean"] == row["best_valid_acc_mean"], config


def test_the_exercise_table_matches_the_seeded_summary():
    rows = table_rows(section("## Exercises in class"))
    with open(REPO / "figures" / "sweep_exercises_by_config.csv", newline="", encoding="utf-8") as f:
        expected = {row["config"]: row for row in csv.DictReader(f)}
    assert sorted(row[0] for row in rows) == sorted(expected)
    for row in rows:
        want = expected[row[0]]
        assert row[2] == want["seeds"]
        assert row[3] == f"{float(want['best_valid_acc_mean']):.4f} ± {float(want['best_valid_acc_sd']):.4f}"
        if want["valid_acc_vs_reference"]:
            diff, se = float(want["valid_acc_vs_reference"]), float(want["vs_reference_se"])
            assert row[4] == f"{100 * diff:+.1f} ± {100 * se:.1f} pt" and row[5] == want["beyond_noise"]
        assert row[6] == f"{float(want['test_accuracy_mean']):.4f}"
        assert row[7] == f"{float(want['run_seconds_mean']):.0f}"


def test_the_notebooks_exercise_answers_match_the_seeded_summary():
    """The answers table at the end of the notebook quotes the same runs as the README."""
    notebook = json.loads((REPO / "notebooks" / "sentiment_lstm.ipynb").read_text(encoding="utf-8"))
    answers = "".join(notebook["cells"][-1]["source"])
    assert answers.startswith("### Answers")
    with open(REPO / "figures" / "sweep_exercises_by_config.csv", newline="", encoding="utf-8") as f:
        expected = {row["config"]: row for row in csv.DictReader(f)}
    labels = {"baseline (defaults)": "baseline", '1. `pooling = "last"`': "ex1-last-pooling",
              "2. `pretrain_embeddings = False`": "ex2-no-pretrained-vectors",
              "3. `max_length = 400`": "ex3-max-length-400", "3. `max_length = 1200`": "ex3-max-length-1200",
              "4. `bidirectional = False`": "ex4-one-direction", "6. padding read first": "ex6-padding-first"}
    rows = table_rows(answers)
    assert sorted(labels[row[0]] for row in rows) == sorted(expected)
    for row in rows:
        want = expected[labels[row[0]]]
        assert row[1] == f"{float(want['best_valid_acc_mean']):.4f} ± {float(want['best_valid_acc_sd']):.4f}"
        if want["valid_acc_vs_reference"]:
            diff, se = float(want["valid_acc_vs_reference"]), float(want["vs_reference_se"])
            assert row[2] == f"{100 * diff:+.1f} ± {100 * se:.1f} pt".replace("-", "−")
        assert row[5] == f"{float(want['run_seconds_mean']) / 60:.1f} min"


def test_the_ensemble_table_matches_its_runs():
    """Per seed: the default (one model) and the ensemble of three, as recorded in figures/ensemble_seeds.csv."""
    rows = table_rows(section("### The ensemble: three models, one vote"))
    expected = csv_rows("ensemble_seeds.csv", "seed")
    by_seed = {row[0]: row for row in rows if row[0].isdigit()}
    assert sorted(by_seed) == sorted(expected)
    for seed, row in by_seed.items():
        want = expected[seed]
        assert row[1:] == [f"{float(want['single_valid_acc']):.4f}", f"{float(want['single_valid_loss']):.4f}",
                           f"{float(want['single_test_acc']):.4f}", want["members_valid_acc"],
                           f"{float(want['ensemble_valid_acc']):.4f}", f"{float(want['ensemble_valid_loss']):.4f}",
                           f"{float(want['ensemble_test_acc']):.4f}"], seed
    committed = expected[str(METRICS["params"]["seed"])]  # the committed run is the default of one seed
    assert float(committed["single_test_acc"]) == METRICS["test_accuracy"]
    assert float(committed["single_valid_acc"]) == METRICS["valid_acc"]


def test_the_adversarial_table_matches_its_runs():
    """Per seed: the default and adversarial training, as recorded in figures/adversarial_seeds.csv."""
    rows = table_rows(section("### Adversarial training: the worst push on the word vectors"))
    expected = csv_rows("adversarial_seeds.csv", "seed")
    assert sorted(row[0] for row in rows) == sorted(expected)
    for row in rows:
        want = expected[row[0]]
        assert row[1:] == [f"{float(want[key]):.4f}" for key in (
            "default_best_valid_acc", "default_valid_acc", "default_test_acc", "adversarial_best_valid_acc",
            "adversarial_valid_acc", "adversarial_valid_loss", "adversarial_test_acc")], row[0]
        assert want["adversarial_best_epoch"] == "3" and want["adversarial_averaged_epochs"] == "2 3"
    committed = expected[str(METRICS["params"]["seed"])]  # the committed run is the default of one seed
    assert float(committed["default_test_acc"]) == METRICS["test_accuracy"]
    assert float(committed["default_valid_acc"]) == METRICS["valid_acc"]
