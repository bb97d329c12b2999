"""Run a hyperparameter sweep of the notebook with papermill, then summarise it.

    python sweeps/sweep.py sweeps/smoke.yaml [--jobs N] [--summary-only] [--show-test] [--runs-dir runs]
    python sweeps/sweep.py sweeps/smoke.yaml --scheduler tcp://host:8786 [--fetch-checkpoints]
    python sweeps/sweep.py sweeps/smoke.yaml --scheduler tls://host:8786 \
        --tls-ca-file ca.pem --tls-cert cluster.pem --tls-key cluster-key.pem

A sweep file (YAML) holds `base` parameters shared by every run, and `runs` (a list of named
parameter sets), a `grid` (every combination of the listed values), or both (each named run
crossed with the grid). A named run may also carry an `edit` ({find: ..., replace: ...}, or a list
of them, made in turn): a change to the notebook's code that is no parameter (exercise 6 uses one;
the options that left the lesson, in sweeps/options.py, are run through such edits); it is made in
a copy of the notebook saved in the run's folder, and each text to find must occur exactly once.
An edit is code that runs in the notebook's kernel: it is made only for a sweep file inside this
checkout's sweeps/ folder (committed with the code, reviewed like it), or with --allow-code-edits
(which says you trust the file as you would a script). Every other sweep file is data: parameters
checked against the notebook's names, and names that must stay inside runs/<sweep>/.
With `seeds: [42, 1, 2]` every configuration runs once per seed (folders `<run>_seed-<seed>`),
and summary_by_config.{csv,md} reports each configuration's mean, standard deviation and
number of seeds, and its difference in validation accuracy from the reference configuration (the
run named `default` or `baseline`, else the first) with that difference's standard error: paired
by seed (a paired t on the per-seed differences, n - 1 df) where the two share seeds, Welch's
unpaired t only where they share fewer than two. The verdicts are Holm's over the family of every
comparison the table makes (its size in `holm_family`): "beyond noise" when the Holm-adjusted p is
at most 0.05. The averaging table (averaging_by_config.csv) is judged the same way.

The summaries show validation figures only: choices are made on validation, and test accuracy
sits beside them only when asked for (--show-test), never judged.

Each run goes to runs/<sweep>/<run>/ with its executed notebook,
metrics.json, checkpoint and figures. Finished runs are skipped when a sweep is started again;
a failed run is recorded in its folder's error.txt and the others go on.

With --scheduler, every run is sent to the workers of a running Dask distributed scheduler, one
papermill execution per run on a worker, in a temporary folder there; the worker sends the
results back (the checkpoint only with --fetch-checkpoints) and they land in runs/<sweep>/<run>/
as a local run's do, whole or not at all. Workers need a checkout of the same commit (they are
started from it), `make install` and the data. A run whose worker dies is retried on another
worker, and a run that fails twice, either way, is recorded as failed.

A Dask scheduler runs whatever any client that reaches it submits, on every worker. A plain
tcp:// scheduler must therefore stay on localhost or a trusted network (the sweep warns about any
other host). Elsewhere use TLS: scheduler, workers and this client all hold certificates signed by
the cluster's own CA (--tls-ca-file, --tls-cert, --tls-key, as `dask scheduler` and `dask worker`
take them), and the scheduler refuses every connection without one.
The trust runs both ways: Dask unpickles what the scheduler and workers send to this client (a
run's result, a worker's exception), and no setting of Dask's turns that off, so every holder of
the cluster's certificate (or, with tcp://, whoever reaches the scheduler) can run code on the
machine running this sweep. Results that are not a run's plain data are refused, but only after
Dask has unpickled them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml

if __package__:  # imported as sweeps.sweep
    from .stats import PAIRED, compare_by_seed, judge_family, paired
else:  # run as a script, or imported as sweep with sweeps/ on sys.path (the tests)
    from stats import PAIRED, compare_by_seed, judge_family, paired

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "sentiment_lstm.ipynb"
KERNEL = "sentiment-lstm"
SET_BY_SWEEP = ("run_dir",)  # the sweep chooses each run's folder itself
EDIT = "edit"  # a named run's change to the notebook's code, not a parameter
SWEEPS_DIR = REPO / "sweeps"  # sweep files here may carry edits; elsewhere only with --allow-code-edits
MAX_SWEEP_FILE_BYTES = 1 << 20  # a sweep file is a page of YAML; the largest committed one is about 4 KB
MAX_RUNS = 2_000  # most runs a sweep may expand to (runs x grid combinations x seeds), counted before expanding
MAX_NAME_CHARS = 100  # longest sweep name, run name or grid value that becomes part of a folder's name


class SweepError(ValueError):
    """A sweep file that cannot be run as it is."""


def notebook_parameters(notebook=NOTEBOOK):
    """The names and defaults of the notebook's `parameters` cell."""
    import papermill

    return {name: info["default"] for name, info in papermill.inspect_notebook(str(notebook)).items()}


def _slug(value):
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(value)).strip("-")


def folder_name(value, field):
    """The folder name a sweep file's name or value becomes; SweepError naming the field if it could leave its folder.

    Refused: empty names, '.', '..' (or any name of dots only), names with a path separator, and
    names longer than MAX_NAME_CHARS.
    """
    text = str(value)
    if len(text) > MAX_NAME_CHARS:
        raise SweepError(f"{field}: {text[:40]!r}... is {len(text)} characters long; a name may have at most "
                         f"{MAX_NAME_CHARS}")
    if any(sep in text for sep in ("/", "\\", "\0")):
        raise SweepError(f"{field}: {text!r} holds a path separator; a name becomes a folder name and must not")
    slug = _slug(text)
    if not slug.strip("."):
        raise SweepError(f"{field}: {text!r} is no folder name (empty, '.' or '..' after replacing other "
                         "characters with '-'); use letters, digits, '.' and '-'")
    return slug


def child(folder, name):
    """folder/name, refused unless it lies directly inside folder (no '..', separator or link leading out)."""
    folder = Path(folder)
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise SweepError(f"{path} would lie outside {folder}; a sweep writes only inside its own folder")
    return path


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: a sweep file needs none, and nested ones expand exponentially."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise SweepError(f"the YAML alias *{event.anchor} (line {mark.line + 1}, column {mark.column + 1}) is "
                             "refused: a sweep file needs no aliases, and nested ones can expand beyond memory")
        return super().compose_node(parent, index)


def read_sweep_file(path):
    """The sweep file's YAML as Python data: at most MAX_SWEEP_FILE_BYTES, no aliases, no Python tags."""
    path = Path(path)
    if path.is_dir():
        raise SweepError(f"sweep file {path} is a folder")
    size = path.stat().st_size
    if size > MAX_SWEEP_FILE_BYTES:
        raise SweepError(f"sweep file {path} holds {size:,} bytes, more than the {MAX_SWEEP_FILE_BYTES:,} a sweep "
                         "file may")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # noqa: S506 (a safe loader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SweepError(f"sweep file {path} is not valid YAML: {err}") from err


def edits_allowed(sweep_file, allow_code_edits=False):
    """Whether a sweep file's edits (code) may run: it lies in this checkout's sweeps/, or the user said so."""
    return allow_code_edits or Path(sweep_file).resolve().is_relative_to(SWEEPS_DIR.resolve())


def check_code_edits(spec, sweep_file, allow_code_edits=False):
    """SweepError naming the runs with an `edit` if the sweep file may not change the notebook's code."""
    runs = spec.get("runs") if isinstance(spec, dict) else None
    editing = [str(run.get("name")) for run in runs or [] if isinstance(run, dict) and EDIT in run]
    if editing and not edits_allowed(sweep_file, allow_code_edits):
        raise SweepError(f"run(s) {', '.join(editing)} carry an 'edit', which changes the notebook's code and so "
                         f"runs code from the sweep file; that is done only for sweep files in {SWEEPS_DIR} or with "
                         "--allow-code-edits (only for a file you trust as you would a script)")


def sweep_folder(spec, sweep_file, runs_dir):
    """runs_dir/<sweep name>, the sweep's name checked so that the folder lies directly inside runs_dir."""
    name = spec.get("name") if isinstance(spec, dict) else None
    field = "name" if name is not None else f"the file name {Path(sweep_file).name!r}"
    return child(runs_dir, folder_name(name if name is not None else Path(sweep_file).stem, field))


def expand(spec, valid_names):
    """The sweep's runs as {run name: parameters}, checked against valid_names before anything runs."""
    if not isinstance(spec, dict):
        raise SweepError("a sweep file must be a mapping with 'base', 'runs' and/or 'grid'")
    unknown_keys = set(spec) - {"name", "base", "runs", "grid", "seeds"}
    if unknown_keys:
        raise SweepError(f"unknown keys in the sweep file: {', '.join(sorted(unknown_keys))}; "
                         "expected name, base, runs, grid, seeds")
    seeds = spec.get("seeds")
    if seeds is not None and not (isinstance(seeds, list) and seeds and len(set(seeds)) == len(seeds)
                                  and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)):
        raise SweepError(f"'seeds' must be a non-empty list of different integers >= 0, got {seeds!r}")
    base = spec.get("base") or {}
    named = spec.get("runs") or [{}]
    grid = spec.get("grid") or {}
    if not spec.get("runs") and not grid:
        raise SweepError("the sweep file has neither 'runs' nor 'grid': nothing to run")
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise SweepError("'grid' must map each parameter to a non-empty list of values")
    if not isinstance(named, list) or not all(isinstance(run, dict) for run in named):
        raise SweepError("'runs' must be a list of mappings, each with a 'name'")
    n_runs = len(named) * math.prod(len(v) for v in grid.values()) * len(seeds or [None])
    if n_runs > MAX_RUNS:
        raise SweepError(f"the sweep would expand to {n_runs:,} runs (runs x grid combinations x seeds), more than "
                         f"the {MAX_RUNS:,} a sweep may have; split it")
    used = set(base) | set(grid) | {k for run in named for k in run if k not in ("name", EDIT)}
    for run in named:
        edit = run.get(EDIT)
        edits = edit if isinstance(edit, list) else [edit]
        if edit is not None and not (edits and all(isinstance(e, dict) and set(e) == {"find", "replace"}
                                                   and all(isinstance(v, str) and v for v in e.values())
                                                   for e in edits)):
            raise SweepError(f"run {run.get('name')!r}: 'edit' must map 'find' and 'replace' to non-empty texts "
                             "(or be a list of such mappings)")
    misspelt = sorted(used - set(valid_names))
    if misspelt:
        raise SweepError(f"unknown parameters: {', '.join(misspelt)}. Valid names: {', '.join(valid_names)}")
    reserved = sorted(used & set(SET_BY_SWEEP + (("seed",) if seeds else ())))
    if reserved:
        raise SweepError(f"{', '.join(reserved)} is set by the sweep for each run; remove it from the sweep file")
    grid_names = {k: [folder_name(v, f"grid.{k}[{i}]") for i, v in enumerate(values)] for k, values in grid.items()}
    runs = {}
    for index, run in enumerate(named):
        run = dict(run)
        run_name = run.pop("name", None)
        if spec.get("runs") and not run_name:
            raise SweepError(f"every entry of 'runs' needs a name: {run}")
        run_slug = folder_name(run_name, f"runs[{index}].name") if run_name else None
        for positions in itertools.product(*(range(len(v)) for v in grid.values())):
            combo = {k: grid[k][i] for k, i in zip(grid, positions, strict=True)}
            parts = ([run_slug] if run_slug else []) + [f"{k}-{grid_names[k][i]}"
                                                        for k, i in zip(grid, positions, strict=True)]
            name = "_".join(parts)
            for seed in seeds or [None]:
                folder = name if seed is None else f"{name}_seed-{seed}"
                if folder in runs:
                    raise SweepError(f"two runs would share the folder {folder}")
                runs[folder] = {**base, **run, **combo, **({} if seed is None else {"seed": seed})}
    return runs


SEED_SUFFIX = re.compile(r"_seed-(\d+)$")


def configuration(run_name):
    """The configuration a run belongs to: its name without the `_seed-N` a seeded sweep adds."""
    return SEED_SUFFIX.sub("", run_name)


def varied_parameters(runs):
    """The parameters whose value differs between runs, in a stable order."""
    names = sorted({k for params in runs.values() for k in params if k != EDIT})
    return [k for k in names if len({json.dumps(p.get(k)) for p in runs.values()}) > 1]


def is_complete(run_dir):
    """A run is done when its metrics.json exists and holds a test accuracy."""
    try:
        return "test_accuracy" in json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return False


def edited_notebook(edit, destination, notebook=NOTEBOOK):
    """Write a copy of the notebook with code changes made in turn; raise unless each text occurs exactly once."""
    source = json.loads(Path(notebook).read_text(encoding="utf-8"))
    for change in edit if isinstance(edit, list) else [edit]:
        cells = [c for c in source["cells"] if c["cell_type"] == "code" and change["find"] in "".join(c["source"])]
        count = sum("".join(c["source"]).count(change["find"]) for c in cells)
        if count != 1:
            raise SweepError(f"the edit's text {change['find']!r} occurs {count} times in the notebook's code; "
                             "it must occur once")
        cells[0]["source"] = "".join(cells[0]["source"]).replace(change["find"], change["replace"])
    Path(destination).write_text(json.dumps(source, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(destination)


def split_edit(parameters):
    """(the run's code edit or None, the parameters papermill passes to the notebook)."""
    parameters = dict(parameters)
    edit = parameters.pop(EDIT, None)
    return edit, parameters


def papermill_execute(run_dir, parameters, threads, repo=REPO):
    """Run the notebook for one configuration in its own process; raise with the error on failure."""
    edit, parameters = split_edit(parameters)
    notebook = Path(repo, "notebooks", "sentiment_lstm.ipynb")
    if edit:
        notebook = edited_notebook(edit, run_dir / "edited_source.ipynb", notebook)
    command = [sys.executable, "-m", "papermill", str(notebook), str(run_dir / "sentiment_lstm.ipynb"),
               "-k", KERNEL, "--cwd", str(repo), "--no-progress-bar", "-y",
               yaml.safe_dump({**parameters, "run_dir": str(run_dir)})]
    # The kernel registered in this environment's .venv, not a same-named one of the user's. Threads that wait
    # sleep (OMP_WAIT_POLICY) unless the user says otherwise: spinning ones starve the other runs on the cores.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), JUPYTER_PREFER_ENV_PATH="1",
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY") or "PASSIVE")
    # A Dask nanny sets this for its worker; inherited by a run, it made training about 20 % slower.
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise RuntimeError("\n".join(lines[-15:]) or f"papermill exited with {result.returncode}")


# --------------------------------------------------------------------------- Dask


def usable_cores():
    """The cores this process may run on (a SLURM or container allocation, not the whole machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def file_md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def checkout_fingerprint(repo=REPO):
    """The MD5s of the files a run executes, so that a worker can check it has the sweep's version."""
    return {name: file_md5(Path(repo, name)) for name in ("helpers.py", "notebooks/sentiment_lstm.ipynb")}


def worker_checkout():
    """The checkout a Dask worker runs from: $SENTIMENT_LSTM_REPO, or its working folder or one above it."""
    start = Path(os.environ.get("SENTIMENT_LSTM_REPO") or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "helpers.py").is_file() and (folder / "notebooks" / "sentiment_lstm.ipynb").is_file():
            return folder
    raise RuntimeError(f"this Dask worker runs in {start}, which is not inside a sentiment-lstm checkout; start "
                       "`dask worker` from the checkout's folder, or set SENTIMENT_LSTM_REPO")


def run_on_worker(name, parameters, fingerprint, slots_by_host, fetch_checkpoint):
    """One run of a sweep, executed on a Dask worker; returns its result files as {relative path: bytes}.

    The run goes to a temporary folder on the worker, which is removed afterwards: workers and
    the machine that started the sweep share no filesystem.
    """
    from distributed import get_worker

    worker = get_worker()
    repo = worker_checkout()
    differing = [path for path, md5 in fingerprint.items() if file_md5(repo / path) != md5]
    if differing:
        raise RuntimeError(f"worker {worker.address}: {', '.join(differing)} in {repo} differ from the sweep's; "
                           "check out the same commit there")
    host = worker.address.rsplit(":", 1)[0]
    # Share the host's cores among the runs its workers can hold at once.
    threads = max(1, usable_cores() // max(1, slots_by_host.get(host, worker.state.nthreads)))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"sweep-{name}-") as tmp:
        run_dir = Path(tmp, name)
        run_dir.mkdir()
        papermill_execute(run_dir, parameters, threads, repo)
        files = {path.relative_to(run_dir).as_posix(): path.read_bytes()
                 for path in sorted(run_dir.rglob("*")) if path.is_file()
                 and (fetch_checkpoint or path.relative_to(run_dir).parts[0] != "checkpoint")}
    return {"files": files, "worker": worker.address, "seconds": time.perf_counter() - start}


def check_plain_result(result):
    """A worker's result if it is plain data (the dict run_on_worker returns: str, bytes and a number), else raise.

    This cannot stop a hostile worker: Dask unpickles what workers send before this sees it (see README).
    """
    files = result.get("files") if type(result) is dict else None
    if not (type(result) is dict and set(result) == {"files", "worker", "seconds"} and type(files) is dict
            and all(type(k) is str and type(v) is bytes for k, v in files.items())
            and type(result["worker"]) is str and type(result["seconds"]) in (int, float)):
        raise SweepError(f"a worker sent a result that is not a run's plain data ({type(result).__name__}); refused")
    return result


def land(sweep_dir, name, files):
    """Write a run's files into sweep_dir/name all at once: a hidden folder first, renamed when whole."""
    sweep_dir = Path(sweep_dir)
    target = child(sweep_dir, name)
    receiving = child(sweep_dir, f".{name}.receiving-{uuid.uuid4().hex[:8]}")
    try:
        for relative, data in files.items():
            path = receiving / relative
            if receiving.resolve() not in path.resolve().parents:
                raise ValueError(f"a worker sent a file outside the run folder: {relative!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        set_aside(target)
        receiving.rename(target)
    finally:
        shutil.rmtree(receiving, ignore_errors=True)


def set_aside(run_dir):
    """Move a run folder left by an earlier, unfinished attempt out of the way; never delete it."""
    run_dir = Path(run_dir)
    if run_dir.exists() or run_dir.is_symlink():
        aside = child(run_dir.parent, f"{run_dir.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
        if run_dir.is_symlink() or run_dir.resolve().parent != run_dir.parent.resolve():
            raise SweepError(f"{run_dir} is a link; a sweep moves only the run folders it made itself")
        run_dir.rename(aside)


TLS_OPTIONS = {"tls_ca_file": "--tls-ca-file", "tls_cert": "--tls-cert", "tls_key": "--tls-key"}


def _scheme_and_host(scheduler):
    """("tcp" or "tls" or another scheme, host) of a Dask address; no scheme means tcp, as in Dask."""
    scheme, _, rest = scheduler.rpartition("://") if "://" in scheduler else ("tcp", "", scheduler)
    host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest
    return scheme.lower(), host.strip("[]")


def is_local_host(host):
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def scheduler_security(scheduler, tls_ca_file=None, tls_cert=None, tls_key=None):
    """The distributed.security.Security for a tls:// scheduler, None for a tcp:// one; SweepError if they don't fit.

    tls_cert is this client's certificate, signed by the CA in tls_ca_file, and tls_key its key
    (None when the cert file holds the key too): a TLS scheduler started with --tls-ca-file
    accepts only connections that present such a certificate, and the client accepts only a
    scheduler whose certificate that CA signed.
    """
    given = {option: value for option, value in (("--tls-ca-file", tls_ca_file), ("--tls-cert", tls_cert),
                                                 ("--tls-key", tls_key)) if value}
    scheme, _ = _scheme_and_host(scheduler)
    if scheme not in ("tcp", "tls"):
        raise SweepError(f"the scheduler address {scheduler} must start with tls:// (or tcp:// on a trusted network)")
    if scheme == "tcp":
        if given:
            raise SweepError(f"{', '.join(given)} given, but the scheduler address {scheduler} is plain tcp://; "
                             "a TLS scheduler's address starts with tls://")
        return None
    missing = [option for option in ("--tls-ca-file", "--tls-cert") if option not in given]
    if missing:
        raise SweepError(f"the scheduler address {scheduler} is tls://, which needs the cluster's certificate files: "
                         f"{', '.join(missing)} missing (--tls-ca-file: the CA that signed the cluster's "
                         "certificates; --tls-cert and --tls-key: a certificate signed by it and its key)")
    for option, value in given.items():
        if not Path(value).is_file():
            raise SweepError(f"{option} {value}: no such file")
    from distributed.security import Security

    return Security(tls_ca_file=str(tls_ca_file), tls_client_cert=str(tls_cert),
                    tls_client_key=str(tls_key) if tls_key else None, require_encryption=True)


def plain_tcp_warning(scheduler):
    """A warning for a tcp:// scheduler on another host than this one, else None."""
    scheme, host = _scheme_and_host(scheduler)
    if scheme != "tcp" or is_local_host(host):
        return None
    return (f"warning: {scheduler} is a plain tcp:// Dask scheduler: anyone who can reach it can run code on every "
            "worker (and on this machine, through the results). A plain tcp scheduler must stay on a trusted network "
            "or on localhost; elsewhere use tls:// with --tls-ca-file, --tls-cert and --tls-key.")


def _allow_one_retry(dask_scheduler):
    # A task whose worker dies is rescheduled; with 1 allowed failure, a second death marks it failed.
    dask_scheduler.allowed_failures = 1


def dask_runs(scheduler, sweep_dir, todo, fetch_checkpoints=False, log=print, worker_timeout=120, security=None):
    """Run the configurations on a Dask cluster; yields (name, error or None, seconds) as each ends.

    security: the Security of a tls:// scheduler (see scheduler_security), None for tcp://.
    """
    import cloudpickle
    from distributed import Client
    from distributed import as_completed as completed

    # Send this module's functions by value, so that the scheduler and workers need not import it:
    # Dask pickles a local function with cloudpickle, which takes the module's functions along.
    module = sys.modules[run_on_worker.__module__]
    if module.__name__ != "__main__":
        cloudpickle.register_pickle_by_value(module)

    def run(*args):
        return run_on_worker(*args)

    try:
        client = Client(scheduler, timeout="20s", security=security)
    except OSError as err:
        hint = (" (a TLS scheduler refuses a certificate its CA did not sign; check --tls-ca-file, --tls-cert and "
                "--tls-key)" if security is not None else "")
        raise SweepError(f"could not reach the Dask scheduler at {scheduler}: {err}{hint}") from err
    with client:
        client.run_on_scheduler(_allow_one_retry)
        try:
            client.wait_for_workers(1, timeout=worker_timeout)
        except TimeoutError as err:
            raise SweepError(f"no Dask worker joined {scheduler} within {worker_timeout} s; start some with "
                             f"`dask worker {scheduler} --nthreads 1` from a checkout") from err
        slots_by_host = {}
        for address, info in client.scheduler_info()["workers"].items():
            host = address.rsplit(":", 1)[0]
            slots_by_host[host] = slots_by_host.get(host, 0) + info["nthreads"]
        log(f"Dask scheduler {scheduler}: {sum(slots_by_host.values())} worker threads on {len(slots_by_host)} host(s)")
        fingerprint = checkout_fingerprint()
        waiting, futures = list(todo.items()), {}
        finished = completed()

        def worker_threads():
            return sum(info["nthreads"] for info in client.scheduler_info()["workers"].values())

        def submit_while_threads_are_free():
            # One run per free worker thread, the next only when one ends: the scheduler would
            # otherwise queue a second run on a busy worker while another worker sits idle.
            while waiting and len(futures) < max(1, worker_threads()):
                name, params = waiting.pop(0)
                future = client.submit(run, name, params, fingerprint, slots_by_host, fetch_checkpoints, pure=False,
                                       key=f"sweep-{sweep_dir.name}-{name}-{uuid.uuid4().hex[:8]}", retries=1)
                futures[future] = (name, time.perf_counter())
                finished.add(future)

        submit_while_threads_are_free()
        for future in finished:
            name, submitted = futures.pop(future)
            try:
                result = check_plain_result(future.result())
            except Exception as err:  # noqa: BLE001 (a failed run is recorded and the sweep goes on)
                run_dir = child(sweep_dir, name)
                set_aside(run_dir)
                run_dir.mkdir()
                (run_dir / "error.txt").write_text(f"{type(err).__name__}: {err}\n", encoding="utf-8")
                yield name, err, time.perf_counter() - submitted
            else:
                land(sweep_dir, name, result["files"])
                log(f"{name}: ran on {result['worker']}")
                yield name, None, result["seconds"]
            submit_while_threads_are_free()


def local_runs(sweep_dir, todo, jobs, execute, log=print):
    """Run the configurations here, `jobs` at a time; yields (name, error or None, seconds) as each ends."""
    threads = max(1, usable_cores() // max(jobs, 1))

    def one(name, params):
        try:
            run_dir = child(sweep_dir, name)
            set_aside(run_dir)
        except SweepError as err:  # a link out of the sweep's folder: nothing is written there, not even error.txt
            return name, err, 0.0
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
            yield future.result()


def run_sweep(sweep_file, runs_dir=REPO / "runs", jobs=1, execute=None, valid_names=None, log=print,
              scheduler=None, fetch_checkpoints=False, tls=None, allow_code_edits=False, show_test=False):
    """Run every configuration not yet complete; returns (sweep folder, names of the failed runs).

    Locally `jobs` at a time, or, given a scheduler address, on the workers of that Dask cluster;
    tls: {"tls_ca_file": ..., "tls_cert": ..., "tls_key": ...} for a tls:// scheduler.
    allow_code_edits: run the edits (code) of a sweep file outside this checkout's sweeps/.
    show_test: the summaries show test accuracy too (by default validation only).
    """
    execute = execute or papermill_execute
    tls = {name: path for name, path in (tls or {}).items() if path}
    if tls and not scheduler:
        raise SweepError(f"{', '.join(TLS_OPTIONS[name] for name in tls)} need a tls:// --scheduler")
    security = scheduler_security(scheduler, **tls) if scheduler else None
    if scheduler and plain_tcp_warning(scheduler):
        log(plain_tcp_warning(scheduler))
    sweep_file = Path(sweep_file)
    spec = read_sweep_file(sweep_file)
    runs = expand(spec, valid_names if valid_names is not None else list(notebook_parameters()))
    check_code_edits(spec, sweep_file, allow_code_edits)
    sweep_dir = sweep_folder(spec, sweep_file, runs_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if sweep_dir.resolve().parent != Path(runs_dir).resolve():  # made just now: a link put there meanwhile
        raise SweepError(f"{sweep_dir} lies outside {runs_dir}")
    (sweep_dir / "sweep.yaml").write_text(sweep_file.read_text(encoding="utf-8"), encoding="utf-8")
    todo = {name: params for name, params in runs.items() if not is_complete(sweep_dir / name)}
    log(f"sweep {sweep_dir.name}: {len(runs)} runs, {len(runs) - len(todo)} already complete, {len(todo)} to run")
    failed, done = [], len(runs) - len(todo)
    start = time.perf_counter()
    if scheduler:
        results = dask_runs(scheduler, sweep_dir, todo, fetch_checkpoints, log, security=security) if todo else []
    else:
        results = local_runs(sweep_dir, todo, jobs, execute, log)
    for name, err, seconds in results:
        done += 1
        if err is not None:
            failed.append(name)
        reason = (str(err).splitlines() or [type(err).__name__])[-1][:200] if err else ""
        status = f"FAILED ({reason})" if err else "ok"
        log(f"[{done}/{len(runs)} done, {len(failed)} failed, {len(runs) - done} left] {name}: "
            f"{status} in {seconds:.0f} s")
    if todo:
        log(f"{len(todo)} run(s) in {time.perf_counter() - start:.0f} s")
    summarise(sweep_dir, runs, show_test=show_test)
    return sweep_dir, sorted(failed)


def summarise(sweep_dir, runs, log=print, show_test=False):
    """Write summary.csv, summary.md and the comparison figures of a sweep folder for its runs.

    show_test: a column of test accuracy too; by default the summaries show validation figures only.
    """
    sweep_dir = Path(sweep_dir)
    varied = varied_parameters(runs)
    rows, histories = [], {}
    for name, params in runs.items():
        row = {"run": name, **{k: params.get(k, "(default)") for k in varied}}
        if is_complete(sweep_dir / name):
            metrics = json.loads((sweep_dir / name / "metrics.json").read_text())
            history = metrics["history"]
            histories[name] = history
            row["run_seconds"] = run_seconds(sweep_dir / name)
            # valid_*: the final model's (averaged epochs); runs from before averaging have only best_valid_*
            row.update(status="ok", valid_acc=metrics.get("valid_acc", metrics["best_valid_acc"]),
                       valid_loss=metrics.get("valid_loss", metrics["best_valid_loss"]),
                       best_valid_acc=metrics["best_valid_acc"],
                       best_valid_loss=metrics["best_valid_loss"], test_accuracy=metrics["test_accuracy"],
                       # every model's epochs (an ensemble trains several), so that seconds / epochs is per epoch
                       epochs=sum(len(m.get("history", {}).get("epoch", [])) for m in metrics.get("members", []))
                       or len(history["epoch"]), n_models=metrics.get("n_models", 1),
                       best_epoch=metrics["best_epoch"], seconds=round(metrics["training_seconds"]))
        else:
            error = sweep_dir / name / "error.txt"
            row["status"] = "failed" if error.exists() else "not run"
        rows.append(row)
    rows.sort(key=lambda r: -(r.get("valid_acc") or -1))
    columns = ["run", *varied, "status", "valid_acc", "valid_loss", "best_valid_acc", "best_valid_loss",
               *(["test_accuracy"] if show_test else []), "n_models", "epochs",
               "best_epoch", "seconds", "run_seconds"]
    with open(sweep_dir / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if histories:
        plot_sweep(sweep_dir, runs, histories, varied, rows)
    if any(SEED_SUFFIX.search(name) for name in runs):
        summarise_by_configuration(sweep_dir, runs, rows, [k for k in varied if k != "seed"], show_test=show_test)
    summarise_averaging(sweep_dir, runs)
    log(f"summary: {sweep_dir / 'summary.md'}")
    return rows


def run_seconds(run_dir):
    """The whole run's wall time, as papermill recorded it in the executed notebook (None if unknown)."""
    try:
        notebook = json.loads((Path(run_dir) / "sentiment_lstm.ipynb").read_text(encoding="utf-8"))
        return round(notebook["metadata"]["papermill"]["duration"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cell(value):
    """A value as a markdown table shows it: floats to 4 decimals, None as empty."""
    return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "")


def _mean_sd(values):
    mean = statistics.fmean(values) if values else None
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def run_seed(runs, name):
    """The seed a run of a seeded sweep ran with: its parameter, else its folder's `_seed-N`."""
    seed = runs.get(name, {}).get("seed")
    if seed is None:
        match = SEED_SUFFIX.search(name)
        seed = int(match.group(1)) if match else None
    return seed


def summarise_by_configuration(sweep_dir, runs, rows, varied, show_test=False):
    """Group a seeded sweep's runs by configuration: mean, standard deviation and seeds per metric.

    Each configuration is compared with the reference (the one named `default` or `baseline`,
    else the first) on validation accuracy (stats.compare_by_seed): where the two share at least two
    seeds, paired by seed, a paired t on the per-seed differences with n - 1 degrees of freedom (n the
    seeds both ran; `method` "paired t", `pairs` n); else Welch's unpaired t, sqrt(sd1²/n1 + sd2²/n2)
    with Welch-Satterthwaite's degrees of freedom (`method` "Welch t"). The comparisons of the table
    are one family under Holm's rule (stats.judge_family): `p` is each one's own p-value, `p_holm` its
    Holm-adjusted one, `holm_family` the family's size, and `beyond_noise` "yes" when p_holm <= 0.05.
    A configuration with too few runs for a standard error gets its difference only, and is no
    member of the family. Test accuracy's mean and sd are columns only with show_test, never judged.
    """
    configs = list(dict.fromkeys(configuration(name) for name in runs))
    reference = next((c for c in configs if c in ("default", "baseline")), configs[0])
    done = {c: [r for r in rows if configuration(r["run"]) == c and r["status"] == "ok"] for c in configs}
    metrics = ["valid_acc", "valid_loss", "best_valid_acc", "best_valid_loss"]
    metrics += ["test_accuracy"] if show_test else []  # shown, never judged
    summary = []
    for config in configs:
        first = runs[next(name for name in runs if configuration(name) == config)]
        row = {"config": config, **{k: first.get(k, "(default)") for k in varied}, "seeds": len(done[config])}
        for key in (*metrics, "seconds", "run_seconds"):
            row[f"{key}_mean"], row[f"{key}_sd"] = _mean_sd([float(r[key]) for r in done[config]
                                                            if r.get(key) is not None])
        summary.append(row)
    ref = next(r for r in summary if r["config"] == reference)

    def accuracies(config):
        return {run_seed(runs, r["run"]): float(r["valid_acc"]) for r in done[config] if r.get("valid_acc") is not None}

    judged = []  # (row, Comparison): the family
    for row in summary:
        if row["config"] == reference or not row["seeds"] or not ref["seeds"]:
            continue
        row["valid_acc_vs_reference"] = row["valid_acc_mean"] - ref["valid_acc_mean"]
        try:
            comparison, method, pairs = compare_by_seed(accuracies(row["config"]), accuracies(reference),
                                                        what=f"{row['config']} - {reference}")
        except ValueError:  # fewer than two runs on a side: no standard error, no verdict
            continue
        row.update(valid_acc_vs_reference=comparison.mean, vs_reference_se=comparison.se, method=method,
                   pairs=len(pairs) if method == PAIRED else "", df=comparison.df)
        judged.append((row, comparison))
    for (row, _), verdict in zip(judged, judge_family(c for _, c in judged), strict=True):
        row.update(p=verdict.p, p_holm=verdict.p_holm, holm_family=verdict.family_size,
                   beyond_noise="yes" if verdict.beyond_noise else "no")
    summary.sort(key=lambda r: -(r["valid_acc_mean"] if r["valid_acc_mean"] is not None else -1))
    columns = ["config", *varied, "seeds", *(f"{key}_{part}" for key in metrics for part in ("mean", "sd")),
               "seconds_mean", "run_seconds_mean", "valid_acc_vs_reference", "vs_reference_se", "method", "pairs",
               "df", "p", "p_holm", "holm_family", "beyond_noise"]
    with open(sweep_dir / "summary_by_config.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary)

    lines = [f"Reference configuration: {reference}. Each configuration's validation accuracy minus the reference's: "
             "paired by seed (a paired t on the per-seed differences, n - 1 df, n = pairs) where the two share seeds, "
             "else Welch's unpaired t (method). Verdicts: Holm's rule at 0.05 over the family of the "
             f"{len(judged)} comparisons of this table (p_holm)."
             + ("" if show_test else " Validation only: test accuracy is shown with --show-test."), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in summary]
    (sweep_dir / "summary_by_config.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_by_configuration(sweep_dir, summary)
    return summary


def summarise_averaging(sweep_dir, runs):
    """averaging_by_config.csv: what averaging the weights of 1, 2, ... epochs did, per configuration.

    Each run of the averaging option (sweeps/options.py) measures windows of 1 to 5 epochs around its
    best epoch on the validation split (metrics.json's "averaging"). For each configuration and window
    size: the mean and standard deviation over the runs (seeds), and the paired differences of
    accuracy and loss from the best epoch alone (the same run's window of 1) with their standard
    errors, sd(differences) / sqrt(n), and each one's p-value (the paired t, n - 1 df). Every
    difference of the table, accuracy and loss, each window and configuration "(all)" included, is
    one family under Holm's rule (stats.judge_family; its size in `holm_family`): `*_beyond_noise` is
    "yes" when the Holm-adjusted p (`*_p_holm`) is at most 0.05. Configuration "(all)" pools every
    run of the sweep.
    Returns the rows; writes nothing if no
    run recorded an averaging table (only runs of sweeps/averaging_seeds.yaml do).
    """
    windows = {}  # (config, size) -> [(valid_acc, valid_loss, (valid_acc, valid_loss) of the best epoch alone)]
    for name in runs:
        if not is_complete(sweep_dir / name):
            continue
        table = json.loads((sweep_dir / name / "metrics.json").read_text()).get("averaging") or []
        alone = next(((r["valid_acc"], r["valid_loss"]) for r in table if len(r["epochs"]) == 1), None)
        for row in table:
            windows.setdefault((configuration(name), len(row["epochs"])), []).append(
                (row["valid_acc"], row["valid_loss"], alone))
    if not windows:
        return []
    if len({config for config, _ in windows}) > 1:  # and every run of the sweep together, paired the same way
        for (_, size), values in list(windows.items()):
            windows.setdefault(("(all)", size), []).extend(values)
    summary, judged = [], []  # judged: (row, metric, Comparison), the family
    for (config, size), values in windows.items():
        row = {"config": config, "epochs_averaged": size, "runs": len(values)}
        row["valid_acc_mean"], row["valid_acc_sd"] = _mean_sd([v[0] for v in values])
        row["valid_loss_mean"], row["valid_loss_sd"] = _mean_sd([v[1] for v in values])
        pairs = [v for v in values if v[2] is not None]
        if size > 1 and len(pairs) > 1:
            for metric, index in (("acc", 0), ("loss", 1)):
                comparison = paired([v[index] for v in pairs], [v[2][index] for v in pairs],
                                    what=f"{config}, {size} epochs, {metric}")
                row[f"{metric}_vs_one_epoch"], row[f"{metric}_vs_one_epoch_se"] = comparison.mean, comparison.se
                judged.append((row, metric, comparison))
        summary.append(row)
    for (row, metric, _), verdict in zip(judged, judge_family(c for *_, c in judged), strict=True):
        row.update({f"{metric}_p": verdict.p, f"{metric}_p_holm": verdict.p_holm, "holm_family": verdict.family_size,
                    f"{metric}_beyond_noise": "yes" if verdict.beyond_noise else "no"})
    columns = ["config", "epochs_averaged", "runs", "valid_acc_mean", "valid_acc_sd", "valid_loss_mean",
               "valid_loss_sd", "acc_vs_one_epoch", "acc_vs_one_epoch_se", "acc_p", "acc_p_holm", "acc_beyond_noise",
               "loss_vs_one_epoch", "loss_vs_one_epoch_se", "loss_p", "loss_p_holm", "loss_beyond_noise",
               "holm_family"]
    with open(sweep_dir / "averaging_by_config.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary)
    return summary


def plot_by_configuration(sweep_dir, summary):
    """Mean validation accuracy per configuration, with error bars of one standard deviation over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in summary if r["seeds"]]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(shown) + 1.2))
    ax.errorbar([r["valid_acc_mean"] for r in shown], range(len(shown)),
                xerr=[r["valid_acc_sd"] or 0 for r in shown], fmt="o", capsize=4)
    ax.set_yticks(range(len(shown)), [f"{r['config']} (n={r['seeds']})" for r in shown])
    ax.invert_yaxis()
    ax.set(xlabel="validation accuracy of the final model (mean ± sd over seeds)",
           title=f"Sweep {Path(sweep_dir).name}")
    fig.tight_layout()
    fig.savefig(Path(sweep_dir) / "valid_acc_by_config.png", dpi=120)
    plt.close(fig)


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
            ax.scatter(values, [r["valid_acc"] for r in done])
            ax.set(xlabel=name, ylabel="validation accuracy")
        fig.suptitle(f"Sweep {sweep_dir.name}")
        fig.tight_layout()
        fig.savefig(sweep_dir / "valid_acc_by_parameter.png", dpi=120)
        plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (torch threads are shared out)")
    parser.add_argument("--scheduler", default=None,
                        help="address of a Dask scheduler (tls://host:8786, or tcp://host:8786 on localhost or a "
                             "trusted network only): run on its workers, not here")
    for option, what in (("--tls-ca-file", "the CA certificate that signed the cluster's certificates (PEM)"),
                         ("--tls-cert", "this client's certificate, signed by that CA (PEM)"),
                         ("--tls-key", "the key of --tls-cert (PEM; not needed if the cert file holds it)")):
        parser.add_argument(option, default=None, metavar="FILE", help=f"with a tls:// --scheduler: {what}")
    parser.add_argument("--fetch-checkpoints", action="store_true",
                        help="with --scheduler: also bring each run's checkpoint back from its worker")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs", help="where runs/<sweep>/ goes")
    parser.add_argument("--summary-only", action="store_true", help="only (re)write the summary of a sweep")
    parser.add_argument("--show-test", action="store_true",
                        help="show test accuracy in the summaries too (by default validation only: choices are made "
                             "on validation, and test accuracy is never judged there)")
    parser.add_argument("--allow-code-edits", action="store_true",
                        help="run the 'edit's (changes to the notebook's code) of a sweep file outside this checkout's "
                             "sweeps/ folder: only for a file you trust as you would a script")
    args = parser.parse_args(argv)
    if not args.sweep_file.is_file():
        parser.error(f"sweep file {args.sweep_file} does not exist")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    tls = {name: getattr(args, name) for name in TLS_OPTIONS if getattr(args, name)}
    if tls and not args.scheduler:
        parser.error(f"{', '.join(TLS_OPTIONS[name] for name in tls)} need a tls:// --scheduler")
    if args.scheduler and not args.summary_only:
        try:
            scheduler_security(args.scheduler, **tls)
        except SweepError as err:
            parser.error(str(err))
    try:
        if args.summary_only:
            spec = read_sweep_file(args.sweep_file)
            runs = expand(spec, list(notebook_parameters()))
            summarise(sweep_folder(spec, args.sweep_file, args.runs_dir), runs, show_test=args.show_test)
            return 0
        sweep_dir, failed = run_sweep(args.sweep_file, args.runs_dir, args.jobs, scheduler=args.scheduler,
                                      fetch_checkpoints=args.fetch_checkpoints, tls=tls,
                                      allow_code_edits=args.allow_code_edits, show_test=args.show_test)
    except SweepError as err:
        print(f"error in {args.sweep_file}: {err}", file=sys.stderr)
        return 2
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see error.txt in each run's folder)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
