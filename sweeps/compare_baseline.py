"""The LSTM, the NB-weighted n-gram baseline and the two combined, over the runs of several seeds.

    python sweeps/compare_baseline.py runs/seed-42 runs/seed-1 runs/seed-2

reads each finished run's metrics.json and logits.npz (one default run per seed: the same
training and validation split for the three models of a run) and writes

    figures/baseline_seeds.csv          one row per run: each model's validation and test accuracy,
                                        the combination's weights, the share of test reviews on
                                        which the LSTM and the baseline disagree, time and memory
    figures/baseline_seeds_summary.csv  each model's mean ± sd over the runs, and the paired
                                        differences with their standard error and 95 % interval
    figures/baseline_rules_cv.csv       how each way of combining the two logits does in 10-fold
                                        cross-validation within the validation split (the test
                                        reviews are not read): the evidence for the rule adopted
    figures/baseline_seeds.md           the three as the README's tables of "The strong baseline"

Noise. On the test reviews (one set that every seed scores) a difference has two noises: the seeds' and the
set's own sampling (another 25,000 reviews would give another figure), combined by stats.paired_two_noises from
each review's right-or-wrong per run. On validation every seed has its own split, so the spread of the seeds'
differences already holds both: paired by seed, t with n - 1 degrees of freedom. The verdicts of one summary
are one family of six comparisons (three pairs of models on two splits), judged by Holm's rule (stats.holm) at
95 %: "beyond noise" is the Holm verdict; the unadjusted p and Holm's are both written.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

if __package__:  # imported as sweeps.compare_baseline
    from .stats import holm, paired, paired_two_noises, write_csv
else:  # run as a script: sweeps/ is on sys.path
    from stats import holm, paired, paired_two_noises, write_csv

REPO = Path(__file__).resolve().parents[1]
MODELS = (("ngram", "n-gram baseline"), ("lstm", "LSTM"), ("combined", "LSTM + n-grams"))
COMPARISONS = (("lstm", "ngram"), ("combined", "ngram"), ("combined", "lstm"))
CV_FOLDS = 10
# The weights the previous rule searched: LSTM logit + w × n-gram logit, w by validation log loss.
OLD_RULE_GRID = np.round(np.arange(0, 5.0001, 0.05), 2)


def log_loss(logits, labels):
    """Mean binary cross-entropy of logits against 0/1 labels, computed stably."""
    return float(np.mean(np.logaddexp(0, logits) - labels * logits))


def load_run(run_dir):
    """A finished run's metrics.json, executed notebook and saved logits."""
    run_dir = Path(run_dir)
    for name in ("metrics.json", "logits.npz", "sentiment_lstm.ipynb"):
        if not (run_dir / name).exists():
            raise SystemExit(f"error: {run_dir} holds no {name}: is it a finished run of the current notebook?")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    if "lstm_weight" not in metrics.get("combined", {}):
        raise SystemExit(f"error: {run_dir / 'metrics.json'} has no stacked combination: the run predates it")
    notebook = json.loads((run_dir / "sentiment_lstm.ipynb").read_text(encoding="utf-8"))
    # allow_pickle=False: a logits file holds plain arrays, and a file from elsewhere must not run code
    with np.load(run_dir / "logits.npz", allow_pickle=False) as saved:
        logits = {name: saved[name] for name in saved.files}
    return metrics, notebook, logits


def run_row(run_dir):
    """One run's figures, from its metrics.json, saved logits and executed notebook."""
    m, notebook, logits = load_run(run_dir)
    lstm_says, ngram_says = logits["test_lstm"] >= 0, logits["test_ngram"] >= 0
    return {
        "run": Path(run_dir).name,
        "seed": m["params"]["seed"],
        "n_train_reviews": m["n_train_reviews"],
        "ngram_c": m["ngram_baseline"]["c"],
        "lstm_weight": round(m["combined"]["lstm_weight"], 3),
        "ngram_weight": round(m["combined"]["ngram_weight"], 3),
        "ngram_valid_acc": m["ngram_baseline"]["valid_acc"],
        "lstm_valid_acc": m["valid_acc"],
        "combined_valid_acc": m["combined"]["valid_acc"],
        "ngram_test_acc": m["ngram_baseline"]["test_accuracy"],
        "lstm_test_acc": m["test_accuracy"],
        "combined_test_acc": m["combined"]["test_accuracy"],
        "test_disagreement": round(float(np.mean(lstm_says != ngram_says)), 4),
        "ngram_seconds": round(m["ngram_baseline"]["seconds"], 1),
        "lstm_training_seconds": round(m["training_seconds"] + m["pretraining_seconds"], 1),
        "run_minutes": round(notebook["metadata"]["papermill"]["duration"] / 60, 2),
        "peak_memory_mib": round(m["peak_memory"]["cpu_rss_mib"]),
        # the largest finished child process's peak (0: none); the run's whole peak is at most the sum
        "peak_children_mib": round(m["peak_memory"].get("children_rss_mib", 0)),
    }


def test_rights(run_dirs):
    """{model: [runs, test reviews] of 1 (right) or 0}, the runs in the order given, all on one test set."""
    rights, labels = {key: [] for key, _ in MODELS}, None
    for run_dir in run_dirs:
        _, _, logits = load_run(run_dir)
        if labels is None:
            labels = logits["test_labels"]
        elif not np.array_equal(labels, logits["test_labels"]):
            raise SystemExit(f"error: {run_dir} scored other test reviews: the runs must share one test set")
        for key, _ in MODELS:
            rights[key].append(((logits[f"test_{key}"] >= 0) == labels.astype(bool)).astype(float))
    return {key: np.array(value) for key, value in rights.items()}


def old_rule(lstm, ngram, labels):
    """The rule used before: the LSTM's logit plus w × the n-gram logit, w minimising log loss."""
    losses = [log_loss(lstm + w * ngram, labels) for w in OLD_RULE_GRID]
    w = OLD_RULE_GRID[int(np.argmin(losses))]
    return lambda lstm, ngram: lstm + w * ngram


def stacking(lstm, ngram, labels):
    """The rule adopted: a logistic regression on the two logits (the notebook's combiner)."""
    combiner = LogisticRegression().fit(np.column_stack([lstm, ngram]), labels)
    return lambda lstm, ngram: combiner.decision_function(np.column_stack([lstm, ngram]))


RULES = (
    ("LSTM alone", lambda lstm, ngram, labels: lambda lstm, ngram: lstm),
    ("n-gram baseline alone", lambda lstm, ngram, labels: lambda lstm, ngram: ngram),
    ("LSTM + w × n-gram (previous rule)", old_rule),
    ("logistic regression on both (adopted)", stacking),
)


def rule_rows(run_dir):
    """Each rule's accuracy and log loss on held-out folds of the validation split of one run."""
    m, _, logits = load_run(run_dir)
    lstm, ngram = logits["valid_lstm"].astype(float), logits["valid_ngram"].astype(float)
    labels = logits["valid_labels"].astype(float)
    folds = np.random.default_rng(0).permutation(len(labels)) % CV_FOLDS
    rows = []
    for name, fit_rule in RULES:
        held_out = np.empty(len(labels))
        for fold in range(CV_FOLDS):
            fit, score = folds != fold, folds == fold
            rule = fit_rule(lstm[fit], ngram[fit], labels[fit])
            held_out[score] = rule(lstm[score], ngram[score])
        rows.append({"run": Path(run_dir).name, "seed": m["params"]["seed"], "rule": name,
                     "cv_valid_acc": round(float(np.mean((held_out >= 0) == labels)), 4),
                     "cv_valid_log_loss": round(log_loss(held_out, labels), 4)})
    return rows


def summary_rows(rows, rights):
    """Each model's mean ± sd, and each paired difference's mean, standard error (both noises on test), t
    interval (points) and Holm verdict over the summary's six comparisons. rights: test_rights of the same runs."""
    if len(rows) < 2:
        raise SystemExit("error: give at least two runs: one run has no spread")
    out, comparisons = [], []
    blank = {"se": "", "seed_se": "", "set_se": "", "df": "", "ci_low": "", "ci_high": "", "p": "", "p_holm": "",
             "beyond_noise": ""}
    for split in ("valid", "test"):
        for key, name in MODELS:
            values = [r[f"{key}_{split}_acc"] for r in rows]
            out.append({"split": split, "what": name, "mean": statistics.mean(values),
                        "sd": statistics.stdev(values), **blank})
        for a, b in COMPARISONS:
            what = f"{dict(MODELS)[a]} minus {dict(MODELS)[b]} (points)"
            if split == "test":
                c, seed_se, set_se = paired_two_noises(rights[a] - rights[b], 100, what)
            else:
                c = paired([r[f"{a}_{split}_acc"] for r in rows], [r[f"{b}_{split}_acc"] for r in rows], 100, what)
                seed_se, set_se = c.se, ""  # each seed's own split: its sampling noise is in the seeds' spread
            row = {"split": split, "what": what, "mean": c.mean, "sd": c.se * np.sqrt(c.n), **blank,
                   "se": c.se, "seed_se": seed_se, "set_se": set_se, "df": round(c.df, 1),
                   "ci_low": c.low, "ci_high": c.high, "p": c.p}
            out.append(row)
            comparisons.append((row, c))
    beyond, adjusted = holm([c.p for _, c in comparisons])
    for (row, _), verdict, p_holm in zip(comparisons, beyond, adjusted, strict=True):
        row["p_holm"], row["beyond_noise"] = float(p_holm), "yes" if verdict else "no"
    return out


def markdown_tables(rows, summary, rules):
    """The README's tables of "The strong baseline", from the rows written to the CSV files."""
    def acc(value):
        return f"{value:.4f}"

    lines = ["| seed | C | n-gram valid | LSTM valid | combined valid | n-gram test | LSTM test | combined test "
             "| disagree (test) | weights LSTM / n-gram | n-gram fit | whole run | peak memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['ngram_c']:g} | {acc(r['ngram_valid_acc'])} | {acc(r['lstm_valid_acc'])} "
                     f"| {acc(r['combined_valid_acc'])} | {acc(r['ngram_test_acc'])} | {acc(r['lstm_test_acc'])} "
                     f"| {acc(r['combined_test_acc'])} | {100 * r['test_disagreement']:.1f} % "
                     f"| {r['lstm_weight']:.2f} / {r['ngram_weight']:.2f} | {r['ngram_seconds']:.0f} s "
                     f"| {r['run_minutes']:.1f} min | {r['peak_memory_mib']:,} MiB |")
    means = {(s["split"], s["what"]): s for s in summary}
    cells = [f"{means[(split, name)]['mean']:.4f} ± {means[(split, name)]['sd']:.4f}"
             for split in ("valid", "test") for _, name in MODELS]
    lines.append(f"| mean ± sd | | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {cells[4]} | {cells[5]} "
                 "| | | | | |")
    lines += ["", "| on the test reviews, paired by seed | difference (points) ± SE of both noises | 95 % t interval "
              "| p (Holm, 6 comparisons) | beyond noise |", "|---|---|---|---|---|"]
    for s in summary:
        if s["split"] == "test" and s["se"] != "":
            lines.append(f"| {s['what'].removesuffix(' (points)')} | {s['mean']:+.3f} ± {s['se']:.3f} "
                         f"| {s['ci_low']:+.3f} to {s['ci_high']:+.3f} | {s['p_holm']:.3g} | {s['beyond_noise']} |")
    seeds = list(dict.fromkeys(r["seed"] for r in rules))
    lines += ["", "| rule, 10-fold cross-validation within the validation split | "
              + " | ".join(f"seed {seed}: accuracy / log loss" for seed in seeds) + " |",
              "|---" * (len(seeds) + 1) + "|"]
    for name, _ in RULES:
        by_seed = {r["seed"]: r for r in rules if r["rule"] == name}
        lines.append(f"| {name} | " + " | ".join(f"{by_seed[seed]['cv_valid_acc']:.4f} / "
                                                 f"{by_seed[seed]['cv_valid_log_loss']:.4f}" for seed in seeds) + " |")
    return "\n".join(lines) + "\n"


def rules_path(out):
    """Where the rules' cross-validation goes: figures/baseline_rules_cv.csv beside figures/baseline_seeds.csv,
    figures/best_epoch_rules_cv.csv beside figures/best_epoch_seeds.csv (so that a second set of runs keeps
    the first set's)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix("_seeds") + "_rules_cv.csv")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished default runs, one per seed")
    parser.add_argument("--out", default=str(REPO / "figures" / "baseline_seeds"),
                        help="prefix of the CSV files written (default: figures/baseline_seeds)")
    args = parser.parse_args(argv)
    rows = [run_row(run) for run in args.runs]  # in the order given
    if len({r["seed"] for r in rows}) != len(rows):
        raise SystemExit("error: two runs have the same seed; give one run per seed")
    rules = [row for run in args.runs for row in rule_rows(run)]
    summary = summary_rows(rows, test_rights(args.runs))
    write_csv(f"{args.out}.csv", rows)
    write_csv(f"{args.out}_summary.csv", summary)
    write_csv(rules_path(args.out), rules)
    Path(f"{args.out}.md").write_text(markdown_tables(rows, summary, rules), encoding="utf-8")
    for row in summary:
        print(f"{row['split']:>5}  {row['what']:<40} {row['mean']:.4f}" + (f" ± {row['se']:.3f} (95 % t interval "
              f"{row['ci_low']:+.3f} to {row['ci_high']:+.3f}, Holm p {row['p_holm']:.3g}, beyond noise: "
              f"{row['beyond_noise']})"
              if row["se"] != "" else f" ± {row['sd']:.4f} sd"))
    for row in rules:
        print(f"seed {row['seed']:>3}  {row['rule']:<40} validation {CV_FOLDS}-fold accuracy {row['cv_valid_acc']:.4f}"
              f"  log loss {row['cv_valid_log_loss']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
