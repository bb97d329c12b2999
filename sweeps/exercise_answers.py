"""The answers table of the lesson's exercises, from the exercise sweep's records of its runs.

    python sweeps/exercise_answers.py figures/sweep_lesson_exercises_summary.csv

Reads a sweep's summary.csv (one row per run; `make sweep SWEEP=sweeps/exercises.yaml` writes it
into runs/lesson-exercises/, and figures/ holds the committed copy; the earlier exercise sweeps'
figures/sweep_exercises_summary.csv and sweep_exercise_cells_summary.csv read the same way) and
prints a markdown table: each configuration's validation accuracy at the best epoch for each
seed, their mean, the paired difference from the baseline of the same
seed (same split, same vocabulary) with its standard error and whether it is beyond noise under
the t distribution with n - 1 degrees of freedom (4.30 standard errors for three seeds), seconds
per epoch, and the whole run's seconds (papermill's record of the notebook's execution).
The lesson's answers cell holds the table; tests/test_sweep.py checks that it still does.
"""

import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stats  # noqa: E402 (sweeps/stats.py, beside this file)

# Each configuration of sweeps/exercises.yaml, as the answers name it, in the order of the exercises.
LABELS = {
    "baseline": "default (LSTM, max pooling)",
    "ex1-lstm-last": '1. LSTM, `pooling = "last"`',
    "ex1-last-pooling": '1. LSTM, `pooling = "last"`',
    "ex1-gru-max": '1. `cell = "gru"`, max',
    "ex1-gru-last": '1. `cell = "gru"`, last',
    "ex1-rnn-max": '1. `cell = "rnn"`, max',
    "ex1-rnn-last": '1. `cell = "rnn"`, last',
    "ex2-no-pretrained-vectors": "2. `pretrain_embeddings = False`",
    "ex3-max-length-400": "3. `max_length = 400`",
    "ex3-max-length-1200": "3. `max_length = 1200`",
    "ex4-one-direction": "4. `bidirectional = False`",
    "ex6-padding-first": "6. padding read first",
}
SEEDS = (42, 1, 2)


def read_runs(path):
    """{configuration: {seed: row}} of the sweep's runs that finished."""
    runs = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["status"] != "ok":
                continue
            config = row["run"].rsplit("_seed-", 1)[0]
            runs.setdefault(config, {})[int(row["seed"])] = row
    unknown = sorted(set(runs) - set(LABELS))
    if unknown or "baseline" not in runs:
        raise ValueError(f"{path}: configurations {unknown} have no label here, or there is no baseline")
    missing = [(config, seed) for config in runs for seed in SEEDS if seed not in runs[config]]
    if missing:
        raise ValueError(f"{path} lacks finished runs of {', '.join(f'{c} (seed {s})' for c, s in missing)}")
    return runs


def answers_table(runs):
    """The markdown table, one line a configuration."""
    lines = ["| exercise | seed 42 | seed 1 | seed 2 | mean | vs default | beyond noise? | s/epoch | run, s |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = [float(runs["baseline"][s]["best_valid_acc"]) for s in SEEDS]
    for config, label in LABELS.items():
        if config not in runs:
            continue
        rows = [runs[config][s] for s in SEEDS]
        accs = [float(r["best_valid_acc"]) for r in rows]
        per_epoch = statistics.fmean(float(r["seconds"]) / int(r["epochs"]) for r in rows)
        run_seconds = "–".join(str(round(v)) for v in (min(float(r["run_seconds"]) for r in rows),
                                                      max(float(r["run_seconds"]) for r in rows)))
        cells = [label, *(f"{a:.4f}" for a in accs), f"{statistics.fmean(accs):.4f}"]
        if config == "baseline":
            cells += ["", ""]
        else:
            diff = stats.paired(accs, base, scale=100, what=f"{config} against the default")
            cells += [f"{diff.mean:+.1f} ± {diff.se:.1f} pt".replace("-", "−"), "yes" if diff.beyond_noise else "no"]
        cells += [f"{per_epoch:.1f}", run_seconds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(answers_table(read_runs(Path(sys.argv[1]))))
