"""The README's numbers that can be checked against committed files are checked here.

Every results table against the file it comes from: the committed run's table against
figures/metrics.json and the committed notebook, the sweep tables (ablation, pooling,
exercises, weight averaging) against their summaries in figures/, the ensemble and adversarial
tables against their per-seed CSVs, and the tables of "Speed and memory" against
figures/benchmark.json; and the figures the prose quotes from those files. The expected strings
are computed from the files, formatted as the README formats them.
"""

import csv
import itertools
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from notebook_code import default_parameters

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "figures"
README = (REPO / "README.md").read_text(encoding="utf-8")
METRICS = json.loads((FIGURES / "metrics.json").read_text(encoding="utf-8"))
NOTEBOOK = REPO / "notebooks" / "sentiment_lstm.ipynb"
NUMBER_WORDS = dict(enumerate(("none", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")))


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


def prose(heading):
    """A section's text with every run of whitespace made one space, as the prose reads."""
    return " ".join(section(heading).split())


def csv_list(name):
    """The rows of a CSV of figures/, in order."""
    with open(FIGURES / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def csv_rows(name, key="run"):
    """A summary CSV of figures/, as {the row's `key` column: row}."""
    return {row[key]: row for row in csv_list(name)}


def column(rows, key):
    return [float(row[key]) for row in rows]


def mean_sd(values, digits=4):
    """"0.9115 ± 0.0049": the mean and the standard deviation (n - 1) of values."""
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def paired(after, before):
    """The mean of the paired differences after - before, and its standard error."""
    differences = [a - b for a, b in zip(after, before, strict=True)]
    return statistics.fmean(differences), statistics.stdev(differences) / math.sqrt(len(differences))


def points(difference, se, digits=1, minus="-"):
    """A difference of accuracies in points: "+0.20 ± 0.07", "−4.5 ± 1.3" (minus: the sign the text uses)."""
    return f"{100 * difference:+.{digits}f} ± {100 * se:.{digits}f}".replace("-", minus)


def committed_notebook():
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def test_the_results_table_is_the_committed_runs_metrics():
    rows = dict(table_rows(section("## Results of the committed run")))
    m, calibration = METRICS, METRICS["calibration"]
    ece = f"{calibration['test_ece']:.4f} / {calibration['test_ece_scaled']:.4f}"
    expected = {
        "test accuracy (25,000 reviews)": f"**{m['test_accuracy']:.4f}**",
        "test loss (binary cross-entropy)": f"{m['test_loss']:.4f}",
        "precision / recall / F1": f"{m['test_precision']:.4f} / {m['test_recall']:.4f} / {m['test_f1']:.4f}",
        "the n-gram baseline (section 2), test accuracy": f"{m['ngram_baseline']['test_accuracy']:.4f} "
                                                          f"(C = {m['ngram_baseline']['c']:g}, "
                                                          f"{m['ngram_baseline']['seconds']:.0f} s)",
        "the LSTM and the n-grams combined (section 5), test accuracy": f"**{m['combined']['test_accuracy']:.4f}**",
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
        "sections 7–9 (explanations, error analysis, calibration)": f"{m['analysis_seconds']:.0f} s of the run",
        # papermill's record of the committed notebook's whole execution
        "whole run, end to end": f"{committed_notebook()['metadata']['papermill']['duration'] / 60:.1f} min",
    }
    for name, value in expected.items():
        assert rows.get(name) == value, name


def test_the_prose_of_the_results_quotes_the_committed_run_and_the_seeds():
    text, m = prose("## Results of the committed run"), METRICS
    seeds = csv_list("baseline_seeds.csv")  # the default runs of seeds 42 (the committed run), 1 and 2
    committed = next(row for row in seeds if row["seed"] == str(m["params"]["seed"]))
    assert float(committed["lstm_test_acc"]) == m["test_accuracy"]
    others = [row for row in seeds if row is not committed]
    scores = " and ".join(f"{float(row['lstm_test_acc']):.4f}" for row in others)
    assert f"scored {scores} on the test" in text
    assert f"**{mean_sd(column(seeds, 'lstm_test_acc'))}** over the three seeds" in text
    assert f"baseline scored {mean_sd(column(seeds, 'ngram_test_acc'))} on the same splits" in text
    assert all(float(row["ngram_test_acc"]) > float(row["lstm_test_acc"]) for row in seeds)  # "on every seed"
    assert f"the two combined {mean_sd(column(seeds, 'combined_test_acc'))}" in text
    final, best = m["valid_acc"], m["best_valid_acc"]
    epochs = " and ".join(map(str, m["averaged_epochs"]))
    assert f"(epochs {epochs} averaged: validation accuracy {final:.4f} against {best:.4f} for the best" in text
    n_valid = round(m["n_train_reviews"] / (1 - m["params"]["valid_fraction"]) * m["params"]["valid_fraction"])
    assert f"alone, {round((final - best) * n_valid)} reviews of {n_valid:,})" in text
    seconds = m["history"]["seconds"]
    assert f"the epochs took {min(seconds):.0f} to {max(seconds):.0f} s" in text
    duration = committed_notebook()["metadata"]["papermill"]["duration"]
    assert f"so the run took {duration / 60:.1f} minutes" in text
    averaging = [row for row in csv_list("sweep_ablation_seeds_averaging.csv") if row["config"] == "(all)"]
    window = next(row for row in averaging if row["epochs_averaged"] == str(m["params"]["average_epochs"]))
    gain = points(float(window["acc_vs_one_epoch"]), float(window["acc_vs_one_epoch_se"]), digits=2)
    assert f"rests on the {window['runs']} paired runs of \"Weight averaging\" below ({gain} points" in text
    # The ablation's default (the committed run's parameters then) against that committed run's 0.2151.
    earlier = float(csv_rows("sweep_ablation_summary.csv")["default"]["best_valid_loss"])
    assert f"({earlier:.4f} against 0.2151)" in text


def test_the_strong_baseline_tables_are_the_runs_records():
    """The three tables of "The strong baseline", cell by cell, against the CSVs compare_baseline.py wrote."""
    text = section("## The strong baseline: NB-weighted n-grams, and the LSTM with them")
    tables = re.findall(r"(?:^\|.*\n)+", text, flags=re.MULTILINE)
    assert len(tables) == 3
    seeds, differences, rules = ([[c.strip() for c in line.strip("|").split("|")] for line in t.splitlines()[2:]]
                                 for t in tables)
    runs = csv_list("baseline_seeds.csv")
    assert [row[0] for row in seeds] == [r["seed"] for r in runs] + ["mean ± sd"]
    for cells, r in zip(seeds, runs, strict=False):  # the last row, the mean, is checked below
        assert cells[1] == f"{float(r['ngram_c']):g}"
        accuracies = [f"{float(r[f'{model}_{split}_acc']):.4f}" for split in ("valid", "test")
                      for model in ("ngram", "lstm", "combined")]
        assert cells[2:8] == accuracies
        assert cells[8] == f"{100 * float(r['test_disagreement']):.1f} %"
        assert cells[9] == f"{float(r['lstm_weight']):.2f} / {float(r['ngram_weight']):.2f}"
        assert cells[10:] == [f"{float(r['ngram_seconds']):.0f} s", f"{float(r['run_minutes']):.1f} min",
                              f"{int(r['peak_memory_mib']):,} MiB"]
    assert seeds[-1][2:8] == [mean_sd(column(runs, f"{model}_{split}_acc")) for split in ("valid", "test")
                              for model in ("ngram", "lstm", "combined")]
    names = {"lstm": "LSTM", "ngram": "n-gram baseline", "combined": "LSTM + n-grams"}
    pairs = (("lstm", "ngram"), ("combined", "ngram"), ("combined", "lstm"))
    assert len(differences) == len(pairs)
    for cells, (a, b) in zip(differences, pairs, strict=True):
        mean, se = paired(column(runs, f"{a}_test_acc"), column(runs, f"{b}_test_acc"))
        low, high = 100 * (mean - 4.303 * se), 100 * (mean + 4.303 * se)
        assert cells == [f"{names[a]} minus {names[b]}", points(mean, se, digits=2), f"{low:+.2f} to {high:+.2f}",
                         "yes" if low > 0 or high < 0 else "no"]
    cv = csv_list("baseline_rules_cv.csv")
    seed_order = list(dict.fromkeys(row["seed"] for row in cv))
    assert seed_order == [r["seed"] for r in runs]
    for cells in rules:
        by_seed = {row["seed"]: row for row in cv if row["rule"] == cells[0]}
        assert cells[1:] == [f"{float(by_seed[seed]['cv_valid_acc']):.4f} / "
                             f"{float(by_seed[seed]['cv_valid_log_loss']):.4f}" for seed in seed_order]
    assert len(rules) == len({row["rule"] for row in cv})


def test_the_prose_of_the_strong_baseline_quotes_its_tables():
    text = prose("## The strong baseline: NB-weighted n-grams, and the LSTM with them")
    runs, cv = csv_list("baseline_seeds.csv"), csv_list("baseline_rules_cv.csv")

    def span(values, digits, unit=""):
        return f"{min(values):.{digits}f}{unit} to {max(values):.{digits}f}{unit}"

    lstm_gap, _ = paired(column(runs, "ngram_test_acc"), column(runs, "lstm_test_acc"))
    ahead = sum(float(r["ngram_test_acc"]) > float(r["lstm_test_acc"]) for r in runs)
    seeds_ahead = ("every seed" if ahead == len(runs)
                   else f"{NUMBER_WORDS[ahead]} of the {NUMBER_WORDS[len(runs)]} seeds")
    assert f"ahead on {seeds_ahead}, by {100 * lstm_gap:.2f} points on average" in text
    assert f"({span(column(runs, 'ngram_seconds'), 0)} s with its features)" in text
    assert f"they disagree on {span([100 * v for v in column(runs, 'test_disagreement')], 1)} % of the test" in text
    combined = column(runs, "combined_test_acc")
    assert f"{mean_sd(combined)} test accuracy over the three seeds" in text
    assert (statistics.fmean(combined) >= 0.925) == ("That meets the goal of issue 22" in text)
    below = [r for r in runs if float(r["combined_test_acc"]) < 0.925]
    if below:
        assert f"with one seed ({below[0]['seed']}, {float(below[0]['combined_test_acc']):.4f}) below it" in text
    else:
        assert "every seed at or above it" in text
    for a, b, words in (("combined", "ngram", "over the baseline"), ("combined", "lstm", "over the LSTM")):
        mean, _ = paired(column(runs, f"{a}_test_acc"), column(runs, f"{b}_test_acc"))
        assert f"{100 * mean:+.2f} points {words}" in text
    memory = [int(r["peak_memory_mib"]) for r in runs]
    verdict = "within the 2 GiB goal" if max(memory) <= 2048 else "**over the 2 GiB goal**"
    assert f"Peak memory was {min(memory):,} to {max(memory):,} MiB: {verdict}" in text
    minutes = [float(r["run_minutes"]) for r in runs]
    within = "within the 20 of the goal" if max(minutes) <= 20 else "**over the 20 of the goal**"
    assert f"the runs of seeds {', '.join(r['seed'] for r in runs[:-1])} and {runs[-1]['seed']} took " \
           f"{', '.join(f'{m:.1f}' for m in minutes[:-1])} and {minutes[-1]:.1f} minutes, {within}" in text
    weights = {key: span(column(runs, key), 2) for key in ("lstm_weight", "ngram_weight")}
    assert f"({weights['lstm_weight']} for the LSTM, {weights['ngram_weight']} for the n-grams)" in text
    adopted = [r for r in cv if "adopted" in r["rule"]]
    previous = [r for r in cv if "previous" in r["rule"]]
    assert all(a["seed"] == p["seed"] and float(a["cv_valid_log_loss"]) < float(p["cv_valid_log_loss"])
               and float(a["cv_valid_acc"]) > float(p["cv_valid_acc"]) for a, p in zip(adopted, previous, strict=True))
    assert (f"({span(column(adopted, 'cv_valid_log_loss'), 3)} against "
            f"{span(column(previous, 'cv_valid_log_loss'), 3)})") in text
    assert f"the LSTM's calibration temperature is {METRICS['calibration']['temperature']:.2f}" in text


def test_the_model_described_under_the_results_is_the_notebooks_default():
    text, p = prose("## Results of the committed run"), default_parameters()
    assert f"The model: {p['embedding_dim']}-dimensional word vectors" in text
    assert f"fine-tuned (dropout {p['embedding_dropout']})" in text
    assert f"one bidirectional LSTM layer of {p['hidden_dim']} units per direction, {p['pooling']} pooling" in text
    assert p["n_layers"] == 1 and p["bidirectional"] is True
    assert f"dropout {p['dropout']}, a fully connected layer" in text
    assert f"Adam at {p['lr']:.0e}".replace("e-0", "e-") in text
    assert f"batches of {p['batch_size']}, the first {p['max_length']} tokens of each review" in text
    assert f"every token seen at least {'twice' if p['min_freq'] == 2 else p['min_freq']} in the training" in text


def test_the_model_size_in_the_readme_is_the_committed_runs():
    assert f"{METRICS['n_parameters']:,} parameters" in README
    assert f"{METRICS['config']['model']['vocab_size']:,} word vectors" in README


def test_the_single_run_ablation_table_matches_its_summary():
    """Every column of "Earlier: one run per choice", in the summary's order (by validation accuracy)."""
    rows, expected = table_rows(section("### Earlier: one run per choice")), csv_list("sweep_ablation_summary.csv")
    assert [row[0] for row in rows] == [want["run"] for want in expected]
    assert column(expected, "best_valid_acc") == sorted(column(expected, "best_valid_acc"), reverse=True)
    reference = float(csv_rows("sweep_ablation_summary.csv")["default"]["best_valid_acc"])
    for row, want in zip(rows, expected, strict=True):
        difference = float(want["best_valid_acc"]) - reference
        assert row[2:] == [f"{float(want['best_valid_acc']):.4f}",
                           "—" if want["run"] == "default" else f"{100 * difference:+.1f} pt",
                           f"{float(want['best_valid_loss']):.4f}", f"{want['best_epoch']} / {want['epochs']}",
                           f"{float(want['test_accuracy']):.4f}", want["seconds"]], want["run"]


def test_the_prose_of_the_single_run_ablation_quotes_its_summary():
    text, runs = prose("### Earlier: one run per choice"), csv_rows("sweep_ablation_summary.csv")

    def versus_default(run):
        return 100 * (float(runs[run]["best_valid_acc"]) - float(runs["default"]["best_valid_acc"]))

    assert f"ran {NUMBER_WORDS[len(runs)]} configurations once each" in text
    for run in ("last-state-pooling", "unidirectional", "vocab-20k"):
        assert f": {versus_default(run):.1f} points".replace("-", "−") in text, run
    assert f"(49,296): {versus_default('vocab-20k'):.1f} points".replace("-", "−") in text
    assert f"{METRICS['config']['model']['vocab_size']:,}" == "49,296"  # the committed run's vocabulary
    exercises = csv_rows("sweep_exercises_by_config.csv", "config")
    last, one_direction = (points(float(exercises[config]["valid_acc_vs_reference"]),
                                  float(exercises[config]["vs_reference_se"]), minus="−")
                           for config in ("ex1-last-pooling", "ex4-one-direction"))
    assert f"with three seeds, it costs {last.removeprefix('−')} points" in text
    assert f"(on the exercises' subset, {one_direction} points" in text
    assert int(runs["unidirectional"]["seconds"]) < int(runs["default"]["seconds"]) / 2  # "less than half"
    # Quoted in the seeded ablation's prose: the first two effects of the single runs.
    seeded = prose("## What each choice is worth: the ablation")
    first_two = (-versus_default("no-pretrained-vectors"), -versus_default("max-length-400"))
    assert "put the first two effects at {:.1f} and {:.1f} points".format(*first_two) in seeded


def test_the_pooling_table_matches_its_summary():
    """Every cell of the pooling table, in the summary's order."""
    rows, expected = table_rows(section("### A sweep on the full data: how to pool the LSTM's outputs")), csv_list(
        "sweep_pooling_summary.csv")
    assert [row[0] for row in rows] == [want["run"] for want in expected]
    assert column(expected, "best_valid_acc") == sorted(column(expected, "best_valid_acc"), reverse=True)
    for row, want in zip(rows, expected, strict=True):
        assert row == [f"{float(value):.4f}" if "." in value else value for value in want.values()], want["run"]
    assert expected[0]["pooling"] == default_parameters()["pooling"]  # "kept because it is best on validation"


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
        if row[0] == "default":
            assert row[4:6] == ["—", ""]
        else:
            difference = mean - float(reference["best_valid_acc_mean"])
            se = math.sqrt(sd**2 / n + float(reference["best_valid_acc_sd"]) ** 2 / int(reference["seeds"]))
            assert row[4] == f"{100 * difference:+.1f} ± {100 * se:.1f} pt".replace("+-", "-"), row[0]
            assert row[5] == ("yes" if abs(difference) > 2 * se else "no"), row[0]


def test_the_weight_averaging_table_matches_its_summary():
    rows = table_rows(section("### Weight averaging: the best epoch and the next"))
    with open(REPO / "figures" / "sweep_ablation_seeds_averaging.csv", newline="", encoding="utf-8") as f:
        expected = {row["epochs_averaged"]: row for row in csv.DictReader(f) if row["config"] == "(all)"}
    assert [row[0].split(" ")[0] for row in rows] == sorted(expected)
    assert rows[0][0] == "1 (the best epoch)" and rows[0][3:5] == rows[0][6:8] == ["—", ""]
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
    expected = csv_rows("sweep_exercises_by_config.csv", "config")
    assert [row[0] for row in rows] == list(expected)  # the summary's order, by validation accuracy
    assert [row[0] for row in rows] == sorted(expected, key=lambda c: -float(expected[c]["best_valid_acc_mean"]))
    for row in rows:
        want = expected[row[0]]
        if not want["valid_acc_vs_reference"]:
            assert row[0] == "baseline" and row[4:6] == ["—", "—"]
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
    # the default of seed 42 is the committed run of that time, which "Toward 92 %" quotes
    previous = expected[str(METRICS["params"]["seed"])]
    assert (f"on an Intel Xeon ({float(previous['single_test_acc']):.4f}, " in README
            and "seed 42 was the committed run of that time" in README)
    summary = [row for row in rows if not row[0].isdigit()]
    seeds = list(expected.values())
    assert summary == [["mean ± sd", *(mean_sd(column(seeds, key)) for key in (
        "single_valid_acc", "single_valid_loss", "single_test_acc")), "", *(mean_sd(column(seeds, key)) for key in (
            "ensemble_valid_acc", "ensemble_valid_loss", "ensemble_test_acc"))]]


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
    previous = expected[str(METRICS["params"]["seed"])]  # the default of seed 42: the committed run of that time
    assert (f"on an Intel Xeon ({float(previous['default_test_acc']):.4f}, " in README
            and "seed 42 was the committed run of that time" in README)


def test_the_prose_of_the_seeded_ablation_quotes_its_summary():
    text = prose("## What each choice is worth: the ablation")
    configs = csv_rows("sweep_ablation_seeds_by_config.csv", "config") | csv_rows(
        "sweep_adversarial_seeds_by_config.csv", "config")
    default = configs["default"]

    def versus_default(config):
        """The table's difference of best-epoch validation accuracy, as the prose writes it."""
        want = configs[config]
        n, sd = int(want["seeds"]), float(want["best_valid_acc_sd"])
        se = math.sqrt(sd**2 / n + float(default["best_valid_acc_sd"]) ** 2 / int(default["seeds"]))
        return float(want["best_valid_acc_mean"]) - float(default["best_valid_acc_mean"]), se

    runs = csv_list("sweep_ablation_seeds_summary.csv")
    assert f"ran its {len(runs)} runs in" in text
    assert f"worth {points(*versus_default('no-pretrained-vectors')).removeprefix('-')} points" in text
    loss = {config: float(configs[config]["best_valid_loss_mean"]) for config in configs}
    assert f"the validation loss is {loss['default']:.3f} with them against {loss['no-pretrained-vectors']:.3f}" in text
    assert f"400 is worth {points(*versus_default('max-length-400')).removeprefix('-')} points" in text
    minutes = {config: float(configs[config]["run_seconds_mean"]) / 60 for config in configs}
    assert f"take {minutes['max-length-400']:.1f} minutes against {minutes['default']:.1f}" in text
    assert f"changes nothing measurable: {points(*versus_default('max-mean-pooling'), minus='−')} points" in text
    assert f"({loss['max-mean-pooling']:.4f} against {loss['default']:.4f})" in text
    assert f"is {points(*versus_default('adversarial')).removeprefix('-')} points below" in text
    test = ", ".join(f"{name} {float(configs[config]['test_accuracy_mean']):.4f} ± "
                     f"{float(configs[config]['test_accuracy_sd']):.4f}" for name, config in (
                         ("default", "default"), ("max and mean pooling", "max-mean-pooling"),
                         ("400 tokens", "max-length-400"), ("no pretrained vectors", "no-pretrained-vectors")))
    assert f"(three epochs averaged): {test}." in text


def test_the_prose_counts_of_best_epochs_are_the_ablations():
    runs = csv_list("sweep_ablation_seeds_summary.csv")
    third = sum(row["best_epoch"] == "3" for row in runs)
    assert f"the best epoch was the third in {third} of the {len(runs)} ablation runs above" in prose(
        "### The ensemble: three models, one vote")
    last = sum(row["best_epoch"] == row["epochs"] for row in runs)
    assert f"(the best epoch was the last in {NUMBER_WORDS[last]} of the {len(runs)} runs above)" in prose(
        "### Weight averaging: the best epoch and the next")


def test_the_prose_of_the_ensemble_quotes_its_runs():
    text, seeds = prose("### The ensemble: three models, one vote"), csv_list("ensemble_seeds.csv")

    def paired_columns(after, before):
        return paired(column(seeds, after), column(seeds, before))

    assert f"better in all three runs: {points(*paired_columns('ensemble_valid_acc', 'model1_valid_acc'), 2)} " \
           "points of accuracy" in text
    assert all(float(row["ensemble_valid_acc"]) > float(row["model1_valid_acc"]) for row in seeds)
    lower, se = paired_columns("model1_valid_loss", "ensemble_valid_loss")
    assert f"a validation loss lower by {lower:.3f} ± {se:.3f}" in text
    versus_default = points(*paired_columns("ensemble_valid_acc", "single_valid_acc"), 2, minus="−")
    assert f"it is no more accurate: {versus_default} points" in text
    loss = {key: statistics.fmean(column(seeds, key)) for key in ("ensemble_valid_loss", "single_valid_loss")}
    difference, se = paired_columns("ensemble_valid_loss", "single_valid_loss")
    assert f"{loss['ensemble_valid_loss']:.3f} against {loss['single_valid_loss']:.3f} " \
           f"({difference:.3f} ± {se:.3f}".replace("-", "−") in text
    committed = csv_rows("ensemble_seeds.csv", "seed")[str(METRICS["params"]["seed"])]
    assert f"(training {float(committed['training_seconds']) / 60:.1f}" in text
    test = {key: mean_sd(column(seeds, key)) for key in ("ensemble_test_acc", "single_test_acc")}
    assert f"averaged {test['ensemble_test_acc']} against {test['single_test_acc']} for the default: " \
           f"{points(*paired_columns('ensemble_test_acc', 'single_test_acc'))} points" in text
    toward = prose("## Toward 92 %: what was tried")
    assert f"Its test accuracy, {test['ensemble_test_acc']} over the same three seeds" in toward
    assert f"**Not reached** by the LSTM alone. It scored {test['single_test_acc']} over seeds 42, 1 and 2 on an " \
           "Intel Xeon (" + ", ".join(f"{float(row['single_test_acc']):.4f}" for row in seeds) in toward
    sd = statistics.stdev(column(seeds, "ensemble_test_acc"))
    assert f"(a standard deviation of {100 * sd:.2f} points for the ensembles here)" in toward
    ensemble_mean = statistics.fmean(column(seeds, "ensemble_test_acc"))
    assert f"The ensemble's {ensemble_mean:.4f} against the 0.9201" in toward
    assert f"the difference, {100 * (0.9201 - ensemble_mean):.2f} points" in toward


def test_the_prose_of_adversarial_training_quotes_its_runs():
    text, seeds = prose("### Adversarial training: the worst push on the word vectors"), csv_list(
        "adversarial_seeds.csv")

    def paired_columns(after, before):
        return paired(column(seeds, after), column(seeds, before))

    final = paired_columns("adversarial_valid_acc", "default_valid_acc")
    assert f"the final model scores {points(*final, 2).removeprefix('-')} points below the default's" in text
    averaging = {name: statistics.fmean(column(seeds, f"{name}_valid_acc")) - statistics.fmean(
        column(seeds, f"{name}_best_valid_acc")) for name in ("adversarial", "default")}
    assert f"cost the adversarial runs {-100 * averaging['adversarial']:.2f} points and gained the default " \
           f"{100 * averaging['default']:.2f}" in text
    best, best_se = paired_columns("adversarial_best_valid_acc", "default_best_valid_acc")
    assert f"its best epoch is {points(best, best_se, 2).removeprefix('-')} points below" in text
    assert f"({abs(best) / best_se:.1f} standard errors" in text
    loss = paired_columns("adversarial_valid_loss", "default_valid_loss")
    assert "Its validation loss is higher by {:.3f} ± {:.3f}".format(*loss) in text
    epoch_seconds = [int(s) for row in seeds for s in row["adversarial_epoch_seconds"].split()]
    assert f"{min(epoch_seconds)} to {max(epoch_seconds)} s an epoch" in text
    peaks = {name: [int(row[f"{name}_peak_mib"]) for row in seeds] for name in ("adversarial", "default")}
    assert f"The peak memory was {min(peaks['adversarial']):,} to {max(peaks['adversarial']):,} MiB" in text
    assert f"against {min(peaks['default']):,} to {max(peaks['default']):,} MiB for the default" in text
    clipped = [100 * float(row["adversarial_clipped"].split()[0]) for row in seeds]  # of the first epoch's steps
    assert f"against {min(clipped):.0f} to {max(clipped):.0f} %)" in text
    toward = prose("## Toward 92 %: what was tried")
    assert f"{points(*final, 2).removeprefix('-')} points *below* the default for the final models" in toward
    assert f"{points(best, best_se, 2).removeprefix('-')} at the best epoch" in toward
    gib = [mib / 1024 for mib in peaks["adversarial"]]
    assert f"over the memory cap ({min(gib):.1f} to {max(gib):.1f} GiB)" in toward
    test = csv_rows("sweep_adversarial_seeds_by_config.csv", "config")["adversarial"]
    assert statistics.fmean(column(seeds, "adversarial_test_acc")) == pytest.approx(float(test["test_accuracy_mean"]))
    assert f"Test accuracy {float(test['test_accuracy_mean']):.4f} ± {float(test['test_accuracy_sd']):.4f}." in toward


def test_the_prose_of_weight_averaging_quotes_its_summary():
    rows = {row["epochs_averaged"]: row for row in csv_list("sweep_ablation_seeds_averaging.csv")
            if row["config"] == "(all)"}
    two = rows["2"]
    gain = points(float(two["acc_vs_one_epoch"]), float(two["acc_vs_one_epoch_se"]), 2).removeprefix("+")
    text = prose("### Weight averaging: the best epoch and the next")
    assert f"Averaging the best epoch with the next gains {gain} points of validation accuracy" in text
    assert [key for key, row in rows.items() if row["acc_beyond_noise"] == "yes"] == ["2"]  # "the only window"
    assert f"Its validation loss is {float(two['loss_vs_one_epoch']):.3f} higher" in text
    assert f"Over the {two['runs']} runs above" in text
    toward = prose("## Toward 92 %: what was tried")
    assert f"section 4): +{gain} points of validation accuracy over the best epoch alone, in pairs over " \
           f"{two['runs']} runs, with a validation loss {float(two['loss_vs_one_epoch']):.3f} higher" in toward


def test_the_prose_of_the_exercises_quotes_their_runs():
    text, runs = prose("## Exercises in class"), csv_list("sweep_exercises_summary.csv")
    seconds = [int(row["run_seconds"]) for row in runs]
    assert f"in {min(seconds) / 60:.1f} to {max(seconds) / 60:.1f} minutes on two CPU cores" in text
    assert f"({len(runs)} runs, {sum(seconds) / 60:.0f} minutes on two cores)" in text
    by_run = {row["run"]: row for row in runs}
    alone = float(by_run["ex6-padding-first_seed-42"]["best_valid_acc"]) - float(
        by_run["baseline_seed-42"]["best_valid_acc"])
    assert f"scored {100 * alone:.1f} points *above* the baseline" in text
    ex6 = csv_rows("sweep_exercises_by_config.csv", "config")["ex6-padding-first"]
    assert f"(0.8428 then, {float(ex6['valid_acc_mean']):.4f} now)" in text


def test_the_longest_exercise_run_is_the_summarys():
    runs = csv_list("sweep_exercises_summary.csv")
    longest = max(int(row["run_seconds"]) for row in runs)
    assert f"(the longest of the {len(runs)} runs: {longest} s from start to end" in prose("## Exercises in class")


def benchmark():
    return json.loads((FIGURES / "benchmark.json").read_text(encoding="utf-8"))


SPEED = "## Speed and memory: `make bench`"


def speed_tables():
    """The two tables of "Speed and memory": the training step's, and the one of every other figure."""
    text = section(SPEED)
    first = text.index("\n| |")
    second = text.index("\n| |", first + 1)
    return table_rows(text[first:]), table_rows(text[second:])


def test_the_training_step_table_is_the_benchmarks():
    training = benchmark()["training"]
    rows, _ = speed_tables()
    expected = [[f"training step, batch of {shape['batch']} × {shape['seq_len']} tokens",
                 f"{shape['notebook_tokens_per_s']:,.0f} tokens/s", f"{shape['bare_lstm_tokens_per_s']:,.0f} tokens/s",
                 f"{shape['ratio']:.2f}"] for shape in training["shapes"]]
    expected.append([f"**{cell}**" for cell in ("training step, the three shapes together",
                                                f"{training['notebook_tokens_per_s']:,.0f} tokens/s",
                                                f"{training['bare_lstm_tokens_per_s']:,.0f} tokens/s",
                                                f"{training['ratio']:.2f}")])
    assert rows == expected
    assert NUMBER_WORDS[len(training["shapes"])] == "three"


def test_the_table_of_the_other_bench_figures_is_the_benchmarks():
    bench = benchmark()
    packing, prediction, threads = bench["packing"], bench["prediction"], bench["hardware"]["torch_threads"]
    _, rows = speed_tables()
    expected = {
        f"bidirectional LSTM, forward and backward, {packing['batch']} reviews of about {packing['seq_len']} tokens":
            f"padded {packing['padded_s']:.2f} s, packed {packing['packed_s']:.2f} s "
            f"({packing['slowdown']:.1f} times slower)",
        f"`predict_review`, {prediction['review_words']}-word review, {threads} threads":
            f"median {prediction['latency_median_ms']:.2f} ms, 95th percentile {prediction['latency_p95_ms']:.2f} ms",
        f"`predict_review`, {prediction['review_words']}-word review, 1 thread":
            f"median {prediction['latency_1_thread_median_ms']:.2f} ms, "
            f"95th percentile {prediction['latency_1_thread_p95_ms']:.2f} ms",
        "batch prediction": f"{prediction['batch_reviews_per_s']:,.0f} reviews/s",
        "peak memory of preprocessing and word vectors (full data, fresh kernel)":
            f"{bench['preprocessing_memory']['peak_memory']['cpu_rss_mib'] / 1024:.2f} GiB",
        "peak memory of the default run (resident, the kernel process)":
            f"{bench['committed_run']['peak_memory']['cpu_rss_mib'] / 1024:.2f} GiB",
    } | {f"default run, section {name}": f"{seconds:.1f} s" for name, seconds in bench["section_seconds"].items()}
    assert [row[0] for row in rows] == list(expected)
    assert dict(rows) == expected


def test_the_prose_of_the_bench_quotes_the_benchmark():
    bench = benchmark()
    text, memory = prose(SPEED), prose("### Memory")
    hardware, training, prediction = bench["hardware"], bench["training"], bench["prediction"]
    assert f"{hardware['cpu_count']} cores, {hardware['torch_threads']} torch threads, torch {hardware['torch']}, " \
           "no GPU" in text and hardware["device"] == "cpu"
    assert f"a vocabulary of `max_vocab_size` ({bench['parameters']['max_vocab_size']:,}) tokens" in text
    assert f"`predict_review` on a {prediction['review_words']}-word review ({prediction['tokens']} tokens): " \
           f"median and 95th percentile of {prediction['calls']} calls" in text
    assert f"on {prediction['batch_reviews']:,} real reviews of every length" in text
    assert f"the notebook's training step keeps {training['ratio']:.2f} of the bare LSTM's throughput" in text
    shortest = training["shapes"][0]
    assert f"({shortest['ratio']:.2f} at {shortest['seq_len']} tokens" in text
    assert f"{bench['packing']['slowdown']:.1f} times slower than padding here" in text
    assert f"Section 4's {bench['section_seconds']['4. Training']:.1f} s include" in text
    preprocessing = bench["preprocessing_memory"]["peak_memory"]["cpu_rss_mib"]
    assert f"a peak of {preprocessing / 1024:.2f} GiB ({preprocessing:,.0f} MiB)" in memory
    peak = METRICS["peak_memory"]["cpu_rss_mib"]
    assert f"The committed run peaked at **{peak / 1024:.1f} GiB** resident ({peak:,.0f} MiB" in memory
    defaults = default_parameters()  # the bench measured today's defaults (parameters added since aside)
    assert bench["parameters"] == {name: defaults[name] for name in bench["parameters"]}


def section_seconds(notebook):
    """Wall seconds of each '## ' section of a papermill-executed notebook, as `make bench` reads them."""
    seconds, current = {}, "(before the first section)"
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and source.startswith("## "):
            current = source.splitlines()[0][3:].strip()
        duration = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if duration is not None:
            seconds[current] = seconds.get(current, 0.0) + duration
    return {name: round(value, 1) for name, value in seconds.items() if value >= 0.05}


def test_the_benchmarks_record_of_the_committed_run_is_the_committed_run():
    """`make bench` reads the section times from the committed notebook and the peak memory from its
    metrics.json: a new committed run makes those rows of the bench table stale until the bench is rerun."""
    bench = benchmark()
    assert bench["committed_run"] == {key: METRICS[key] for key in ("peak_memory", "training_seconds",
                                                                     "test_accuracy", "environment")}
    assert bench["section_seconds"] == section_seconds(committed_notebook())


def test_run_it_elsewhere_installs_nothing_that_would_replace_the_kernels_torch():
    text = section("## Run it elsewhere")
    pip_line = next(line for line in text.splitlines() if line.startswith("%pip install"))
    packages = pip_line.split()[2:]
    assert packages and not {"torch", "numpy", "torchtext"} & set(packages)
    # The setup cell's error for a kernel started outside the clone names the same remedy.
    sources = ["".join(c["source"]) for c in committed_notebook()["cells"]]
    setup = next(source for source in sources if "import helpers" in source)
    assert "%cd" in text and "%cd" in setup


def test_the_two_stacks_table_is_the_benchmarks():
    stacks = benchmark()["stacks"]
    rows = table_rows(section("### The two stacks side by side"))
    expected = [[name, f"torch {s['torch']}, numpy {s['numpy']}, Python {s['python']}",
                 f"{s['training_tokens_per_s']:,.0f} tokens/s",
                 f"{s['latency_median_ms']:.2f} ms / {s['latency_1_thread_median_ms']:.2f} ms",
                 f"{s['batch_reviews_per_s']:,.0f} reviews/s"]
                for name, s in ((name, stacks[name]) for name in ("pinned", "current"))]
    assert rows == expected
    assert stacks["pinned"]["torchtext"] and stacks["current"]["torchtext"] is None  # each ran its own tokenizer
    text = prose("### The two stacks side by side")
    rounds = {name: " and ".join(f"{r['training_tokens_per_s']:,.0f}" for r in stacks[name]["each_round"])
              for name in ("pinned", "current")}
    assert f"{stacks['current_over_pinned_training']:.2f} times the pinned stack's" in text
    assert f"(rounds: {rounds['pinned']} tokens/s for the pinned stack, {rounds['current']} for the current)" in text


def test_the_prose_compares_the_whole_batches_with_the_parts_from_their_records():
    """The runs before the training batches went in parts (figures/baseline_seeds_whole_batches.csv, written by
    compare_baseline.py from the runs of that time) against today's, paired by seed."""
    text = prose("## The strong baseline: NB-weighted n-grams, and the LSTM with them")
    parts, whole = csv_list("baseline_seeds.csv"), csv_list("baseline_seeds_whole_batches.csv")
    assert [r["seed"] for r in parts] == [r["seed"] for r in whole]
    keys = ("lstm_test_acc", "combined_test_acc")
    assert (f"gave the LSTM {mean_sd(column(whole, keys[0]))} and the combination "
            f"{mean_sd(column(whole, keys[1]))} on the test reviews; trained in parts, "
            f"{mean_sd(column(parts, keys[0]))} and {mean_sd(column(parts, keys[1]))}") in text
    differences = [paired(column(parts, key), column(whole, key)) for key in keys]
    within = all(abs(mean) <= 4.303 * se for mean, se in differences)
    assert (f"paired by seed, {points(*differences[0], digits=2)} and {points(*differences[1], digits=2)} points, "
            f"{'within noise' if within else 'beyond noise'}") in text
    memory = [int(r["peak_memory_mib"]) for r in whole]
    assert f"peaked at {min(memory):,} to {max(memory):,} MiB" in prose("### Memory")
