"""The research record's files: run records into CSVs, and the CSVs as the lab reads them.

    python sweeps/records.py ensemble RUN_DIRS... --out figures/ensemble_seeds.csv
    python sweeps/records.py adversarial RUN_DIRS... --out figures/adversarial_seeds.csv
    python sweeps/records.py adversarial OPTION_RUN_DIRS... --defaults DEFAULT_RUN_DIRS... --out ...

RUN_DIRS are finished runs' folders, each holding the metrics.json that the lesson notebook's last
cell writes. For every seed, give the option's run and the default run of the same seed, which drew
the same validation split; in any order. Rows follow the option's runs in the order given, one per
seed, each beside its default: the ensemble of sweeps/ensemble_seeds.yaml and the adversarial runs
of sweeps/adversarial_seeds.yaml, with the default runs of sweeps/default_seeds.yaml (seed 42: a
`make run`). Which run is which is read from each record (`n_models` above 1: an ensemble;
`adversarial_epsilon` above 0 among its parameters: adversarial training), as the lesson up to
commit 123b760 wrote them; runs that do not record their option (the sweeps' edited copies of the
later lesson) need --defaults, after which every run before it is the option's. A missing key, or a
value that is not a finite number (nan or infinity: a failed run), stops with the file and the key;
the CSV is written only when every row is complete.

The rest is what notebooks/research_record.ipynb imports: read_csv (a CSV as columns, refusing
failed runs and missing values, named by file and run), by_seed and by_config (a column by seed),
errorbar_plot and Table, and holm_by_section (each section's verdicts as one family under Holm's
rule: p alone, p adjusted, and which verdicts that changes) with holm_table. The statistics are in
sweeps/stats.py.
"""

import argparse
import csv
import html
import json
import math
import sys
from pathlib import Path

import numpy as np

if __package__:  # imported as sweeps.records (the lab)
    from .stats import LEVEL, judge_family, write_csv
else:  # run as a script, or imported as records with sweeps/ on sys.path (the tests)
    from stats import LEVEL, judge_family, write_csv

REPO = Path(__file__).resolve().parents[1]
NOT_A_NUMBER = {"nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"}  # as Python or pandas writes them


class RecordError(ValueError):
    """A run record that lacks what a CSV needs or holds a failed run; the message names the file and the run."""


# --------------------------------------------------------------------------- reading the records


def row_name(row, line):
    """How an error names a row of a CSV: its run, configuration or seed, and its line."""
    for key in ("run", "config", "seed"):
        if row.get(key):
            return f"{key} {row[key]} (line {line})"
    return f"line {line}"


def read_csv(path, blanks=False):
    """A CSV file as {column: array}: float arrays where every value is a number, else strings.

    Every row must be a finished run with every value present: a `status` other than "ok", a value
    written as nan or inf, or (unless blanks) an empty cell raises a RecordError that names the file,
    the row's run and the column, so that no failed run is averaged in silently. blanks=True is for
    summaries, where an empty cell means "does not apply" (the reference row of a comparison, a
    window measured in one run): it reads as nan, which the statistics refuse to average.
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise RecordError(f"{path} has no rows")
    for line, row in enumerate(rows, start=2):
        if None in row:
            raise RecordError(f"{path}: {row_name(row, line)} has more values than the header has columns")
        if row.get("status", "ok") != "ok":
            raise RecordError(f"{path}: {row_name(row, line)} did not finish (status {row['status']!r}): "
                              "rerun it or leave it out of the file")
        for name, value in row.items():
            if value is None or value.strip().lower() in NOT_A_NUMBER or (value == "" and not blanks):
                raise RecordError(f"{path}: {row_name(row, line)} has no value for {name!r} ({value!r}): "
                                  "a failed run or a missing value")
    columns = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        try:
            columns[name] = np.array([float(v) if v != "" else math.nan for v in values])
        except ValueError:
            columns[name] = np.array(values, dtype=object)
    return columns


def rows_where(columns, **equal):
    """The rows of `columns` whose given columns hold the given values, as columns again."""
    keep = np.ones(len(next(iter(columns.values()))), dtype=bool)
    for name, value in equal.items():
        keep &= columns[name] == value
    return {name: values[keep] for name, values in columns.items()}


def by_seed(columns, value, seed_column="seed"):
    """{seed: value} for one column of a table with a row per seed."""
    seeds = [int(s) for s in columns[seed_column]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat in {seeds}: one row per seed")
    return dict(zip(seeds, columns[value], strict=True))


def configurations(columns):
    """Each row's configuration: its run's name less the sweep's `_seed-<seed>` suffix."""
    return np.array([name.rsplit("_seed-", 1)[0] for name in columns["run"]])


def by_config(columns, value):
    """{configuration: {seed: value}} of a seeded sweep's summary.csv, configurations in their order there."""
    config = configurations(columns)
    return {c: by_seed(rows_where(columns | {"config": config}, config=c), value) for c in dict.fromkeys(config)}


# --------------------------------------------------------------------------- many verdicts: Holm's rule


def holm_by_section(claims, level=LEVEL):
    """Each section's verdicts judged as one family under Holm's rule (stats.judge_family).

    claims: (section, claim, Comparison, ...) tuples in the record's order; anything after the Comparison is
    ignored, so the record's own claim tuples go in as they are. A section's family is every claim of that
    section. Returns one dict per claim, in the same order:
    section, claim, comparison, family (how many verdicts the section holds), p (the comparison's own,
    as if alone), p_holm (Holm-adjusted within the section), beyond_before (the comparison's verdict as
    it was judged: its t rule, with any Bonferroni `comparisons` it carries), beyond_holm (p_holm <= 0.05),
    and changed (beyond_holm differs from beyond_before).
    """
    claims = [(section, claim, comparison) for section, claim, comparison, *_ in claims]
    verdicts = {}
    for section in dict.fromkeys(section for section, _, _ in claims):
        members = [k for k, (s, _, _) in enumerate(claims) if s == section]
        for k, verdict in zip(members, judge_family([claims[k][2] for k in members], level), strict=True):
            verdicts[k] = verdict
    rows = []
    for k, (section, claim, comparison) in enumerate(claims):
        verdict = verdicts[k]
        rows.append({"section": section, "claim": claim, "comparison": comparison, "family": verdict.family_size,
                     "p": verdict.p, "p_holm": verdict.p_holm, "beyond_before": bool(comparison.beyond_noise),
                     "beyond_holm": verdict.beyond_noise,
                     "changed": verdict.beyond_noise != bool(comparison.beyond_noise)})
    return rows


HOLM_COLUMNS = ("section", "claim", "family", "p", "p, Holm", "beyond before", "beyond, Holm", "")


def holm_table(rows, digits=4):
    """holm_by_section's rows as a Table under HOLM_COLUMNS, "CHANGED" marking the verdicts Holm's rule turns."""
    return Table([(r["section"], r["claim"], r["family"], r["p"], r["p_holm"], r["beyond_before"], r["beyond_holm"],
                   "CHANGED" if r["changed"] else "") for r in rows], HOLM_COLUMNS, digits)


# --------------------------------------------------------------------------- showing


class Table:
    """A small table: HTML in Jupyter, aligned text elsewhere; floats rounded to `digits`."""

    def __init__(self, rows, columns, digits=4):
        self.rows, self.columns, self.digits = [list(r) for r in rows], list(columns), digits

    def _cell(self, value):
        if isinstance(value, bool | np.bool_):
            return "yes" if value else "no"
        if isinstance(value, float | np.floating):
            return "" if math.isnan(value) else f"{value:.{self.digits}f}"
        return f"{value:,}" if isinstance(value, int | np.integer) else str(value)

    def _repr_html_(self):
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(self._cell(v))}</td>" for v in row) + "</tr>"
                       for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self):
        cells = [[str(c) for c in self.columns]] + [[self._cell(v) for v in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
                         for row in cells)


def errorbar_plot(labels, comparisons, xlabel, title, path=None):
    """Each comparison's mean with its t interval, one row per label; filled where beyond noise.

    Saves the figure to `path` (120 dpi) when one is given; returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.3))
    for row, c in enumerate(comparisons):
        ax.errorbar([c.mean], [row], xerr=[[c.mean - c.low], [c.high - c.mean]], fmt="o", capsize=4, color="C0",
                    markerfacecolor="C0" if c.beyond_noise else "white")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(labels)), [f"{label} (n={c.n})" for label, c in zip(labels, comparisons, strict=True)])
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, metadata={"Software": None})
    return fig


# --------------------------------------------------------------------------- run records into CSVs


def load_metrics(run_dir):
    """(path, contents) of a finished run's metrics.json."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise RecordError(f"{path} does not exist: is {run_dir} a finished run of the lesson notebook?")
    return path, json.loads(path.read_text(encoding="utf-8"))


def checked(record, where, value):
    """value, unless it is or holds a number that is not finite (json reads NaN and Infinity): then a RecordError."""
    numbers = value if isinstance(value, list) else [value]
    bad = [v for v in numbers if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        seed = record[1].get("params", {}).get("seed") if isinstance(record[1].get("params"), dict) else None
        raise RecordError(f"{record[0]} (the run of seed {seed}) has {where} = {value}: not a finite number, "
                          "a failed run or a value it could not measure; no CSV row is made of it")
    return value


def field(record, *keys):
    """record[1][keys[0]][keys[1]]..., where record is (path, metrics); a missing key or a value that is not a
    finite number names the file and the key."""
    path, value = record
    for depth, key in enumerate(keys):
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            where = "".join(f"[{k!r}]" for k in keys[: depth + 1])
            raise RecordError(f"{path} has no {where} (key {key!r})") from None
    return checked(record, "".join(f"[{k!r}]" for k in keys), value)


def run_kind(record):
    """'ensemble', 'adversarial' or 'default', from the run's own record of what it trained.

    The lesson up to commit 123b760 recorded both options (n_models, params' adversarial_epsilon); its
    later runs record neither unless a sweep's edit adds them (sweeps/ensemble_seeds.yaml adds n_models):
    absent, they mean one model and no push, and such runs need --defaults to be told apart.
    """
    n_models = record[1].get("n_models", 1)
    epsilon = field(record, "params").get("adversarial_epsilon", 0.0)
    if n_models > 1 and epsilon > 0:
        raise RecordError(f"{record[0]}: an adversarial ensemble is neither option's run")
    return "ensemble" if n_models > 1 else "adversarial" if epsilon > 0 else "default"


def one_per_seed(records, what):
    """{seed: record}; two records of one seed are an error."""
    by_seed = {}
    for record in records:
        seed = field(record, "params", "seed")
        if seed in by_seed:
            raise RecordError(f"two {what} runs of seed {seed} ({by_seed[seed][0]} and {record[0]}): give one per "
                              "seed (runs that do not record their option, as edited sweeps' runs, need --defaults)")
        by_seed[seed] = record
    return by_seed


def pair_runs(run_dirs, option, default_dirs=None):
    """[(the option's run, the default run of its seed)], in the order given; every seed needs both.

    Without default_dirs, each run's record says which it is (run_kind); with them, run_dirs are the option's.
    """
    records = [load_metrics(d) for d in run_dirs]
    if default_dirs is None:
        kinds = [run_kind(record) for record in records]
        for record, kind in zip(records, kinds, strict=True):
            if kind not in (option, "default"):
                raise RecordError(f"{record[0]} is a run of the {kind} option, not of {option} or the default")
        options = one_per_seed([r for r, kind in zip(records, kinds, strict=True) if kind == option], option)
        defaults = one_per_seed([r for r, kind in zip(records, kinds, strict=True) if kind == "default"], "default")
    else:
        options = one_per_seed(records, option)
        defaults = one_per_seed([load_metrics(d) for d in default_dirs], "default")
    if not options:
        raise RecordError(f"none of the runs given trained the {option} option")
    pairs = []
    for seed, record in options.items():
        if seed not in defaults:
            raise RecordError(f"no default run of seed {seed} among the runs given, for {record[0]}")
        default = defaults.pop(seed)
        if field(record, "n_train_reviews") != field(default, "n_train_reviews"):
            raise RecordError(f"the runs of seed {seed} trained on different numbers of reviews "
                              f"({record[0]}, {default[0]}): not the same split")
        pairs.append((record, default))
    if defaults:
        raise RecordError(f"default runs without an {option} run of their seed: {sorted(defaults)}")
    return pairs


def member_valid(run, k, key):
    """Member k's validation figure (key: valid_acc or valid_loss) as the ensemble used it.

    The lesson up to commit 123b760 recorded it in each member's record; sweeps/ensemble_seeds.yaml's
    members keep their best epoch, whose figure is in the member's history (the first model's best epoch
    is the run's).
    """
    member = field(run, "members", k)
    if key in member:
        return checked(run, f"['members'][{k}][{key!r}]", member[key])
    best = member.get("best_epoch") or (run[1].get("best_epoch") if k == 0 else None)
    history = member.get("history", {}).get(key)
    if not best or not history:
        raise RecordError(f"{run[0]} has no ['members'][{k}][{key!r}], nor a best epoch and history of member {k} "
                          "to read it from")
    return checked(run, f"['members'][{k}]['history'][{key!r}][{best - 1}]", history[best - 1])


def ensemble_row(run, default):
    """One seed's row of ensemble_seeds.csv: the ensemble, its first model and the default of its seed."""
    members = field(run, "members")
    if len(members) < 2:
        raise RecordError(f"{run[0]}: 'members' lists {len(members)} model(s), not an ensemble")
    return {
        "seed": field(run, "params", "seed"),
        "single_valid_acc": field(default, "valid_acc"),
        "single_valid_loss": field(default, "valid_loss"),
        "single_test_acc": field(default, "test_accuracy"),
        "single_test_loss": field(default, "test_loss"),
        "model1_valid_acc": member_valid(run, 0, "valid_acc"),
        "model1_valid_loss": member_valid(run, 0, "valid_loss"),
        "members_valid_acc": " / ".join(f"{member_valid(run, k, 'valid_acc'):.4f}" for k in range(len(members))),
        "ensemble_valid_acc": field(run, "valid_acc"),
        "ensemble_valid_loss": field(run, "valid_loss"),
        "ensemble_test_acc": field(run, "test_accuracy"),
        "ensemble_test_loss": field(run, "test_loss"),
        "training_seconds": round(field(run, "training_seconds")),
        "single_training_seconds": round(field(default, "training_seconds")),
    }


def adversarial_row(run, default):
    """One seed's row of adversarial_seeds.csv: the adversarial run and the default of its seed."""
    def spaced(values, digits):
        return " ".join(f"{v:.{digits}f}" for v in values)

    return {
        "seed": field(run, "params", "seed"),
        "default_best_valid_acc": field(default, "best_valid_acc"),
        "default_valid_acc": field(default, "valid_acc"),
        "default_valid_loss": field(default, "valid_loss"),
        "default_test_acc": field(default, "test_accuracy"),
        "default_peak_mib": round(field(default, "peak_memory", "cpu_rss_mib")),
        "adversarial_best_epoch": field(run, "best_epoch"),
        # absent from runs that keep their best epoch (the lesson after commit 123b760): that epoch alone
        "adversarial_averaged_epochs": " ".join(str(e) for e in run[1].get("averaged_epochs",
                                                                           [field(run, "best_epoch")])),
        "adversarial_best_valid_acc": field(run, "best_valid_acc"),
        "adversarial_best_valid_loss": field(run, "best_valid_loss"),
        "adversarial_valid_acc": field(run, "valid_acc"),
        "adversarial_valid_loss": field(run, "valid_loss"),
        "adversarial_test_acc": field(run, "test_accuracy"),
        "adversarial_test_loss": field(run, "test_loss"),
        "adversarial_epoch_seconds": spaced(field(run, "history", "seconds"), 0),
        "adversarial_peak_mib": round(field(run, "peak_memory", "cpu_rss_mib")),
        "adversarial_clipped": spaced(field(run, "history", "clipped"), 2),
        "default_clipped": spaced(field(default, "history", "clipped"), 2),
    }


PRODUCERS = {"ensemble": ensemble_row, "adversarial": adversarial_row}


def option_rows(option, run_dirs, default_dirs=None):
    """The rows of the option's CSV, one per seed, from the run folders given."""
    return [PRODUCERS[option](run, default) for run, default in pair_runs(run_dirs, option, default_dirs)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("option", choices=sorted(PRODUCERS), help="which option's runs")
    parser.add_argument("runs", nargs="+", help="finished runs: the option's and the default's, one of each per seed")
    parser.add_argument("--defaults", nargs="+", metavar="RUN_DIR",
                        help="the default runs; the runs before are then all the option's (for runs that do not "
                             "record their option)")
    parser.add_argument("--out", help="the CSV to write (default: figures/<option>_seeds.csv)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else REPO / "figures" / f"{args.option}_seeds.csv"
    try:
        rows = option_rows(args.option, args.runs, args.defaults)
    except RecordError as error:
        raise SystemExit(f"error: {error}") from None
    write_csv(out, rows)
    print(f"{out}: {len(rows)} rows (seeds {', '.join(str(r['seed']) for r in rows)})")


if __name__ == "__main__":
    sys.exit(main())
