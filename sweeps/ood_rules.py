"""Beyond IMDB's test set: the three models on the out-of-domain sets over the default's seeds, and the
combination rules tried (issue 31).

    python sweeps/ood_rules.py runs/ood-seed-42 runs/ood-seed-1 runs/ood-seed-2

reads each finished default run's metrics.json and logits.npz (which hold every review's logits, and the
share of its n-grams that the n-gram model saw in training: its coverage) and writes

    figures/ood_seeds.csv          one row per run and set: each model's accuracy as the run scored it
    figures/ood_seeds_summary.csv  per set: each model's mean and sd over the runs, and the paired differences
                                   with a standard error that carries both noises, the seeds' and the set's own
                                   sampling (stats.paired_two_noises), judged at 95 % by Holm's rule over the
                                   twelve comparisons of the table (stats.holm)
    figures/ood_rules.csv          per run and rule: accuracy on what rules are chosen by (IMDB validation,
                                   10-fold cross-validation; Amazon, the development set) and on what they are
                                   only reported on (IMDB test, Yelp, Usenet: nothing is chosen on these)
    figures/ood_rules_summary.csv  per rule: the means over the runs, and each set's paired difference from the
                                   plain stacked rule (two noises)
    figures/ood_coverage.csv       per set, its reviews split at their median coverage (in each run): each model's
                                   accuracy on the half with fewer and the half with more n-grams seen in training,
                                   the mean over the runs: does the n-grams' deficit follow unseen n-grams?

The roles of the sets: Amazon is the development set (a choice may look at it, and says so); Yelp and Usenet
are for evaluation only. The rule is chosen by choose_rule() from the validation and Amazon columns alone.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

if __package__:
    from .stats import holm, paired_two_noises, write_csv
else:
    from stats import holm, paired_two_noises, write_csv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETS = ("valid", "test", "amazon", "yelp", "polarity")
OOD = ("amazon", "yelp", "polarity")
MODELS = ("ngram", "lstm", "combined")
MODEL_NAMES = {"ngram": "n-grams", "lstm": "LSTM", "combined": "combined"}
COMPARISONS = (("lstm", "ngram"), ("combined", "ngram"), ("combined", "lstm"))
CV_FOLDS = 10
# Exponents k of the gated rule, where the n-gram logit enters the combination as coverage**k x logit.
GATE_POWERS = (0, 1, 2, 4, 8, 16)


def read_run_files(run_dir):
    """(metrics, logits) of a finished run: its metrics.json and logits.npz (plain arrays, no pickle)."""
    run_dir = Path(run_dir)
    for name in ("metrics.json", "logits.npz"):
        if not (run_dir / name).is_file():
            raise SystemExit(f"error: {run_dir} holds no {name}: is it a finished default run?")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    with np.load(run_dir / "logits.npz", allow_pickle=False) as saved:  # plain arrays: nothing can run
        return metrics, {name: saved[name] for name in saved.files}


def load_run(run_dir):
    """A finished run's metrics.json and logits.npz, with the out-of-domain sets and the coverage saved."""
    run_dir = Path(run_dir)
    metrics, logits = read_run_files(run_dir)
    missing = [f"{s}_{k}" for s in OOD + ("test", "valid") for k in ("lstm", "ngram", "coverage")
               if f"{s}_{k}" not in logits]
    if missing:
        raise SystemExit(f"error: {run_dir / 'logits.npz'} lacks {', '.join(missing)}: a run made before the "
                         "out-of-domain sets, or without them (ood_data)")
    return metrics, logits


def set_arrays(logits, name):
    """(labels, lstm, ngram, coverage) of one set."""
    return (logits[f"{name}_labels"].astype(float), logits[f"{name}_lstm"].astype(float),
            logits[f"{name}_ngram"].astype(float), logits[f"{name}_coverage"].astype(float))


def features(kind, lstm, ngram, coverage, power=0):
    """The columns a rule weighs."""
    if kind == "gated":  # the n-gram logit counts less where the review's n-grams were unseen in training
        return np.column_stack([lstm, coverage**power * ngram])
    if kind == "interactions":  # weights that move with the share of unseen n-grams
        unseen = 1 - coverage
        return np.column_stack([lstm, ngram, unseen * lstm, unseen * ngram, unseen])
    return np.column_stack([lstm, ngram])


# name: (features, power, whether Amazon joins IMDB's validation reviews in the fit)
RULES = {"stacked (today's)": ("plain", 0, False), "stacked, fitted with Amazon": ("plain", 0, True),
         "coverage interactions, fitted with Amazon": ("interactions", 0, True)}
RULES.update({f"gated, coverage^{k}": ("gated", k, False) for k in GATE_POWERS if k})


def fit(kind, power, parts):
    """A logistic regression on the rule's features over parts [(labels, lstm, ngram, coverage)], each part
    weighted to the same total (IMDB validation and Amazon count alike)."""
    x = np.vstack([features(kind, lstm, ngram, coverage, power) for _, lstm, ngram, coverage in parts])
    y = np.concatenate([labels for labels, *_ in parts])
    weights = np.concatenate([np.full(len(p[0]), len(parts[0][0]) / len(p[0])) for p in parts])
    return LogisticRegression().fit(x, y, sample_weight=weights)


def subset(part, keep):
    return tuple(values[keep] for values in part)


def rule_predictions(logits, kind, power, with_amazon):
    """Each set's combined logits under one rule: held out (10-fold) where the rule was fitted on the set."""
    valid, amazon = set_arrays(logits, "valid"), set_arrays(logits, "amazon")
    rng = np.random.default_rng(0)
    predictions = {}
    for name, part, other in (("valid", valid, amazon), ("amazon", amazon, valid)):
        if name == "amazon" and not with_amazon:
            continue
        folds = rng.permutation(len(part[0])) % CV_FOLDS
        held_out = np.empty(len(part[0]))
        for fold in range(CV_FOLDS):
            train = subset(part, folds != fold)
            fitted_parts = ([train, other] if name == "valid" else [other, train]) if with_amazon else [train]
            model = fit(kind, power, fitted_parts)
            held_out[folds == fold] = model.decision_function(features(kind, *subset(part, folds == fold)[1:],
                                                                        power))
        predictions[name] = held_out
    whole = fit(kind, power, [valid, amazon] if with_amazon else [valid])
    for name in SETS:
        if name not in predictions:
            predictions[name] = whole.decision_function(features(kind, *set_arrays(logits, name)[1:], power))
    return predictions


def choose_rule(summary, amazon_rights):
    """The rule adopted, from IMDB validation and Amazon only: the best mean Amazon accuracy among the rules whose
    validation accuracy is at least the stacked rule's minus 0.1 point, if its gain over the stacked rule on
    Amazon is beyond noise (both noises, paired by seed and review; Bonferroni for the rules it was picked
    from); else the stacked rule, the simpler.

    amazon_rights: {rule: [runs, reviews] 0/1 array of right answers on Amazon (held out where fitted there)}.
    Returns (the rule, the best candidate, its Amazon comparison with the stacked rule in points).
    """
    reference = "stacked (today's)"
    allowed = [name for name, row in summary.items() if row["valid_cv"] >= summary[reference]["valid_cv"] - 0.001]
    best = max(allowed, key=lambda name: (summary[name]["amazon"], summary[name]["valid_cv"]))
    if best == reference:
        return reference, best, None
    gain, _, _ = paired_two_noises(amazon_rights[best] - amazon_rights[reference], scale=100)
    gain = gain.among(len(summary) - 1)  # the best of the other rules was picked: t allows for all of them
    return (best if gain.beyond_noise and gain.mean > 0 else reference), best, gain


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished default runs, one per seed")
    parser.add_argument("--out", default=str(REPO / "figures"), help="folder for the CSV files")
    args = parser.parse_args(argv)
    runs = [(Path(run).name, *load_run(run)) for run in args.runs]
    seeds = [metrics["params"]["seed"] for _, metrics, _ in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: two runs share a seed ({seeds}); each seed once")
    out = Path(args.out)

    model_rows, summary_rows = [], []
    for run, metrics, logits in runs:
        for name in ("test",) + OOD:
            labels = logits[f"{name}_labels"].astype(bool)
            model_rows.append({"run": run, "seed": metrics["params"]["seed"], "set": name,
                               "role": {"test": "IMDB test"}.get(name, metrics["out_of_domain"][name]["role"]
                                                                 if name in OOD else ""),
                               "n_reviews": len(labels), **{f"{m}_acc": float(np.mean((logits[f"{name}_{m}"] >= 0)
                                                                                       == labels)) for m in MODELS}})
    write_csv(out / "ood_seeds.csv", model_rows)
    comparisons = []  # the family of the table: three differences on each of four sets, judged together (Holm)
    for name in ("test",) + OOD:
        rights = {m: np.array([(logits[f"{name}_{m}"] >= 0) == logits[f"{name}_labels"].astype(bool)
                               for _, _, logits in runs], dtype=float) for m in MODELS}
        row = {"set": name, "n_runs": len(runs), "n_reviews": rights["lstm"].shape[1]}
        for m in MODELS:
            per_run = rights[m].mean(axis=1)
            row[f"{m}_mean"], row[f"{m}_sd"] = float(per_run.mean()), float(per_run.std(ddof=1))
        for a, b in COMPARISONS:
            comparison, seed_se, set_se = paired_two_noises(rights[a] - rights[b], scale=100)
            comparisons.append((row, f"{a}_minus_{b}", comparison))
            row.update({f"{a}_minus_{b}_points": comparison.mean, f"{a}_minus_{b}_se": comparison.se,
                        f"{a}_minus_{b}_seed_se": seed_se, f"{a}_minus_{b}_set_se": set_se,
                        f"{a}_minus_{b}_df": comparison.df, f"{a}_minus_{b}_p": comparison.p})
        summary_rows.append(row)
    beyond, adjusted = holm([comparison.p for _, _, comparison in comparisons])
    for (row, key, _), verdict, p_holm in zip(comparisons, beyond, adjusted, strict=True):
        row[f"{key}_p_holm"], row[f"{key}_beyond_noise"] = float(p_holm), bool(verdict)
    write_csv(out / "ood_seeds_summary.csv", summary_rows)

    coverage_rows = []
    for name in ("test",) + OOD:
        for half in ("fewer seen", "more seen"):
            figures = {m: [] for m in MODELS}
            shares, sizes = [], []
            for _, _, logits in runs:
                coverage = logits[f"{name}_coverage"]
                chosen = coverage < np.median(coverage) if half == "fewer seen" else coverage >= np.median(coverage)
                labels = logits[f"{name}_labels"].astype(bool)[chosen]
                for m in MODELS:
                    figures[m].append(float(np.mean((logits[f"{name}_{m}"][chosen] >= 0) == labels)))
                shares.append(float(coverage[chosen].mean()))
                sizes.append(int(chosen.sum()))
            coverage_rows.append({"set": name, "half": half, "n_reviews": int(np.mean(sizes)),
                                  "mean_coverage": float(np.mean(shares)),
                                  **{f"{m}_acc": float(np.mean(figures[m])) for m in MODELS}})
    write_csv(out / "ood_coverage.csv", coverage_rows)

    rule_rows, rights_by_rule = [], {}
    for rule, (kind, power, with_amazon) in RULES.items():
        for run, metrics, logits in runs:
            predictions = rule_predictions(logits, kind, power, with_amazon)
            row = {"rule": rule, "run": run, "seed": metrics["params"]["seed"], "fitted_with_amazon": with_amazon}
            for name in SETS:
                right = (predictions[name] >= 0) == logits[f"{name}_labels"].astype(bool)
                rights_by_rule.setdefault(rule, {}).setdefault(name, []).append(right)
                row[{"valid": "valid_cv"}.get(name, name)] = float(right.mean())
            rule_rows.append(row)
    write_csv(out / "ood_rules.csv", rule_rows)
    summary = {}
    for rule in RULES:
        rows = [row for row in rule_rows if row["rule"] == rule]
        summary[rule] = {"rule": rule, **{column: float(np.mean([row[column] for row in rows]))
                                          for column in ("valid_cv", "test", "amazon", "yelp", "polarity")}}
    lstm_alone = {name: float(np.mean([np.mean((logits[f"{name}_lstm"] >= 0) == logits[f"{name}_labels"])
                                       for _, _, logits in runs])) for name in SETS}
    adopted, candidate, gain = choose_rule(summary, {rule: np.array(rights_by_rule[rule]["amazon"], dtype=float)
                                                     for rule in RULES})
    for rule, row in summary.items():
        row["adopted"] = rule == adopted
        for name in ("test", "amazon", "yelp", "polarity"):
            difference = (np.array(rights_by_rule[rule][name], dtype=float)
                          - np.array(rights_by_rule["stacked (today's)"][name], dtype=float))
            if rule != "stacked (today's)":
                comparison, _, _ = paired_two_noises(difference, scale=100)
                row[f"{name}_vs_stacked_points"], row[f"{name}_vs_stacked_se"] = comparison.mean, comparison.se
            else:
                row[f"{name}_vs_stacked_points"], row[f"{name}_vs_stacked_se"] = 0.0, 0.0
    reference = {"rule": "LSTM alone", **{("valid_cv" if k == "valid" else k): v for k, v in lstm_alone.items()}}
    write_csv(out / "ood_rules_summary.csv", list(summary.values()) + [
        {key: reference.get(key, "") for key in next(iter(summary.values()))}])
    print(f"{len(runs)} runs (seeds {', '.join(map(str, seeds))}); the best candidate: {candidate}"
          + (f", Amazon gain over the stacked rule {gain}" if gain else "") + f"; adopted: {adopted}")
    for row in [*summary.values()]:
        print(f"  {row['rule']:<45} valid {row['valid_cv']:.4f}  amazon {row['amazon']:.4f}  test {row['test']:.4f}"
              f"  yelp {row['yelp']:.4f}  polarity {row['polarity']:.4f}")
    print(f"  {'LSTM alone':<45} valid {lstm_alone['valid']:.4f}  amazon {lstm_alone['amazon']:.4f}  "
          f"test {lstm_alone['test']:.4f}  yelp {lstm_alone['yelp']:.4f}  polarity {lstm_alone['polarity']:.4f}")


if __name__ == "__main__":
    main()
