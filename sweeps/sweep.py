"""Run a hyperparameter sweep of the notebook with papermill, then summarise it.

    python sweeps/sweep.py sweeps/smoke.yaml [--jobs N] [--summary-only] [--runs-dir runs]

A sweep file (YAML) holds `base` parameters shared by every run, and `runs` (a list of named
parameter sets), a `grid` (every combination of the listed values), or both (each named run
crossed with the grid). Each run goes to runs/<sweep>/<run>/ with its executed notebook,
metrics.json, checkpoint and figures. Finished runs are skipped when a sweep is started again;
a failed run is recorded in its folder's error.txt and the others go on.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "sentiment_lstm.ipynb"
KERNEL = "sentiment-lstm"
SET_BY_SWEEP = ("run_dir",)  # the sweep chooses each run's folder itself


class SweepError(ValueError):
    """A sweep file that cannot be run as it is."""


def notebook_parameters(notebook=NOTEBOOK):
    """The names and defaults of the notebook's `parameters` cell."""
    import papermill

    return {name: info["default"] for name, info in papermill.inspect_notebook(str(notebook)).items()}


def _slug(value):
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(value)).strip("-")


def expand(spec, valid_names):
    """The sweep's runs as {run name: parameters}, checked against valid_names before anything runs."""
    if not isinstance(spec, dict):
        raise SweepError("a sweep file must be a mapping with 'base', 'runs' and/or 'grid'")
    unknown_keys = set(spec) - {"name", "base", "runs", "grid"}
    if unknown_keys:
        raise SweepError(f"unknown keys in the sweep file: {', '.join(sorted(unknown_keys))}; "
                         "expected name, base, runs, grid")
    base = spec.get("base") or {}
    named = spec.get("runs") or [{}]
    grid = spec.get("grid") or {}
    if not spec.get("runs") and not grid:
        raise SweepError("the sweep file has neither 'runs' nor 'grid': nothing to run")
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise SweepError("'grid' must map each parameter to a non-empty list of values")
    used = set(base) | set(grid) | {k for run in named for k in run if k != "name"}
    misspelt = sorted(used - set(valid_names))
    if misspelt:
        raise SweepError(f"unknown parameters: {', '.join(misspelt)}. Valid names: {', '.join(valid_names)}")
    reserved = sorted(used & set(SET_BY_SWEEP))
    if reserved:
        raise SweepError(f"{', '.join(reserved)} is set by the sweep for each run; remove it from the sweep file")
    runs = {}
    for run in named:
        run = dict(run)
        run_name = run.pop("name", None)
        if spec.get("runs") and not run_name:
            raise SweepError(f"every entry of 'runs' needs a name: {run}")
        for values in itertools.product(*grid.values()):
            combo = dict(zip(grid, values, strict=True))
            parts = ([_slug(run_name)] if run_name else []) + [f"{k}-{_slug(v)}" for k, v in combo.items()]
            name = "_".join(parts)
            if name in runs:
                raise SweepError(f"two runs would share the folder {name}")
            runs[name] = {**base, **run, **combo}
    return runs


def varied_parameters(runs):
    """The parameters whose value differs between runs, in a stable order."""
    names = sorted({k for params in runs.values() for k in params})
    return [k for k in names if len({json.dumps(p.get(k)) for p in runs.values()}) > 1]


def is_complete(run_dir):
    """A run is done when its metrics.json exists and holds a test accuracy."""
    try:
        return "test_accuracy" in json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return False


def papermill_execute(run_dir, parameters, threads):
    """Run the notebook for one configuration in its own process; raise with the error on failure."""
    command = [sys.executable, "-m", "papermill", str(NOTEBOOK), str(run_dir / "sentiment_lstm.ipynb"),
               "-k", KERNEL, "--cwd", str(REPO), "--no-progress-bar", "-y",
               yaml.safe_dump({**parameters, "run_dir": str(run_dir)})]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise RuntimeError("\n".join(lines[-15:]) or f"papermill exited with {result.returncode}")


def run_sweep(sweep_file, runs_dir=REPO / "runs", jobs=1, execute=None, valid_names=None, log=print):
    """Run every configuration not yet complete; returns (sweep folder, names of the failed runs)."""
    execute = execute or papermill_execute
    sweep_file = Path(sweep_file)
    spec = yaml.safe_load(sweep_file.read_text(encoding="utf-8"))
    runs = expand(spec, valid_names if valid_names is not None else list(notebook_parameters()))
    sweep_dir = Path(runs_dir) / _slug(spec.get("name") or sweep_file.stem)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.yaml").write_text(sweep_file.read_text(encoding="utf-8"), encoding="utf-8")
    todo = {name: params for name, params in runs.items() if not is_complete(sweep_dir / name)}
    log(f"sweep {sweep_dir.name}: {len(runs)} runs, {len(runs) - len(todo)} already complete, {len(todo)} to run")
    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    failed, done = [], len(runs) - len(todo)

    def one(name, params):
        run_dir = sweep_dir / name
        if run_dir.exists():  # left by an earlier, unfinished attempt: keep it aside, never delete it
            run_dir.rename(sweep_dir / f"{name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.mkdir()
        log(f"starting {name}: {json.dumps(params)}")
        start = time.perf_counter()
        try:
            execute(run_dir, params, threads)
            return name, None, time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 (any failure is recorded and the sweep goes on)
            (run_dir / "error.txt").write_text(f"{type(err).__name__}: {err}\n", encoding="utf-8")
            return name, err, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = [pool.submit(one, name, params) for name, params in todo.items()]
        for future in as_completed(futures):
            name, err, seconds = future.result()
            done += 1
            if err is not None:
                failed.append(name)
            reason = (str(err).splitlines() or [type(err).__name__])[-1][:200] if err else ""
            status = f"FAILED ({reason})" if err else "ok"
            log(f"[{done}/{len(runs)} done, {len(failed)} failed, {len(runs) - done} left] {name}: "
                f"{status} in {seconds:.0f} s")
    summarise(sweep_dir, runs)
    return sweep_dir, sorted(failed)


def summarise(sweep_dir, runs, log=print):
    """Write summary.csv, summary.md and the comparison figures of a sweep folder for its runs."""
    sweep_dir = Path(sweep_dir)
    varied = varied_parameters(runs)
    rows, histories = [], {}
    for name, params in runs.items():
        row = {"run": name, **{k: params.get(k, "(default)") for k in varied}}
        if is_complete(sweep_dir / name):
            metrics = json.loads((sweep_dir / name / "metrics.json").read_text())
            history = metrics["history"]
            histories[name] = history
            row.update(status="ok", best_valid_acc=metrics["best_valid_acc"],
                       best_valid_loss=metrics["best_valid_loss"], test_accuracy=metrics["test_accuracy"],
                       epochs=len(history["epoch"]),
                       best_epoch=metrics["best_epoch"], seconds=round(metrics["training_seconds"]))
        else:
            error = sweep_dir / name / "error.txt"
            row["status"] = "failed" if error.exists() else "not run"
        rows.append(row)
    rows.sort(key=lambda r: -(r.get("best_valid_acc") or -1))
    columns = ["run", *varied, "status", "best_valid_acc", "best_valid_loss", "test_accuracy", "epochs",
               "best_epoch", "seconds"]
    with open(sweep_dir / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if histories:
        plot_sweep(sweep_dir, runs, histories, varied, rows)
    log(f"summary: {sweep_dir / 'summary.md'}")
    return rows


def plot_sweep(sweep_dir, runs, histories, varied, rows):
    """Validation loss curves of all runs overlaid, and validation accuracy against each varied parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in histories.items():
        ax.plot(history["epoch"], history["valid_loss"], "o-", label=name)
    ax.set(xlabel="epoch", ylabel="validation loss", title=f"Sweep {sweep_dir.name}: validation loss")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sweep_dir / "valid_loss_curves.png", dpi=120)
    plt.close(fig)
    done = [r for r in rows if r["status"] == "ok"]
    if varied and done:
        fig, axes = plt.subplots(1, len(varied), figsize=(3.6 * len(varied), 3.4), squeeze=False)
        for ax, name in zip(axes[0], varied, strict=True):
            values = [str(r[name]) for r in done]
            ax.scatter(values, [r["best_valid_acc"] for r in done])
            ax.set(xlabel=name, ylabel="best validation accuracy")
        fig.suptitle(f"Sweep {sweep_dir.name}")
        fig.tight_layout()
        fig.savefig(sweep_dir / "valid_acc_by_parameter.png", dpi=120)
        plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (torch threads are shared out)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs", help="where runs/<sweep>/ goes")
    parser.add_argument("--summary-only", action="store_true", help="only (re)write the summary of a sweep")
    args = parser.parse_args(argv)
    if not args.sweep_file.is_file():
        parser.error(f"sweep file {args.sweep_file} does not exist")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        if args.summary_only:
            spec = yaml.safe_load(args.sweep_file.read_text(encoding="utf-8"))
            sweep_dir = args.runs_dir / _slug(spec.get("name") or args.sweep_file.stem)
            summarise(sweep_dir, expand(spec, list(notebook_parameters())))
            return 0
        sweep_dir, failed = run_sweep(args.sweep_file, args.runs_dir, args.jobs)
    except SweepError as err:
        print(f"error in {args.sweep_file}: {err}", file=sys.stderr)
        return 2
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see error.txt in each run's folder)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
