"""Shared, tested plumbing for the sentiment-LSTM lesson (notebooks/sentiment_lstm.ipynb).

Data, tokenizing, vocabulary, batching, word vectors, checkpoints, metrics and plots; the lesson
itself (the model, the training step, the evaluation pass) is written out in the notebook. Every
use of torchtext is in this file: where it cannot load, or SENTIMENT_NO_TORCHTEXT=1 is set, the
file's own tokenizer and vocabulary give the same tokens and ids (tests/test_stacks.py).
"""

from __future__ import annotations

import ast
import collections
import ctypes
import difflib
import gzip
import hashlib
import html
import http.client
import io
import itertools
import json
import math
import os
import platform
import random
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import types
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# --------------------------------------------------------------------------- the stack and parameters
# Threads that wait for work sleep instead of spinning, so that runs sharing cores (a sweep's JOBS=2, a class's
# kernels, a parallel test suite) do not starve each other: two runs at once took 9+ min each with spinning
# threads, 83 s for both without. OpenMP reads this when torch loads: here it is set before `import torch` below;
# a kernel that imported torch first has it from its environment (the Makefile, the sweep, the kernel's spec).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

STACK_FIX = 'pip install torch==2.3.1 torchtext==0.18.0 "numpy<2"'
# torch alone, the CPU-only build (no CUDA libraries); torchtext is not needed (see check_stack)
TORCH_FIX = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def check_stack(versions=None, no_torchtext=None):
    """Whether to use torchtext (True) or our own tokenizer and vocabulary; raise only for no torch or one < 2.3.

    torchtext 0.18 loads only with torch 2.3 (else: an undefined symbol), so versions are compared before importing it.
    """
    if versions is None:
        versions = {}
        for name in ("torch", "torchtext"):
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                versions[name] = None
    if no_torchtext is None:
        no_torchtext = os.environ.get("SENTIMENT_NO_TORCHTEXT", "") not in ("", "0")
    torch_version, torchtext_version = versions["torch"], versions["torchtext"]
    numbers = re.match(r"(\d+)\.(\d+)", torch_version or "")
    if torch_version is None or (numbers is not None and (int(numbers[1]), int(numbers[2])) < (2, 3)):
        found = f"torch {torch_version}" if torch_version else "no torch"
        raise ImportError(f"this notebook needs torch 2.3 or newer, but this Python has {found}. Fix: {TORCH_FIX} "
                          f"(or {STACK_FIX}, on Python 3.10 to 3.12), then restart the kernel; or run `make install` "
                          "in the repository and use its kernel.")
    if no_torchtext or torchtext_version is None:
        return False
    if torch_version.startswith("2.3.") and torchtext_version.startswith("0.18."):
        return True
    warnings.warn(f"torchtext {torchtext_version} is installed, but it loads only with torch 2.3 and this Python has "
                  f"torch {torch_version}: it is not imported, and helpers.py uses its own tokenizer and vocabulary "
                  f"instead (the same tokens and ids). For torchtext itself: {STACK_FIX}.", stacklevel=2)
    return False


USE_TORCHTEXT = check_stack()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

# torch starts as many threads as the machine has cores, not as this process may use (taskset, a SLURM or
# container allocation); OMP_NUM_THREADS, where set, decides instead.
USABLE_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
if not os.environ.get("OMP_NUM_THREADS") and torch.get_num_threads() > USABLE_CORES:
    torch.set_num_threads(USABLE_CORES)

if USE_TORCHTEXT:
    try:
        import torchtext
    except (ImportError, OSError) as error:  # the versions matched, but the library did not load
        warnings.warn(f"torchtext did not load ({error}); helpers.py uses its own tokenizer and vocabulary "
                      "instead (the same tokens and ids)", stacklevel=1)
        USE_TORCHTEXT = False
if USE_TORCHTEXT:
    torchtext.disable_torchtext_deprecation_warning()  # it warns at every import that 0.18 is its last release
    from torchtext.data.utils import get_tokenizer
    from torchtext.vocab import build_vocab_from_iterator
    from torchtext.vocab import vocab as vocab_from_ordered_dict
else:
    # environment_info records torchtext.__version__: None there says the built-in path ran.
    torchtext = types.SimpleNamespace(__version__=None)

REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = REPO_DIR / "data"
SAMPLE_DIR = DATA_DIR / "sample" / "aclImdb"
# Token lists and word vectors, under a hash of what they are made from; SENTIMENT_CACHE_DIR=path moves them.
CACHE_DIR = Path(os.environ.get("SENTIMENT_CACHE_DIR") or DATA_DIR / "cache")
RUNS_DIR = REPO_DIR / "runs"


@dataclass(frozen=True)
class ParamSpec:
    """What one notebook parameter accepts."""

    kind: type | tuple[type, ...]
    allowed: str
    check: object = None  # a callable value -> bool, or None


def _positive(value):
    return value > 0


POOLINGS = ("last", "max", "mean", "max+mean")  # the ways pool_over_time summarises a review
CELLS = ("lstm", "gru", "rnn")  # the recurrent cells the lesson's model can use

PARAM_SPECS = {
    "imdb_archive": ParamSpec(str, "a path to aclImdb_v1.tar.gz, or '' to download"),
    "use_sample": ParamSpec(bool, "True or False"),
    "valid_fraction": ParamSpec(float, "a fraction with 0 < value < 1", lambda v: 0 < v < 1),
    "valid_size": ParamSpec(int, "0 (the whole validation split) or an integer >= 2", lambda v: v == 0 or v >= 2),
    "train_size": ParamSpec(int, "0 (every training review) or an integer >= 2", lambda v: v == 0 or v >= 2),
    "test_size": ParamSpec(int, "0 (every test review) or an integer >= 2", lambda v: v == 0 or v >= 2),
    "n_epochs": ParamSpec(int, "an integer >= 1 (0 only with init_checkpoint)", lambda v: v >= 0),
    "patience": ParamSpec(int, "an integer >= 1", lambda v: v >= 1),
    "batch_size": ParamSpec(int, "an integer >= 1", _positive),
    "max_length": ParamSpec(int, "an integer >= 1", _positive),
    "min_freq": ParamSpec(int, "an integer >= 1", _positive),
    "max_vocab_size": ParamSpec(int, "an integer >= 3", lambda v: v >= 3),
    "embedding_dim": ParamSpec(int, "an integer >= 1", _positive),
    "ngram_max_n": ParamSpec(int, "1, 2 or 3", lambda v: 1 <= v <= 3),
    "ngram_c_values": ParamSpec(list, "a non-empty list of numbers > 0",
                                lambda v: len(v) > 0 and all(isinstance(c, int | float) and not isinstance(c, bool)
                                                             and math.isfinite(c) and c > 0 for c in v)),
    "pretrain_embeddings": ParamSpec(bool, "True or False"),
    "word_vector_window": ParamSpec(int, "an integer >= 1", _positive),
    "ppmi_context_power": ParamSpec(float, "a float with 0 < value <= 1", lambda v: 0 < v <= 1),
    "hidden_dim": ParamSpec(int, "an integer >= 1", _positive),
    "cell": ParamSpec(str, "'lstm', 'gru' or 'rnn'", lambda v: v in CELLS),
    "n_layers": ParamSpec(int, "an integer >= 1", _positive),
    "bidirectional": ParamSpec(bool, "True or False"),
    "pooling": ParamSpec(str, "'last', 'max', 'mean' or 'max+mean'", lambda v: v in POOLINGS),
    "embedding_dropout": ParamSpec(float, "a float with 0 <= value < 1", lambda v: 0 <= v < 1),
    "dropout": ParamSpec(float, "a float with 0 <= value < 1", lambda v: 0 <= v < 1),
    "lr": ParamSpec(float, "a float > 0", _positive),
    "clip_norm": ParamSpec(float, "a float > 0", _positive),
    "seed": ParamSpec(int, "an integer >= 0", lambda v: v >= 0),
    "device": ParamSpec(str, "'auto', 'cpu' or 'cuda'", lambda v: v in ("auto", "cpu", "cuda")),
    "ig_steps": ParamSpec(int, "an integer >= 1", _positive),
    "shaded_tokens": ParamSpec(int, "an integer >= 1", _positive),
    "run_dir": ParamSpec(str, "a folder path, or '' for a new folder under runs/"),
    "init_checkpoint": ParamSpec(str, "a checkpoint folder, or '' to train"),
    "predict_file": ParamSpec(str, "a text file with one review per line, or ''"),
    "ood_data": ParamSpec(str, "a folder holding the out-of-domain sets, or '' ($OOD_DATA, data/ood/, a download)"),
}


def check_param(name, value, label=None):
    """One parameter's value checked against PARAM_SPECS (an int accepted for a float); ValueError naming it.

    label: how the error names it ("parameter NAME" unless given, e.g. "ck/config.json: model.hidden_dim").
    """
    spec = PARAM_SPECS[name]
    # papermill passes 1e-3 as a float but 1 as an int; accept an int where a float is asked.
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    wrong_type = not isinstance(value, spec.kind) or (isinstance(value, bool) and spec.kind is not bool)
    if wrong_type or (spec.kind is float and not math.isfinite(value)) or (
            spec.check is not None and not spec.check(value)):
        raise ValueError(f"{label or 'parameter ' + name}={value!r} is not valid: expected {spec.allowed}")
    return value


def validate_params(params):
    """Check every notebook parameter and return them as a plain dict, or raise naming the bad one."""
    missing = sorted(set(PARAM_SPECS) - set(params))
    if missing:
        raise ValueError(f"missing parameters: {', '.join(missing)}")
    check_parameter_names(params)
    checked = {}
    for name in PARAM_SPECS:
        checked[name] = check_param(name, params[name])
    if checked["n_epochs"] == 0 and not checked["init_checkpoint"]:
        raise ValueError("parameter n_epochs=0 is only valid with init_checkpoint; expected n_epochs >= 1")
    for name in ("imdb_archive", "init_checkpoint", "predict_file", "ood_data"):
        if checked[name] and not Path(checked[name]).exists():
            hint = ""  # JupyterLab runs the notebook in notebooks/, papermill and make in the repository's root
            if not Path(checked[name]).is_absolute() and (REPO_DIR / checked[name]).exists():
                from_here = os.path.relpath(REPO_DIR / checked[name])
                hint = f" here in {Path.cwd()}; it is there from the repository's root: use {from_here!r}"
            raise ValueError(f"parameter {name}={checked[name]!r} is not valid: no such file or folder{hint}")
    if checked["device"] == "cuda" and not torch.cuda.is_available():
        raise ValueError("parameter device='cuda' is not valid: no CUDA device is available; use 'auto' or 'cpu'")
    return checked


def check_parameter_names(names):
    """Raise naming each unknown parameter and the closest valid name (a typo must not run the defaults)."""
    unknown = [name for name in names if name not in PARAM_SPECS]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, PARAM_SPECS, n=1, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown parameter{'s' if len(hints) > 1 else ''}: {', '.join(hints)}; "
                         f"valid names: {', '.join(PARAM_SPECS)}")


PAPERMILL_HEADER = "# Parameters\n"
PARAMETERS_MARKER = "# Settings of a run:"  # the first line of the notebook's parameters cell


def assigned_values(source):
    """{name: value} for each plain assignment in a cell's source; a value that is not a literal as its text."""
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        values[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        values[target.id] = ast.unparse(node.value)
    return values


def injected_parameters(history, parameters_marker=PARAMETERS_MARKER):
    """The parameters papermill injected, {name: value}: the '# Parameters' cell after the parameters cell in `In`.

    A misspelt name there would silently define a new variable; check_parameter_names catches it.
    """
    for source in reversed(history[-10:]):
        if source.startswith(PAPERMILL_HEADER):
            return assigned_values(source)
        if parameters_marker in source:
            return {}
    return {}


def set_seed(seed):
    """Seed Python, numpy and torch so that a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def flush_denormal_floats():
    """Treat denormal floats as zero: fading LSTM gradients become denormal, which CPUs compute up to 10x slower."""
    for dtype in (np.float16, np.float32, np.float64):
        np.finfo(dtype)  # looked up (and cached) first: NumPy warns if it meets a CPU that flushes them
    return torch.set_flush_denormal(True)


def choose_device(name="auto"):
    """Return the torch device for 'auto', 'cpu' or 'cuda' ('cuda' without a GPU is an error)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r} is not one of 'auto', 'cpu', 'cuda'")
    return torch.device(name)


RUN_DIR_BEFORE_A_RUN = ("sentiment_lstm.ipynb", "edited_source.ipynb", "figures")  # papermill's, a sweep's, ours


def new_run_dir(run_dir="", runs_dir=RUNS_DIR):
    """Create and return the folder for this run; refuse one that holds a run, or files that no run put there."""
    if not run_dir:
        stamp = time.strftime("%Y-%m-%d_%H%M%S")
        run_dir = Path(runs_dir) / stamp
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = Path(runs_dir) / f"{stamp}_{suffix}"
    run_dir = Path(run_dir)
    # papermill may already have written the executed notebook here; a run is its results.
    if (run_dir / "metrics.json").exists() or (run_dir / "checkpoint").exists():
        raise FileExistsError(f"run folder {run_dir} already holds a run; choose another run_dir or leave it empty")
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"run_dir {run_dir} is a file, not a folder")
    others = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_DIR_BEFORE_A_RUN) if run_dir.exists() else []
    figures = run_dir / "figures"
    if figures.is_dir() and any(figures.iterdir()) or figures.exists() and not figures.is_dir():
        others.append("figures/")
    if others:
        raise FileExistsError(f"run_dir {run_dir} holds files that are not a run's ({', '.join(others[:5])}"
                              f"{', ...' if len(others) > 5 else ''}), which a run would overwrite; "
                              "choose an empty or new folder")
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    return run_dir


def shown_path(path):
    """A path as a run reports it: relative to the repository when inside it, so no machine's folders show."""
    path = Path(path).resolve()
    return path.relative_to(REPO_DIR).as_posix() if path.is_relative_to(REPO_DIR) else str(path)


# --------------------------------------------------------------------------- 1. the data
# The authors' archive, the same URL and checksum torchtext's IMDB loader uses.
IMDB_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
IMDB_FOLDERS = ("train/pos", "train/neg", "test/pos", "test/neg")

LABEL_NAMES = ("negative", "positive")


def md5sum(path, chunk_size=1 << 20, algorithm="md5"):
    """The hex digest of a file: MD5 (the IMDB archive's), or another hashlib algorithm."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def download(url, dest, md5=None, progress=True, timeout=60):
    """Download url to dest with a progress bar; verify md5; rename into place only when complete."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(f"could not download {url} ({err}). Without network access, download the archive "
                              "elsewhere and pass its path as the imdb_archive parameter or the IMDB_ARCHIVE "
                              "environment variable.") from err
    total = int(response.headers.get("Content-Length") or 0) or None
    try:
        with response, open(partial, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}",
            disable=not progress or ("ipykernel" in sys.modules and not interactive_frontend())
        ) as bar:
            try:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (http.client.HTTPException, TimeoutError, ConnectionError) as err:
                raise ConnectionError(f"download of {url} broke off ({err!r}); run again to start it anew") from err
        if total is not None and partial.stat().st_size != total:
            raise ConnectionError(f"download of {url} stopped after {partial.stat().st_size} of {total} bytes")
        if md5 is not None and (actual := md5sum(partial)) != md5:
            raise ValueError(f"checksum mismatch for {url}: expected MD5 {md5}, got {actual}; "
                             "the file was deleted, run again to download it anew")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)  # whatever went wrong, never leave a partial file that looks like the archive
    return dest


def _check_member(member, top):
    """Raise if a tar member could write outside the extraction folder or is not a plain file/folder."""
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or Path(name).is_absolute() or ".." in parts:
        raise ValueError(f"archive member {name!r} has an unsafe path (absolute or '..'); nothing was extracted")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"archive member {name!r} is a link or device, which is refused; nothing was extracted")
    if parts and parts[0] != top:
        raise ValueError(f"archive member {name!r} lies outside the {top}/ folder; nothing was extracted")


# The real aclImdb_v1.tar.gz holds 100,016 members and 138,643,348 bytes of files (measured, streaming
# with tarfile); an archive needing more than these is refused before anything is extracted.
IMDB_MAX_MEMBERS = 110_000
IMDB_MAX_BYTES = 160_000_000


def _archive_members(tar, archive, max_members, max_bytes):
    """The members of an open tar, read header by header; ValueError as soon as the budget is exceeded."""
    members, total = [], 0
    for member in tar:
        members.append(member)
        total += max(member.size, 0)
        if len(members) > max_members:
            raise ValueError(f"{archive} holds more than {max_members:,} members, more than the IMDB archive "
                             "(100,016); refused before anything was extracted")
        # tar.offset: how far into the uncompressed stream the headers reach (long pax headers included)
        if total > max_bytes or tar.offset > max_bytes + 2048 * max_members:
            raise ValueError(f"{archive} expands to more than {max_bytes:,} bytes, more than the IMDB archive "
                             "(138.6 MB); refused before anything was extracted")
    return members


def extract_imdb(archive, data_dir=DATA_DIR, top="aclImdb", md5=None, max_members=IMDB_MAX_MEMBERS,
                 max_bytes=IMDB_MAX_BYTES):
    """Extract the IMDB archive into data_dir/aclImdb, safely and atomically, with a `.complete` marker of its MD5.

    Only a gzip-compressed tar is read, within a budget of members and bytes a little above the real
    archive's; an earlier extraction is replaced only once the new one is complete.
    """
    archive, data_dir = Path(archive), Path(data_dir)
    target = data_dir / top
    if archive.is_dir():
        raise IsADirectoryError(f"IMDB archive {archive} is a folder, not a .tar.gz file")
    if not archive.is_file():
        raise FileNotFoundError(f"IMDB archive {archive} does not exist")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _archive_members(tar, archive, max_members, max_bytes)
            for member in members:
                _check_member(member, top)
            folders = {str(Path(m.name).parent) for m in members if m.isfile()}
            missing = [f"{top}/{folder}" for folder in IMDB_FOLDERS if f"{top}/{folder}" not in folders]
            if missing:
                raise ValueError(f"{archive} is not the IMDB archive: it lacks {', '.join(missing)}")
            data_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=data_dir, prefix=".extracting-"))
            try:
                tar.extractall(staging, members=members, filter="data")
                write_json(staging / top / ".complete", {"archive": archive.name, "md5": md5 or md5sum(archive)})
                # An interrupted extraction, or one from another archive, is replaced, but only by a complete one:
                # moved into the staging folder first (deleted with it), then the new one takes its place.
                replaced = staging / f"{top}.replaced"
                if target.exists() or target.is_symlink():
                    os.replace(target, replaced)
                try:
                    os.replace(staging / top, target)
                except BaseException:
                    if replaced.exists():
                        os.replace(replaced, target)  # the earlier one back where it was
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        # Other OSErrors (a full disk, say) keep their own message.
        raise ValueError(f"{archive} is truncated or not a valid tar.gz archive ({err})") from err
    return target


def extraction_origin(folder):
    """The {'archive', 'md5'} an aclImdb folder was extracted from: None if none completed, {} if unrecorded."""
    marker = Path(folder) / ".complete"
    if not marker.exists():
        return None
    try:
        origin = json.loads(marker.read_text(encoding="utf-8") or "null")
    except ValueError:
        return {}
    return origin if isinstance(origin, dict) else {}


def prepare_imdb(archive="", data_dir=DATA_DIR, url=IMDB_URL, md5=IMDB_MD5, log=print):
    """Return the extracted aclImdb folder: from a local archive if given, else downloaded once.

    An earlier extraction is reused only if it came from the same archive (same MD5), else replaced.
    """
    data_dir = Path(data_dir)
    target = data_dir / "aclImdb"
    origin = extraction_origin(target)
    if not archive:
        if origin is not None:
            return target
        downloaded = data_dir / "aclImdb_v1.tar.gz"
        if not downloaded.exists():
            download(url, downloaded, md5=md5)
        return extract_imdb(downloaded, data_dir, md5=md5)
    if not Path(archive).is_file():
        raise FileNotFoundError(f"IMDB archive {archive} does not exist")
    # A local copy may be repacked, so the authors' checksum applies only to our own download.
    archive_md5 = md5sum(archive)
    if origin is not None and origin.get("md5") == archive_md5:
        return target
    if origin is not None:
        log(f"{target} was extracted from {origin.get('archive', 'an unknown archive')}, not from {archive}: "
            f"extracting {archive} in its place")
    return extract_imdb(archive, data_dir, md5=archive_md5)


def _read_reviews(folder):
    """The texts of folder/*.txt, in file-name order."""
    return [path.read_text(encoding="utf-8") for path in sorted(Path(folder).glob("*.txt"), key=lambda p: p.name)]


def read_unlabelled(root):
    """The unlabelled reviews of train/unsup (50,000 in the full data), in a fixed order."""
    texts = _read_reviews(Path(root, "train", "unsup"))
    if not texts:
        raise FileNotFoundError(f"no unlabelled reviews found in {Path(root, 'train', 'unsup')}; set "
                                "pretrain_embeddings=False to train without them")
    return texts


def read_imdb(root, split):
    """Read one split ('train' or 'test') as (texts, labels) with 1 = positive, in a fixed order."""
    texts, labels = [], []
    for label, folder in ((0, "neg"), (1, "pos")):
        found = _read_reviews(Path(root, split, folder))
        if not found:
            raise FileNotFoundError(f"no reviews found in {Path(root, split, folder)}")
        texts += found
        labels += [label] * len(found)
    return texts, labels


class Table:
    """A small table: HTML in Jupyter, aligned text elsewhere; floats rounded to `digits`."""

    def __init__(self, rows, columns, digits=4):
        self.rows, self.columns, self.digits = [list(r) for r in rows], list(columns), digits

    @classmethod
    def from_dict(cls, values, columns=("", "value"), digits=4):
        return cls(list(values.items()), columns, digits)

    def _cell(self, value):
        if isinstance(value, float):
            return f"{value:.{self.digits}f}"
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

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


# --------------------------------------------------------------------------- 2. preprocessing
_BREAK = re.compile(r"<br\s*/?>", flags=re.IGNORECASE)
_TAG = re.compile(r"<[^>]{0,200}>")
# torchtext 0.18's basic_english tokenizer (torchtext/data/utils.py, _basic_english_normalize):
# lower(), these substitutions in this order, then split() on whitespace.
_BASIC_ENGLISH_RULES = [(re.compile(pattern), replacement) for pattern, replacement in (
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "), (r"\(", " ( "), (r"\)", " ) "),
    (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "), (r"\:", " "), (r"\s+", " "))]
# Bump whenever clean_text or tokenize change what they return: cached token lists then go unused.
TOKENIZER_VERSION = 1


def clean_text(text):
    """Remove HTML line breaks and tags and decode entities such as &amp;."""
    return html.unescape(_TAG.sub(" ", _BREAK.sub(" ", text)))


def _basic_english_normalize(line):
    """torchtext's basic_english tokenizer, without torchtext: the same tokens for any text."""
    line = line.lower()
    for pattern, replacement in _BASIC_ENGLISH_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


_basic_english = get_tokenizer("basic_english") if USE_TORCHTEXT else _basic_english_normalize


def tokenize(text):
    """A review cleaned and split into lower-case tokens by basic_english, interned (one "the" for all reviews)."""
    return [sys.intern(token) for token in _basic_english(clean_text(text))]


def tokenize_all(texts, cache_dir=CACHE_DIR):
    """[tokenize(t) for t in texts], cached in cache_dir (None: no cache) under a hash of the texts and tokenizer.

    A cache file is plain text, a review a line; one unreadable or with the wrong number of lines is recomputed.
    """
    texts = list(texts)
    if cache_dir is None:
        return [tokenize(text) for text in texts]
    digest = hashlib.sha256(f"tokens {TOKENIZER_VERSION} torchtext={USE_TORCHTEXT} {len(texts)}".encode())
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little") + data)  # lengths too: ["ab"] and ["a", "b"] differ
    path = Path(cache_dir) / f"tokens-{digest.hexdigest()[:32]}.txt"
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
        if len(lines) == len(texts) + 1 and lines[-1] == "":
            return [list(map(sys.intern, line.split())) for line in lines[:-1]]
    except (OSError, UnicodeDecodeError):
        pass
    token_lists = [tokenize(text) for text in texts]
    # Each token must survive " ".join then split(): no whitespace in it, none empty. Else no cache.
    if all(token.split() == [token] for token in set().union(*token_lists)):
        write_atomic(path, "".join(" ".join(tokens) + "\n" for tokens in token_lists))
    return token_lists


PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"


class _Vocab:
    """The part of torchtext's Vocab that the project uses, in plain Python, with the same results and errors."""

    def __init__(self, itos):
        self._itos = list(itos)
        self._stoi = {token: index for index, token in enumerate(self._itos)}
        self._default = None

    def __len__(self):
        return len(self._itos)

    def __contains__(self, token):
        return token in self._stoi

    def __getitem__(self, token):
        index = self._stoi.get(token, self._default)
        if index is None:
            raise RuntimeError(f"Token {token} not found and default index is not set")
        return index

    def __call__(self, tokens):
        return self.lookup_indices(tokens)

    def set_default_index(self, index):
        self._default = index

    def get_default_index(self):
        return self._default

    def lookup_indices(self, tokens):
        if self._default is None:
            return [self[token] for token in tokens]
        get, default = self._stoi.get, self._default
        return [get(token, default) for token in tokens]

    def lookup_token(self, index):
        if not 0 <= index < len(self._itos):
            raise RuntimeError(f"Specified index {index} is out of bounds of the size of itos dictionary: "
                               f"{len(self._itos)}.")
        return self._itos[index]

    def lookup_tokens(self, indices):
        return [self.lookup_token(index) for index in indices]

    def get_itos(self):
        return list(self._itos)

    def get_stoi(self):
        return dict(self._stoi)

    def __repr__(self):
        return f"_Vocab({len(self)} tokens, default index {self._default})"


def _build_vocab_from_iterator(iterator, min_freq=1, specials=None, max_tokens=None):
    """torchtext 0.18's build_vocab_from_iterator (special_first=True), step for step, as a _Vocab.

    By descending count, ties in code-point order; cut to max_tokens before specials and min_freq, as there.
    """
    counter = collections.Counter()
    for tokens in iterator:
        counter.update(tokens)
    specials = list(specials or [])
    ordered = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    if max_tokens is not None:
        if len(specials) >= max_tokens:
            raise AssertionError("len(specials) >= max_tokens, so the vocab will be entirely special tokens.")
        ordered = ordered[: max_tokens - len(specials)]
    unique_specials = set(specials)
    return _Vocab(specials + [token for token, count in ordered if count >= min_freq and token not in unique_specials])


def build_vocab(token_lists, min_freq=1, max_size=None):
    """A vocabulary of the most frequent tokens, <pad> = 0 and <unk> = 1 the default (torchtext's, or a _Vocab)."""
    specials = [PAD_TOKEN, UNK_TOKEN]
    if USE_TORCHTEXT:
        vocab = build_vocab_from_iterator(token_lists, min_freq=min_freq, specials=specials, special_first=True,
                                          max_tokens=max_size)
    else:
        vocab = _build_vocab_from_iterator(token_lists, min_freq=min_freq, specials=specials, max_tokens=max_size)
    vocab.set_default_index(vocab[UNK_TOKEN])
    return_freed_memory()  # the counts of every token, freed
    return vocab


def vocab_from_tokens(itos):
    """Rebuild a vocabulary from its list of tokens (index order), as saved in vocab.json."""
    if len(itos) < 2 or itos[0] != PAD_TOKEN or itos[1] != UNK_TOKEN:
        raise ValueError(f"a vocabulary must start with {PAD_TOKEN!r}, {UNK_TOKEN!r}; got {itos[:2]!r}")
    if len(set(itos)) != len(itos):
        raise ValueError("a vocabulary must not hold a token twice")
    if USE_TORCHTEXT:
        vocab = vocab_from_ordered_dict(collections.OrderedDict((token, 1) for token in itos), min_freq=1)
    else:
        vocab = _Vocab(itos)
    vocab.set_default_index(1)
    return vocab


def numericalize(tokens, vocab, max_length):
    """Token ids of the first max_length tokens as an int32 array (4 bytes an id; a Python int takes 36)."""
    return np.array(vocab.lookup_indices(tokens[:max_length]), dtype=np.int32)


def stratified_split(labels, valid_fraction, seed):
    """Indices (train, valid) with the same label balance in both, reproducible from seed."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train_idx, valid_idx = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_valid = int(round(len(idx) * valid_fraction))
        valid_idx.extend(idx[:n_valid].tolist())
        train_idx.extend(idx[n_valid:].tolist())
    return sorted(train_idx), sorted(valid_idx)


def stratified_subset(indices, labels, size, seed, name="train_size"):
    """Exactly `size` of the given indices, reproducible from seed, each label's count within one of its share."""
    indices = np.asarray(indices)
    if size < 0 or size > len(indices):
        raise ValueError(f"{name}={size} must be between 0 and the {len(indices):,} reviews available")
    subset_labels = np.asarray(labels)[indices]
    rng = np.random.default_rng([seed, size])
    classes = np.unique(subset_labels)
    shares = np.array([size * np.sum(subset_labels == label) / len(indices) for label in classes])
    counts = np.floor(shares).astype(int)
    # Shares rounded down, then one more to the largest remainders (ties by label order: seeded only).
    for i in np.argsort(-(shares - counts), kind="stable")[: size - counts.sum()]:
        counts[i] += 1
    chosen = []
    for label, n in zip(classes, counts, strict=True):
        chosen.extend(rng.choice(indices[subset_labels == label], size=n, replace=False).tolist())
    return sorted(chosen)


def pad_batch(sequences, pad_index=0):
    """Right-pad id lists or arrays into a [batch, max_len] tensor; returns (tokens, lengths)."""
    lengths = torch.tensor([max(len(s), 1) for s in sequences], dtype=torch.long)
    tokens = torch.full((len(sequences), int(lengths.max())), pad_index, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = torch.as_tensor(seq)
    return tokens, lengths


class BucketBatches:
    """Batches of reviews of similar length (sorted within shuffled pools of batches), so little is padding.

    Unshuffled, batches follow length order. The last, smaller batch is kept.
    """

    def __init__(self, sequences, labels, batch_size, shuffle=False, seed=0, pool_batches=50, pad_index=0):
        if len(sequences) != len(labels):
            raise ValueError(f"{len(sequences)} sequences but {len(labels)} labels")
        self.sequences, self.labels = sequences, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.pool_size, self.pad_index = batch_size * pool_batches, pad_index
        self.epoch = 0

    def __len__(self):
        return math.ceil(len(self.sequences) / self.batch_size)

    def padding_fraction(self):
        """The share of token slots in this epoch's batches that are padding."""
        lengths = np.array([max(len(s), 1) for s in self.sequences])
        padded = sum(len(idx) * lengths[idx].max() for idx in self.batch_indices())
        return 1 - lengths.sum() / padded

    def batch_indices(self):
        """The example indices of each batch, for this epoch."""
        lengths = np.array([len(s) for s in self.sequences])
        if not self.shuffle:
            order = np.argsort(lengths, kind="stable")
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(lengths))
        batches = []
        for start in range(0, len(order), self.pool_size):
            pool = order[start : start + self.pool_size]
            pool = pool[np.argsort(lengths[pool], kind="stable")]
            batches.extend(pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        for idx in self.batch_indices():
            tokens, lengths = pad_batch([self.sequences[i] for i in idx], self.pad_index)
            yield tokens, lengths, torch.tensor([self.labels[i] for i in idx], dtype=torch.float32), idx
        self.epoch += 1


def cooccurrence_matrix(id_lists, vocab_size, window=5, ignore=(0, 1), n_chunks=8):
    """Symmetric sparse [vocab_size, vocab_size] counts of token pairs within `window`, d tokens apart counting 1/d.

    Skips the `ignore` ids, never pairs across reviews; counted in n_chunks parts to hold fewer pairs at once.
    """
    if window < 1:
        raise ValueError(f"window={window!r} must be an integer >= 1")
    if n_chunks < 1:
        raise ValueError(f"n_chunks={n_chunks!r} must be an integer >= 1")
    id_arrays = [np.asarray(ids) for ids in id_lists]
    id_arrays = [ids if ids.dtype.kind in "iu" else ids.astype(np.int64) for ids in id_arrays]  # [] is float
    lowest = min((int(ids.min()) for ids in id_arrays if len(ids)), default=0)
    highest = max((int(ids.max()) for ids in id_arrays if len(ids)), default=0)
    if lowest < 0 or highest >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}); got {lowest}..{highest}")
    # One int32 array of all reviews with `window` gaps (-1) between them: a pair that would cross
    # from one review into the next always includes a gap. Skipped tokens become -1 as well.
    flat = np.full(sum(len(ids) for ids in id_arrays) + window * len(id_arrays), -1, dtype=np.int32)
    start = 0
    for ids in id_arrays:
        flat[start : start + len(ids)] = ids
        start += len(ids) + window
    del id_arrays
    flat[np.isin(flat, list(ignore))] = -1
    # Weights are kept as integers (count * lcm / distance), exact in any order of summation.
    lcm = math.lcm(*range(1, window + 1))
    chunk_of_token = np.where(flat >= 0, flat % n_chunks, -1).astype(np.int8 if n_chunks < 128 else np.int64)
    chunk_lows, chunk_highs, chunk_weights = [], [], []
    for chunk in range(n_chunks):
        codes, weights = [], []
        for distance in range(1, window + 1):
            left, right = flat[:-distance], flat[distance:]
            # The pairs of this chunk: both tokens kept, and the smaller id in the chunk.
            left_first = left <= right
            in_chunk = np.where(left_first, chunk_of_token[:-distance], chunk_of_token[distance:]) == chunk
            in_chunk &= (left >= 0) & (right >= 0)
            left, right = left[in_chunk], right[in_chunk]
            # One int64 code per unordered pair (low, high), so that counting pairs is counting codes.
            pair_codes = np.minimum(left, right).astype(np.int64) * vocab_size + np.maximum(left, right)
            pair_codes, pair_counts = np.unique(pair_codes, return_counts=True)
            codes.append(pair_codes)
            weights.append(pair_counts * (lcm // distance))
            del left, right, left_first, in_chunk
        pair_codes, where = np.unique(np.concatenate(codes), return_inverse=True)
        chunk_lows.append((pair_codes // vocab_size).astype(np.int32))
        chunk_highs.append((pair_codes % vocab_size).astype(np.int32))
        chunk_weights.append(np.bincount(where, weights=np.concatenate(weights)) / lcm)
        del codes, weights, pair_codes, where
        return_freed_memory()  # the next part's arrays then start from what this one's left
    del flat, chunk_of_token
    low, high, weights = (np.concatenate(parts) for parts in (chunk_lows, chunk_highs, chunk_weights))
    del chunk_lows, chunk_highs, chunk_weights
    # Both orders: a word's context on its left is as telling as on its right. A word next to
    # itself ("very very") is its own context on both sides, so it counts twice.
    # Filled in place, not concatenated: the pairs can be tens of millions, and copies would add up.
    apart = low != high
    n_pairs, n_apart = len(low), int(apart.sum())
    rows, cols = np.empty(n_pairs + n_apart, dtype=np.int32), np.empty(n_pairs + n_apart, dtype=np.int32)
    rows[:n_pairs], rows[n_pairs:] = low, high[apart]
    cols[:n_pairs], cols[n_pairs:] = high, low[apart]
    del low, high
    values = np.empty(n_pairs + n_apart, dtype=weights.dtype)
    values[:n_pairs], values[n_pairs:] = weights, weights[apart]
    values[:n_pairs][~apart] *= 2
    del weights, apart
    return _csr_matrix(rows, cols, values, vocab_size)


def _csr_matrix(rows, cols, values, size):
    """A [size, size] sparse CSR tensor (int32 indices) from unsorted, distinct (row, col) entries.

    scipy's conversion sorts by counting (12 bytes an entry beside the input), not by a full argsort (20).
    """
    from scipy import sparse  # scikit-learn's dependency; imported here, where it is needed

    matrix = sparse.coo_matrix((values, (rows, cols)), shape=(size, size)).tocsr()  # sorted; entries are distinct
    crow, cols, values = (matrix.indptr.astype(np.int32, copy=False), matrix.indices.astype(np.int32, copy=False),
                          matrix.data)
    del matrix
    return _csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols), torch.from_numpy(values), (size, size))


def _csr_tensor(crow, cols, values, shape):
    """torch.sparse_csr_tensor, without its warning that CSR support is in beta (it works for what we use)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)  # built sorted above


def _csr_rows(matrix):
    """The row index of every stored entry of a CSR tensor."""
    crow = matrix.crow_indices()
    return torch.repeat_interleave(torch.arange(len(crow) - 1, dtype=crow.dtype), crow.diff())


def ppmi(counts, context_power=0.75, part_size=1 << 22):
    """Positive PMI, max(0, log p(w, c) / (p(w) p(c))), of sparse co-occurrence counts, as float32 CSR.

    Context counts raised to `context_power` < 1 keep rare contexts from huge scores (Levy et al., 2015).
    Computed part_size entries at a time: the matrix can be large, and float64 copies of it would double it.
    """
    if counts.layout != torch.sparse_csr:
        counts = counts.to_sparse_csr()
    rows, cols, values = _csr_rows(counts), counts.col_indices(), counts.values().double()
    row_totals = torch.zeros(counts.size(0), dtype=torch.float64).index_add_(0, rows, values)
    context = row_totals ** context_power
    total_context = context.sum()
    kept_per_row = torch.zeros(counts.size(0), dtype=torch.int64)
    kept_cols, kept_values = [], []
    for start in range(0, len(values), part_size):
        part = slice(start, start + part_size)
        # pmi = log(value * sum(context) / (row_total[row] * context[col]))
        chance = row_totals[rows[part]]
        chance.mul_(context[cols[part]])
        pmi = values[part] * total_context
        pmi.div_(chance).log_()
        keep = pmi > 0
        # Keeping some entries of each row leaves them in CSR order; only the row starts change.
        kept_per_row += torch.bincount(rows[part][keep], minlength=counts.size(0))
        kept_cols.append(cols[part][keep])
        kept_values.append(pmi[keep].float())
        del chance, pmi, keep
    del rows
    crow = torch.zeros(counts.size(0) + 1, dtype=cols.dtype)
    crow[1:] = kept_per_row.cumsum(0)
    if not kept_cols:  # no entries at all
        kept_cols, kept_values = [cols], [values.float()]
    return _csr_tensor(crow, torch.cat(kept_cols), torch.cat(kept_values), counts.shape)


def svd_word_vectors(matrix, dim, seed=0, n_iter=4):
    """Word vectors U * sqrt(S) by torch.svd_lowrank's randomised SVD, with one transposed copy, not several.

    Scaled to nn.Embedding's standard deviation of 1; all-zero rows stay zero; torch's global RNG is untouched.
    """
    if not 1 <= dim <= min(matrix.shape):
        raise ValueError(f"dim={dim!r} must lie between 1 and {min(matrix.shape)}")
    if matrix.layout != torch.sparse_csr:
        matrix = matrix.to_sparse_csr()
    if matrix.size(0) != matrix.size(1):
        raise ValueError(f"the matrix must be square; got {tuple(matrix.shape)}")
    transposed = _csr_matrix(matrix.col_indices().numpy(), _csr_rows(matrix).numpy(), matrix.values().numpy(),
                             matrix.size(0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        basis = torch.randn(matrix.size(1), dim, dtype=matrix.dtype)
    basis = torch.linalg.qr(transposed @ basis).Q
    for _ in range(n_iter):
        basis = torch.linalg.qr(matrix @ basis).Q
        basis = torch.linalg.qr(transposed @ basis).Q
    u, s, _ = torch.linalg.svd(matrix @ basis, full_matrices=False)
    vectors = u * s.sqrt()
    # The randomised SVD leaves rounding noise in rows with no counts; they know nothing, so zero them.
    vectors[matrix.crow_indices().diff() == 0] = 0.0
    # An SVD's signs are arbitrary; fix them so that equal inputs give equal vectors.
    vectors = vectors * torch.where(vectors.sum(dim=0) < 0, -1.0, 1.0)
    return vectors / vectors.std().clamp_min(1e-12)


# Bump whenever the counting, ppmi or svd_word_vectors change what they return: cached vectors then go unused.
WORD_VECTORS_VERSION = 1


def pretrain_word_vectors(token_lists, vocab, dim, window=5, context_power=0.75, seed=0, cache_dir=CACHE_DIR):
    """[len(vocab), dim] float32 word vectors from co-occurrences in token_lists: counts, PPMI, then an SVD.

    Cached in cache_dir (None: no cache) under a hash of the texts' tokens, the vocabulary and every setting.
    """
    token_lists = list(token_lists)  # read twice below (a generator would be empty the second time)
    path = None
    if cache_dir is not None:
        # The library versions too: another torch may round the SVD otherwise, and a run must match a fresh one.
        settings = [WORD_VECTORS_VERSION, torch.__version__, np.__version__, int(dim), int(window),
                    float(context_power), int(seed), vocab.get_default_index()]
        digest = hashlib.sha256(json.dumps(["word vectors", settings, vocab.get_itos()]).encode())
        # The tokens, not their ids: hashing them is faster than looking 13 million up, which a cached run skips.
        # Each list's length, and a separator no token holds (whitespace, which tokenize splits on).
        digest.update(np.array([len(tokens) for tokens in token_lists], dtype=np.int64).tobytes())
        for tokens in token_lists:
            digest.update("\x1f".join(tokens).encode("utf-8", "surrogatepass") + b"\x1e")
        path = Path(cache_dir) / f"word-vectors-{digest.hexdigest()[:32]}.npy"
        try:
            vectors = np.load(path, allow_pickle=False)
            if vectors.shape == (len(vocab), dim) and vectors.dtype == np.float32:
                return torch.from_numpy(vectors)
        except (OSError, ValueError, EOFError):
            pass
    id_arrays = [np.array(vocab.lookup_indices(tokens), dtype=np.int32) for tokens in token_lists]
    counts = cooccurrence_matrix(id_arrays, len(vocab), window, (vocab[PAD_TOKEN], vocab[UNK_TOKEN]))
    del id_arrays
    if counts.values().numel() == 0:
        raise ValueError("no two vocabulary words occur near each other in the texts; nothing to learn from")
    weights = ppmi(counts, context_power)
    del counts
    vectors = svd_word_vectors(weights, dim, seed)
    del weights
    return_freed_memory()
    if path is not None:
        buffer = io.BytesIO()
        np.save(buffer, vectors.numpy(), allow_pickle=False)
        write_atomic(path, buffer.getvalue())
    return vectors


def nearest_words(vectors, vocab, word, k=8):
    """The k vocabulary words whose vectors are most similar (cosine) to word's."""
    index = vocab[word]
    if index == vocab[UNK_TOKEN]:
        raise KeyError(f"{word!r} is not in the vocabulary")
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = unit @ unit[index]
    similarity[index] = -2  # not itself
    return vocab.lookup_tokens(similarity.topk(k).indices.tolist())


def nb_log_count_ratios(features, labels, alpha=1.0):
    """Naive-Bayes log-count ratio of each feature, alpha-smoothed, positive for positive reviews (Wang & Manning)."""
    labels = np.asarray(labels)
    if set(np.unique(labels).tolist()) != {0, 1}:
        raise ValueError("the labels must hold both classes, 0 and 1")
    p = alpha + np.asarray(features[labels == 1].sum(axis=0), dtype=np.float64).ravel()
    q = alpha + np.asarray(features[labels == 0].sum(axis=0), dtype=np.float64).ravel()
    return np.log((p / p.sum()) / (q / q.sum())).astype(np.float32)


def _same(tokens):
    return tokens


def _ngram_vectorizer(ngram_range, vocabulary=None):
    """Binary word n-gram counts of token lists, with a fixed vocabulary of n-grams if given."""
    from sklearn.feature_extraction.text import CountVectorizer

    # The token lists are ours already (helpers.tokenize): no second tokenizer, no lower-casing.
    return CountVectorizer(tokenizer=_same, preprocessor=_same, token_pattern=None, lowercase=False,
                           ngram_range=tuple(ngram_range), binary=True, dtype=np.float32, vocabulary=vocabulary)


class NBNgramFeatures:
    """Binary word n-gram features scaled by their naive-Bayes log-count ratios (NBSVM), learnt on training only."""

    def __init__(self, ngram_range=(1, 2), alpha=1.0):
        self.ngram_range, self.alpha = tuple(ngram_range), alpha

    def fit(self, token_lists, labels):
        """Learn the vocabulary of n-grams and their ratios; returns self."""
        self.vectorizer = _ngram_vectorizer(self.ngram_range)
        self.ratios = nb_log_count_ratios(self.vectorizer.fit_transform(token_lists), labels, self.alpha)
        return self

    def transform(self, token_lists):
        """A sparse matrix: row i holds the ratios of the n-grams that review i contains, 0 elsewhere."""
        if not hasattr(self, "ratios"):
            raise RuntimeError("call fit(training token lists, labels) before transform")
        return self.vectorizer.transform(token_lists).multiply(self.ratios).tocsr()

    def feature_names(self):
        """The n-grams, in column order."""
        return self.vectorizer.get_feature_names_out()


class NgramModel:
    """The fitted n-gram baseline as one scorer: logit = bias + sum over the review's distinct known n-grams of
    ratio x weight. It also says which share of a review's n-grams it has seen in training (its coverage)."""

    def __init__(self, ngrams, ratios, weights, bias, max_n, c=None):
        vocabulary = ngrams if isinstance(ngrams, dict) else {ngram: i for i, ngram in enumerate(ngrams)}
        self.ratios = np.asarray(ratios, dtype=np.float32)
        self.weights = np.asarray(weights, dtype=np.float64)  # the regression's own precision
        if not (len(vocabulary) == self.ratios.shape[0] == self.weights.shape[0]):
            raise ValueError(f"{len(vocabulary)} n-grams, {self.ratios.shape[0]} ratios and "
                             f"{self.weights.shape[0]} weights: one of each per n-gram")
        self.bias, self.max_n, self.c = float(bias), int(max_n), c  # c: the regression's C, where known
        self.vectorizer = _ngram_vectorizer((1, self.max_n), vocabulary)
        # One number per n-gram: what its presence adds to the logit (in float64, as the regression computes it).
        self.effect = self.ratios.astype(np.float64) * self.weights

    @classmethod
    def from_fitted(cls, features, regression):
        """From an NBNgramFeatures and the LogisticRegression fitted on its output."""
        return cls(features.vectorizer.vocabulary_, features.ratios, regression.coef_[0], regression.intercept_[0],
                   features.ngram_range[1], c=float(regression.C))

    def ngrams(self):
        """The n-grams, in column order."""
        return self.vectorizer.get_feature_names_out().tolist()

    def logits(self, token_lists):
        """The n-gram logit of each token list."""
        return self.vectorizer.transform(token_lists) @ self.effect + self.bias

    def coverage(self, token_lists):
        """The share of each token list's distinct n-grams (1- to max_n-grams) that training saw."""
        known = np.diff(self.vectorizer.transform(token_lists).indptr)
        distinct = np.array([len({" ".join(tokens[i:i + n]) for n in range(1, self.max_n + 1)
                                  for i in range(len(tokens) - n + 1)}) for tokens in token_lists])
        return known / np.maximum(distinct, 1)


# Beside the LSTM's three files, a checkpoint holds the n-gram model and the combination (all optional, so
# that a checkpoint made before them still loads, as the LSTM alone):
NGRAMS_FILE = "ngrams.txt"  # the n-grams as text, one a line, in column order
NGRAM_WEIGHTS_FILE = "ngram_weights.safetensors"  # their NB ratios (float32) and the regression's weights (float64)
NGRAM_CONFIG_FILE = "ngram_model.json"  # {"format", "n_ngrams", "max_n", "c", "bias"}
MAX_NGRAMS = 10_000_000  # the full data has 1.3 million uni- and bigrams
MAX_JSON_BYTES = 1 << 20


def _json_object(folder, name, max_bytes=MAX_JSON_BYTES):
    """The JSON object in folder/name (a regular file inside the folder), or an error naming the file."""
    path = Path(folder) / name
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"checkpoint {folder} lacks {name}")
    value = read_json_file(path, max_bytes, inside=folder)
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, not a {type(value).__name__}")
    return value


def _field(path, value, name, kind, check=None, allowed=""):
    """value[name], checked for its type and range, or an error naming the file and the field."""
    if name not in value:
        raise ValueError(f"{path}: field {name!r} is missing")
    field = value[name]
    if kind is float and isinstance(field, int) and not isinstance(field, bool):
        field = float(field)
    if not isinstance(field, kind) or isinstance(field, bool) or (check is not None and not check(field)):
        raise ValueError(f"{path}: field {name!r} = {str(field)[:40]!r} is not valid: expected {allowed}")
    return field


def _finite(value):
    return math.isfinite(value)


def has_ngram_model(folder):
    """Whether a checkpoint folder holds an n-gram model (checkpoints made before this version do not)."""
    return (Path(folder) / NGRAM_CONFIG_FILE).exists()


def save_ngram_model(folder, model, c=None):
    """Write the n-gram model: its n-grams as text, ratios and weights as safetensors, the rest as JSON."""
    from safetensors.numpy import save as safetensors_bytes

    folder = Path(folder)
    ngrams = model.ngrams()
    if any(not ngram or "\n" in ngram for ngram in ngrams):
        raise ValueError("an n-gram is empty or holds a newline, so it cannot be saved one a line")
    write_atomic(folder / NGRAMS_FILE, "".join(ngram + "\n" for ngram in ngrams))
    write_atomic(folder / NGRAM_WEIGHTS_FILE, safetensors_bytes({"ratios": model.ratios, "weights": model.weights}))
    write_json(folder / NGRAM_CONFIG_FILE, {"format": 1, "n_ngrams": len(ngrams), "max_n": model.max_n,
                                            "c": model.c if c is None else c, "bias": model.bias})


def load_ngram_model(folder):
    """The n-gram model of a checkpoint, every file checked (kind, size, fields, shapes) before it is used."""

    folder = Path(folder)
    path = folder / NGRAM_CONFIG_FILE
    config = _json_object(folder, NGRAM_CONFIG_FILE)
    if (extra := sorted(set(config) - {"format", "n_ngrams", "max_n", "c", "bias"})):
        raise ValueError(f"{path}: unknown fields {extra}")
    _field(path, config, "format", int, lambda v: v == 1, "1")
    n = _field(path, config, "n_ngrams", int, lambda v: 1 <= v <= MAX_NGRAMS, f"an integer from 1 to {MAX_NGRAMS:,}")
    max_n = _field(path, config, "max_n", int, lambda v: 1 <= v <= 3, "1, 2 or 3")
    bias = _field(path, config, "bias", float, _finite, "a finite number")
    c = config.get("c")
    if c is not None:
        c = _field(path, config, "c", float, lambda v: _finite(v) and v > 0, "a number > 0, or null")
    weights_path = folder / NGRAM_WEIGHTS_FILE
    if not weights_path.exists() and not weights_path.is_symlink():
        raise FileNotFoundError(f"checkpoint {folder} lacks {NGRAM_WEIGHTS_FILE}")
    tensors = read_safetensors(weights_path, {"ratios": ("F32", (n,)), "weights": ("F64", (n,))},
                               max_bytes=12 * n + (1 << 16), inside=folder, against=f"n_ngrams = {n} in {path.name}",
                               implied_by="which")
    ratios, weights = tensors["ratios"].numpy(), tensors["weights"].numpy()
    if not (np.isfinite(ratios).all() and np.isfinite(weights).all()):
        raise ValueError(f"{weights_path}: the ratios or weights hold a value that is not finite")
    ngrams_path = folder / NGRAMS_FILE
    if not ngrams_path.exists() and not ngrams_path.is_symlink():
        raise FileNotFoundError(f"checkpoint {folder} lacks {NGRAMS_FILE}")
    data = read_regular_file(ngrams_path, 64 * n * max_n, inside=folder)
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise ValueError(f"{ngrams_path} is not UTF-8 text (byte {err.start})") from err
    if lines[-1] != "" or len(lines) - 1 != n:
        raise ValueError(f"{ngrams_path} holds {len(lines) - (lines[-1] == '')} lines, not the {n} n-grams "
                         f"{NGRAM_CONFIG_FILE} names, each ended by a newline")
    ngrams = lines[:-1]
    index = {}
    for number, ngram in enumerate(ngrams, start=1):
        if not 1 <= len(ngram.split(" ")) <= max_n or ngram != " ".join(ngram.split()):
            raise ValueError(f"{ngrams_path}, line {number}: {ngram[:60]!r} is not 1 to {max_n} tokens, "
                             "single spaces between them")
        if index.setdefault(ngram, number - 1) != number - 1:
            raise ValueError(f"{ngrams_path}, line {number}: {ngram[:60]!r} repeats line {index[ngram] + 1}")
    return NgramModel(index, ratios, weights, bias, max_n, c=c)


def _save(fig, path):
    """Save fig under path (at 120 dpi) if a path is given; return it, for the notebook to show."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def plot_lengths(token_counts, max_length, path=None, also_mark=(400,)):
    """Histogram of review lengths in tokens up to the 99.5th percentile, with max_length and `also_mark` marked."""
    import matplotlib.pyplot as plt

    token_counts = np.asarray(token_counts)
    marks = sorted({max_length, *also_mark})
    right = max(float(np.quantile(token_counts, 0.995)), 1.1 * max(marks))
    beyond = int(np.sum(token_counts > right))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.hist(token_counts[token_counts <= right], bins=60, color="tab:blue")
    for mark in marks:
        longer = np.mean(token_counts > mark)
        style = {"color": "tab:red", "ls": "--"} if mark == max_length else {"color": "tab:grey", "ls": ":"}
        name = f"max_length = {mark}" if mark == max_length else f"{mark} tokens"
        ax.axvline(mark, label=f"{name}: {longer:.1%} of reviews are longer", **style)
    ax.set(xlabel="tokens per review", ylabel="reviews", xlim=(0, right),
           title="Review lengths (training split)" + (f"; {beyond:,} longer reviews not shown" if beyond else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- 3. the model
def reverse_padded(x, lengths):
    """Reverse each sequence's first `length` steps of x [batch, seq_len, features], leaving padding at the end."""
    positions = torch.arange(x.size(1), device=x.device).unsqueeze(0)  # [1, seq_len]
    lengths = lengths.to(x.device).unsqueeze(1)  # [batch, 1]
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)  # [batch, seq_len]
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def padding_mask(lengths, seq_len):
    """A [batch, seq_len] bool mask, True at real tokens."""
    return torch.arange(seq_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def pool_over_time(outputs, lengths, how):
    """Summarise [batch, seq_len, features] outputs per review, ignoring padding; see POOLINGS."""
    if how == "max+mean":
        return torch.cat([pool_over_time(outputs, lengths, "max"), pool_over_time(outputs, lengths, "mean")], dim=1)
    lengths = lengths.to(outputs.device)
    if how == "last":
        index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, outputs.size(2))
        return outputs.gather(1, index).squeeze(1)
    mask = padding_mask(lengths, outputs.size(1)).unsqueeze(-1)  # [batch, seq_len, 1]
    if how == "max":
        return outputs.masked_fill(~mask, float("-inf")).max(dim=1).values
    if how == "mean":
        return (outputs * mask).sum(dim=1) / lengths.unsqueeze(1).to(outputs.dtype)
    raise ValueError(f"pooling={how!r} is not one of {', '.join(map(repr, POOLINGS))}")


def count_parameters(model):
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def plot_padding_demo(tokens, lengths, reversed_tokens, mask, path=None):
    """A toy padded batch, the same batch reversed within each length, and the pooling mask, as three grids."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    panels = (("padded batch (0 = <pad>)", tokens), ("reversed within each length", reversed_tokens),
              ("pooling mask (1 = real token)", mask.long()))
    is_pad = ~mask.numpy()
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.3))
    for ax, (title, grid) in zip(axes, panels, strict=True):
        ax.imshow(is_pad, cmap=ListedColormap(["#cfe3f7", "#eeeeee"]), vmin=0, vmax=1)
        for (row, col), value in np.ndenumerate(grid.numpy()):
            ax.text(col, row, str(value), ha="center", va="center", fontsize=10,
                    color="grey" if is_pad[row, col] else "black")
        ax.set(title=title, xlabel="position", xticks=range(grid.shape[1]), yticks=range(grid.shape[0]),
               yticklabels=[f"review {i} (length {n})" for i, n in enumerate(lengths.tolist())] if ax is axes[0]
               else [])
        ax.title.set_fontsize(10)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- 4. training
# At most this many token slots (reviews x padded length) go through the LSTM with gradients at once:
# 64 reviews of 400 tokens. Training and explanations cut longer batches into parts (batch_parts).
MAX_BATCH_TOKENS = 25_600


def batch_parts(n_reviews, seq_len, max_tokens=MAX_BATCH_TOKENS):
    """Slices cutting a batch of n_reviews padded to seq_len into near-equal parts of at most max_tokens tokens.

    Losses weighted by each part's share give the whole batch's gradients, holding one part's activations.
    """
    if n_reviews < 1 or seq_len < 1 or max_tokens < 1:
        raise ValueError(f"batch_parts needs positive sizes, got {n_reviews} reviews of {seq_len} tokens, "
                         f"at most {max_tokens} tokens a part")
    n_parts = math.ceil(n_reviews / max(1, max_tokens // seq_len))
    bounds = [round(k * n_reviews / n_parts) for k in range(n_parts + 1)]
    return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def interactive_frontend():
    """True in JupyterLab or Notebook (jupyter_server sets JPY_SESSION_NAME); False under papermill and nbval."""
    return "JPY_SESSION_NAME" in os.environ


def progress(iterable, desc, total=None, trim_above_mib=None):
    """A live progress bar over iterable in JupyterLab (a widget), nothing extra in batch runs.

    trim_above_mib: after each item's work (when the loop asks for the next), hand freed memory back to the
    system if the process holds more than this (return_freed_memory); training's loop uses it, so it need not.
    """
    shown = tqdm(iterable, desc=desc, total=total, leave=False, mininterval=1.0) if interactive_frontend() else iterable
    if trim_above_mib is None:
        return shown
    return _trimming_after_each(shown, trim_above_mib)


def _trimming_after_each(iterable, above_mib):
    for item in iterable:
        yield item
        return_freed_memory(above_mib=above_mib)  # the step's freed activations back, if the allocator kept them


# A training step frees its activations, but glibc may keep the freed pages (a fragmented heap): a run then
# grows step by step, more in some runs than in others. Above this resident size, a step hands them back.
TRIM_ABOVE_MIB = 1_700


def resident_mib():
    """This process's resident memory now, in MiB (from /proc/self/statm); None where that cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):  # no /proc (macOS, Windows)
        return None


def return_freed_memory(above_mib=None):
    """Hand memory freed by Python and torch back to the OS (glibc's malloc_trim); a no-op where there is none.

    With above_mib, only when the process's resident memory is above it (a cheap check, fit for every training
    step: trimming costs page faults when the memory is used again). Returns whether it trimmed.
    """
    if above_mib is not None:
        resident = resident_mib()
        if resident is None or resident <= above_mib:
            return False
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def peak_memory_mib(device):
    """Peak resident memory so far in MiB: this process's, its largest finished child's (0 if none), and on a GPU
    peak tensor memory.

    A child's figure is no memory of its own when it was forked and then ran a small program: Linux carries the
    parent's high-water mark over into the child's. The lesson's only child is the `lscpu` scikit-learn runs at
    import, which shows the kernel's size then (about 400 MiB); the run's peak is the kernel's.
    """
    peak = {}
    try:
        import resource
    except ImportError:  # Windows has no resource module
        resource = None
    if resource is not None:
        scale = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss is in bytes there, KiB on Linux
        peak["cpu_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
        peak["children_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / scale
    if device.type == "cuda":
        peak["gpu_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


class EarlyStopping:
    """Keep the best epoch by validation loss, saving its checkpoint; should_stop after `patience` worse epochs."""

    def __init__(self, patience, checkpoint_dir, vocab=None, config=None):
        self.patience, self.checkpoint_dir = patience, Path(checkpoint_dir)
        self.vocab, self.config = vocab, config
        self.best_loss, self.best_epoch, self.epoch = float("inf"), 0, 0

    def update(self, epoch, valid_loss, model):
        """Record one epoch's validation loss; save a checkpoint and return True if it is the best so far."""
        self.epoch = epoch
        if valid_loss < self.best_loss:
            self.best_loss, self.best_epoch = valid_loss, epoch
            save_checkpoint(self.checkpoint_dir, model, self.vocab, self.config)
            return True
        return False

    @property
    def should_stop(self):
        return self.epoch - self.best_epoch >= self.patience

    def finish(self, model, interrupted, log=print):
        """After fit: with no epoch run (n_epochs 0, a loaded checkpoint) save the model as it is; refuse a run that
        saved no model; say what an interrupted run kept."""
        if self.epoch == 0 and not interrupted:
            save_checkpoint(self.checkpoint_dir, model, self.vocab, self.config)
            log("n_epochs 0: nothing trained; the loaded checkpoint's model is this run's, as it is")
        elif self.best_epoch == 0 and interrupted:
            raise RuntimeError("training was interrupted before its first epoch ended, so no model was saved; "
                               "run the training cell again (or the notebook) and let at least one epoch finish")
        elif self.best_epoch == 0:
            raise RuntimeError(f"no epoch of {self.epoch} gave a finite validation loss, so no model was saved: "
                               "lower lr, or check the data")
        elif interrupted:
            log(f"interrupted: keeping the epochs trained so far (the best: epoch {self.best_epoch}) and their history")


class StopOnInterrupt:
    """A `with` block that ends quietly on KeyboardInterrupt (the kernel's stop button) and remembers it."""

    interrupted = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.interrupted = True
            return True  # the exception is handled: the notebook goes on with what was saved
        return False


WEIGHTS_FILE = "weights.safetensors"
LEGACY_WEIGHTS_FILE = "weights.pt"


class UntrustedCheckpointError(ValueError):
    """A checkpoint whose weights are in torch's pickle format, which this project never loads unasked."""


def save_checkpoint(folder, model, vocab=None, config=None):
    """Save the weights as safetensors (which, unlike a pickle, cannot run code) and vocab and config as JSON."""
    from safetensors.torch import save as safetensors_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if vocab is not None:
        write_json(folder / "vocab.json", vocab.get_itos())
    if config is not None:
        write_json(folder / "config.json", config)
    state = model if isinstance(model, dict) else model.state_dict()
    # safetensors refuses tensors that share memory or are views: store each as its own contiguous copy.
    tensors = {name: value.detach().to("cpu").contiguous().clone() for name, value in state.items()}
    write_atomic(folder / WEIGHTS_FILE, safetensors_bytes(tensors))


# Bounds on what a checkpoint's files may hold, checked before they are read. The lesson's model takes about
# 27 MB of weights, vocab.json about 0.5 MB, config.json under 1 KB.
MAX_CONFIG_BYTES = 64 << 10
MAX_VOCAB_BYTES = 64 << 20
MAX_WEIGHTS_BYTES = 1 << 30
MAX_SAFETENSORS_HEADER_BYTES = 1 << 20
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1}
# The model's sizes in config.json ("model"): those that are notebook parameters are checked by PARAM_SPECS.
MODEL_CONFIG_KEYS = ("vocab_size", "embedding_dim", "hidden_dim", "n_layers", "bidirectional", "embedding_dropout",
                     "dropout", "pooling", "pad_index", "cell")
CHECKPOINT_CONFIG_KEYS = ("model", "max_length", "n_models")  # n_models: an ensemble's (sweeps/options.py)
RNN_GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # each cell's weight matrices hold this many hidden_dim blocks


def open_regular_file(path, max_bytes, inside=None):
    """An open binary file at path: refused unless a regular file of at most max_bytes, within `inside` if given.

    A link is followed only to a file inside `inside`; devices, FIFOs and folders are refused without
    reading (the file is opened non-blocking, so a FIFO cannot hang). Errors name the file.
    """
    path = Path(path)
    if inside is not None and not path.resolve().is_relative_to(Path(inside).resolve()):
        raise ValueError(f"{path} is a link to {path.resolve()}, outside {inside}; refused")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    f = os.fdopen(fd, "rb")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        f.close()
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
        raise ValueError(f"{path} is {kind}, not a regular file; refused")
    if info.st_size > max_bytes:
        f.close()
        raise ValueError(f"{path} holds {info.st_size:,} bytes, more than the {max_bytes:,} it may; refused")
    return f


def read_regular_file(path, max_bytes, inside=None):
    """The bytes of a regular file of at most max_bytes (see open_regular_file)."""
    with open_regular_file(path, max_bytes, inside) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew since it was checked
        raise ValueError(f"{path} holds more than the {max_bytes:,} bytes it may; refused")
    return data


def read_json_file(path, max_bytes, inside=None):
    """The JSON value in a regular file of at most max_bytes; ValueError naming the file if it is not JSON."""
    data = read_regular_file(path, max_bytes, inside)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def read_safetensors_header(f, path, file_size):
    """{tensor name: (dtype, shape)} from an open safetensors file's header, checked against the file's size.

    The format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
    data_offsets}} (and an optional "__metadata__"), then the tensors' bytes back to back.
    """
    def bad(reason):
        return ValueError(f"{path} is not a readable safetensors file: {reason}")

    start = f.read(8)
    if len(start) < 8:
        raise bad("shorter than its 8-byte header length")
    length = int.from_bytes(start, "little")
    if length > MAX_SAFETENSORS_HEADER_BYTES or 8 + length > file_size:
        raise bad(f"its header length {length:,} is beyond the file or the {MAX_SAFETENSORS_HEADER_BYTES:,} allowed")
    try:
        header = json.loads(f.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise bad(f"its header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    layout, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}
                and entry["dtype"] in SAFETENSORS_DTYPES and isinstance(entry["shape"], list)
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry["shape"])
                and isinstance(entry["data_offsets"], list) and len(entry["data_offsets"]) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) for n in entry["data_offsets"])):
            raise bad(f"tensor {name!r}: expected dtype, shape and data_offsets, got {str(entry)[:200]}")
        begin, end = entry["data_offsets"]
        if end - begin != math.prod(entry["shape"]) * SAFETENSORS_DTYPES[entry["dtype"]]:
            raise bad(f"tensor {name!r}: data_offsets {entry['data_offsets']} do not hold its shape {entry['shape']}")
        layout[name] = (entry["dtype"], tuple(entry["shape"]))
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise bad("its tensors' data_offsets overlap or leave gaps")
        position = end
    if 8 + length + position != file_size:
        raise bad(f"its header describes {8 + length + position:,} bytes, the file holds {file_size:,}")
    return layout


def read_safetensors(path, expected=None, max_bytes=MAX_WEIGHTS_BYTES, inside=None, against="its config.json",
                     implied_by="the config"):
    """The tensors of a safetensors file, its header checked before any tensor is made.

    expected: {name: (dtype, shape)} the file must hold exactly (names, dtypes and shapes), or None;
    `against` and `implied_by` name where those come from, for the error.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    with open_regular_file(path, max_bytes, inside) as f:
        size = os.fstat(f.fileno()).st_size
        layout = read_safetensors_header(f, path, size)
        if expected is not None:
            expected = {name: (dtype, tuple(shape)) for name, (dtype, shape) in expected.items()}
            problems = [f"missing {k}" for k in expected if k not in layout]
            problems += [f"unexpected {k}" for k in layout if k not in expected]
            problems += [f"{k}: {layout[k][0]} {list(layout[k][1])}, {implied_by} implies {v[0]} {list(v[1])}"
                         for k, v in expected.items() if k in layout and layout[k] != v]
            if problems:
                shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
                raise ValueError(f"{path} does not match {against}: {shown}")
        f.seek(0)
        data = f.read(size + 1)
    if len(data) != size:
        raise ValueError(f"{path} changed while it was read; refused")
    try:
        return safetensors_load(data)
    except (SafetensorError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err


def read_weights(folder, expected=None):
    """The state_dict in folder/weights.safetensors; an old weights.pt is refused, never unpickled.

    The file must be a regular file in the folder (of at most MAX_WEIGHTS_BYTES); its header is
    checked, and against `expected` ({name: (dtype, shape)}) if given, before any tensor is made.
    """
    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    if not path.exists() and not path.is_symlink():
        if (folder / LEGACY_WEIGHTS_FILE).exists():
            raise UntrustedCheckpointError(
                f"checkpoint {folder} holds {LEGACY_WEIGHTS_FILE}, torch's pickle format of earlier versions of this "
                f"project; loading such a file can run code hidden in it (CVE-2025-32434, CVE-2026-24747), so this "
                f"version reads only {WEIGHTS_FILE}. If you trust whoever made it, convert it once with "
                f"`python helpers.py convert-checkpoint {shown_path(folder)} --trust-pickled-file` (or "
                f"helpers.convert_legacy_checkpoint(folder, trust_pickled_file=True)), then load it as usual")
        raise FileNotFoundError(f"checkpoint {folder} lacks {WEIGHTS_FILE}")
    return read_safetensors(path, expected, inside=folder)


def check_checkpoint_config(config, path):
    """config.json's content checked: its keys, and the model's sizes by the notebook parameters' own rules.

    Returns the config; ValueError naming the file and the field otherwise.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object with {', '.join(CHECKPOINT_CONFIG_KEYS[:2])}, "
                         f"got {type(config).__name__}")
    unknown = sorted(set(config) - set(CHECKPOINT_CONFIG_KEYS))
    missing = [key for key in CHECKPOINT_CONFIG_KEYS[:2] if key not in config]
    if unknown or missing:
        raise ValueError(f"{path}: " + "; ".join(([f"unknown keys {', '.join(map(repr, unknown))}"] if unknown else [])
                                                 + ([f"missing {', '.join(missing)}"] if missing else []))
                         + f" (expected {', '.join(CHECKPOINT_CONFIG_KEYS)})")
    check_param("max_length", config["max_length"], f"{path}: max_length")
    n_models = config.get("n_models", 1)
    if not (isinstance(n_models, int) and not isinstance(n_models, bool) and 1 <= n_models <= 100):
        raise ValueError(f"{path}: n_models={n_models!r} is not valid: expected an integer from 1 to 100")
    model = config["model"]
    if not isinstance(model, dict):
        raise ValueError(f"{path}: model must be a JSON object, got {type(model).__name__}")
    unknown = sorted(set(model) - set(MODEL_CONFIG_KEYS))
    missing = [key for key in MODEL_CONFIG_KEYS if key not in model and key != "cell"]  # cell: lstm by default
    if unknown or missing:
        raise ValueError(f"{path}: model " + "; ".join(([f"has unknown keys {', '.join(map(repr, unknown))}"]
                                                        if unknown else [])
                                                       + ([f"lacks {', '.join(missing)}"] if missing else []))
                         + f" (expected {', '.join(MODEL_CONFIG_KEYS)})")
    for name, value in model.items():
        if name in PARAM_SPECS:
            check_param(name, value, f"{path}: model.{name}")
    for name, low, high in (("vocab_size", 2, None), ("pad_index", 0, model["vocab_size"])):
        value = model[name]
        if not (isinstance(value, int) and not isinstance(value, bool)) or value < low or (
                high is not None and isinstance(high, int) and value >= high):
            raise ValueError(f"{path}: model.{name}={value!r} is not valid: expected an integer >= {low}"
                             + (" and below vocab_size" if high is not None else ""))
    return config


def model_weight_layout(model):
    """{name: ("F32", shape)} of the notebook's SentimentLSTM for a checked config.json "model"."""
    hidden, n_directions = model["hidden_dim"], 2 if model["bidirectional"] else 1
    rows = RNN_GATES[model.get("cell", "lstm")] * hidden
    layout = {"embedding.weight": ("F32", (model["vocab_size"], model["embedding_dim"]))}
    for direction in ("forward_rnns", "backward_rnns")[:n_directions]:
        for layer in range(model["n_layers"]):
            size = model["embedding_dim"] if layer == 0 else hidden * n_directions
            layout |= {f"{direction}.{layer}.weight_ih_l0": ("F32", (rows, size)),
                       f"{direction}.{layer}.weight_hh_l0": ("F32", (rows, hidden)),
                       f"{direction}.{layer}.bias_ih_l0": ("F32", (rows,)),
                       f"{direction}.{layer}.bias_hh_l0": ("F32", (rows,))}
    pooled = hidden * n_directions * (2 if model["pooling"] == "max+mean" else 1)
    return layout | {"fc.weight": ("F32", (1, pooled)), "fc.bias": ("F32", (1,))}


def checkpoint_weight_layout(config):
    """{name: (dtype, shape)} the weights of a checked config imply (an ensemble's members prefixed members.<i>.)."""
    layout = model_weight_layout(config["model"])
    n_models = config.get("n_models", 1)
    if n_models == 1:
        return layout
    return {f"members.{i}.{name}": value for i in range(n_models) for name, value in layout.items()}


def load_checkpoint(folder):
    """Load (state_dict, vocab, config) from a checkpoint folder: safetensors and JSON only, nothing pickled.

    Everything is checked before any tensor is made: each file is a regular file inside the folder
    and within its size bound; config.json's keys and values (by PARAM_SPECS' rules); vocab.json is
    a list of distinct strings as long as the embedding has rows; and weights.safetensors' header
    holds exactly the names, dtypes and shapes the config implies. Errors name the file and the field.
    """
    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists() and not weights.is_symlink():
        read_weights(folder)  # raises: the pickled weights.pt refused, or the file named as missing
    for name in ("vocab.json", "config.json"):
        if not (folder / name).exists() and not (folder / name).is_symlink():
            raise FileNotFoundError(f"checkpoint {folder} lacks {name}")
    with open_regular_file(weights, MAX_WEIGHTS_BYTES, inside=folder) as f:  # a pickle is refused here already
        read_safetensors_header(f, weights, os.fstat(f.fileno()).st_size)
    config_path, vocab_path = folder / "config.json", folder / "vocab.json"
    config = check_checkpoint_config(read_json_file(config_path, MAX_CONFIG_BYTES, inside=folder), config_path)
    layout = checkpoint_weight_layout(config)
    implied = sum(math.prod(shape) * SAFETENSORS_DTYPES[dtype] for dtype, shape in layout.values())
    if implied > MAX_WEIGHTS_BYTES:
        raise ValueError(f"{config_path}: model implies {implied:,} bytes of weights, more than the "
                         f"{MAX_WEIGHTS_BYTES:,} a checkpoint may hold; refused")
    itos = read_json_file(vocab_path, MAX_VOCAB_BYTES, inside=folder)
    if not (isinstance(itos, list) and all(isinstance(token, str) for token in itos)):
        raise ValueError(f"{vocab_path}: expected a JSON list of tokens (strings)")
    if len(itos) != config["model"]["vocab_size"]:
        raise ValueError(f"{vocab_path}: {len(itos):,} tokens, but {config_path}'s model.vocab_size (the "
                         f"embedding's rows) is {config['model']['vocab_size']:,}")
    try:
        vocab = vocab_from_tokens(itos)
    except ValueError as err:
        raise ValueError(f"{vocab_path}: {err}") from None
    if vocab[PAD_TOKEN] != config["model"]["pad_index"]:
        raise ValueError(f"{config_path}: model.pad_index={config['model']['pad_index']} is not the index of "
                         f"{PAD_TOKEN} in vocab.json ({vocab[PAD_TOKEN]})")
    state = read_weights(folder, expected=layout)
    return state, vocab, config


def convert_legacy_checkpoint(folder, trust_pickled_file=False):
    """Rewrite an old checkpoint's weights.pt as weights.safetensors; only for a file whose maker you trust.

    The one place that unpickles: torch 2.3.1's weights_only=True can still run code (CVE-2025-32434).
    """
    folder = Path(folder)
    legacy = folder / LEGACY_WEIGHTS_FILE
    if not legacy.exists():
        raise FileNotFoundError(f"{folder} has no {LEGACY_WEIGHTS_FILE} to convert")
    if (folder / WEIGHTS_FILE).exists() or (folder / WEIGHTS_FILE).is_symlink():
        raise FileExistsError(f"{folder / WEIGHTS_FILE} exists already, and converting would overwrite it; "
                              f"move it away first if {LEGACY_WEIGHTS_FILE} is the one to keep")
    if not trust_pickled_file:
        raise UntrustedCheckpointError(
            f"{legacy} is a pickle, and unpickling can run code; convert it only if you trust whoever made it, "
            f"by passing trust_pickled_file=True (on the command line: --trust-pickled-file)")
    state = torch.load(legacy, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{legacy} does not hold a state_dict of tensors")
    save_checkpoint(folder, state)
    legacy.unlink()  # the safetensors copy replaces it; the pickle is not kept beside it to be loaded by mistake
    return folder / WEIGHTS_FILE


def load_weights(model, state):
    """Load a state_dict into model, or raise naming the parts whose names, shapes or dtypes differ."""
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems += [f"{k}: checkpoint dtype {state[k].dtype} vs model {v.dtype}"
                 for k, v in own.items() if k in state and state[k].shape == v.shape and state[k].dtype != v.dtype]
    if problems:
        raise ValueError("checkpoint does not match the model: " + "; ".join(problems))
    model.load_state_dict(state)


def plot_history(history, path=None):
    """Training against validation loss and accuracy per epoch, in two panels."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric, title in ((axes[0], "loss", "binary cross-entropy"), (axes[1], "acc", "accuracy")):
        ax.plot(history["epoch"], history[f"train_{metric}"], "o-", label="training")
        ax.plot(history["epoch"], history[f"valid_{metric}"], "o-", label="validation")
        ax.axvline(history.get("best_epoch", 0) or float("nan"), color="grey", ls=":", label="best epoch")
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- 5. evaluation
@torch.no_grad()
def predict_logits(model, batches, device):
    """The model's logit for every example of batches, in the examples' original order."""
    model.eval()
    logits = np.zeros(len(batches.sequences), dtype=np.float64)
    predicted = np.zeros(len(batches.sequences), dtype=bool)
    for tokens, lengths, _, idx in batches:
        logits[idx] = model(tokens.to(device), lengths).double().cpu().numpy()  # back to the examples' places
        predicted[idx] = True
        if len(idx) > 1:  # not for predict_review's single reviews, where it would only add latency
            # Batches in length order need ever larger buffers, and the allocator keeps the smaller ones it
            # cannot reuse: over the 25,000 test reviews the process grew by about 0.3 GiB without this.
            return_freed_memory()
    if not predicted.all():  # an example no batch held would otherwise get a silent logit of 0
        raise RuntimeError(f"the batches left {int((~predicted).sum())} of {len(logits)} examples without a logit")
    return logits


def sigmoid(logits):
    """The logistic function, for numpy arrays of logits."""
    return np.exp(-np.logaddexp(0, -np.asarray(logits, dtype=np.float64)))  # no overflow for large |logit|


def binary_metrics(probs, labels, threshold=0.5):
    """Loss, accuracy, precision, recall, F1 and the confusion matrix [[TN, FP], [FN, TP]]."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    predicted = probs >= threshold
    tp = int(np.sum(predicted & (labels == 1)))
    tn = int(np.sum(~predicted & (labels == 0)))
    fp = int(np.sum(predicted & (labels == 0)))
    fn = int(np.sum(~predicted & (labels == 1)))
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)  # keeps log(0) finite, as torch's BCE loss clamps it
    loss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"loss": loss, "accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall,
            "f1": f1, "confusion_matrix": [[tn, fp], [fn, tp]]}


COMBINER_FILE = "combiner.json"  # {"format", "rule", "features", "weights", "bias"}

COMBINATION_RULES = {
    # name: the features of each review, in order; the combined logit is bias + weights . features
    "stacked": ("lstm", "ngram"),
}


def combination_features(rule, lstm, ngram, coverage=None):
    """The columns a combination rule weighs, one row per review."""
    columns = {"lstm": lstm, "ngram": ngram}
    if coverage is not None:
        columns["coverage"] = coverage
    return np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in COMBINATION_RULES[rule]])


def has_combiner(folder):
    """Whether a checkpoint folder holds a combination of the LSTM and the n-grams."""
    return (Path(folder) / COMBINER_FILE).exists()


def save_combiner(folder, rule, weights, bias):
    """Write the combination: its rule, the features it weighs, their weights and its bias."""
    write_json(Path(folder) / COMBINER_FILE, {"format": 1, "rule": rule, "features": list(COMBINATION_RULES[rule]),
                                              "weights": [float(w) for w in weights], "bias": float(bias)})


def load_combiner(folder):
    """(rule, weights, bias) of a checkpoint's combination, checked field by field."""
    path = Path(folder) / COMBINER_FILE
    config = _json_object(folder, COMBINER_FILE)
    if (extra := sorted(set(config) - {"format", "rule", "features", "weights", "bias"})):
        raise ValueError(f"{path}: unknown fields {extra}")
    _field(path, config, "format", int, lambda v: v == 1, "1")
    rule = _field(path, config, "rule", str, lambda v: v in COMBINATION_RULES, f"one of {sorted(COMBINATION_RULES)}")
    _field(path, config, "features", list, lambda v: v == list(COMBINATION_RULES[rule]),
           f"{list(COMBINATION_RULES[rule])} for rule {rule!r}")
    weights = _field(path, config, "weights", list, lambda v: len(v) == len(COMBINATION_RULES[rule]) and all(
        isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) for w in v),
        f"{len(COMBINATION_RULES[rule])} finite numbers")
    bias = _field(path, config, "bias", float, _finite, "a finite number")
    return rule, np.array(weights, dtype=np.float64), bias


def combined_logits(rule, weights, bias, lstm, ngram, coverage=None):
    """The combined logit of each review."""
    return combination_features(rule, lstm, ngram, coverage) @ weights + bias


OOD_DIR = DATA_DIR / "ood"  # where downloaded out-of-domain sets are kept
SENTENCES_ZIP_URL = "https://archive.ics.uci.edu/static/public/331/sentiment+labelled+sentences.zip"
POLARITY_URL = "http://www.cs.cornell.edu/people/pabo/movie-review-data/review_polarity.tar.gz"
# The polarity archive holds 2,000 reviews of 3 MB in all: anything much bigger is not that archive.
POLARITY_MAX_MEMBERS, POLARITY_MAX_BYTES = 2_100, 16 << 20
SENTENCES_MAX_BYTES = 1 << 20  # each Kotzias et al. file is about 60 kB


@dataclass(frozen=True)
class OutOfDomainSet:
    """One labelled set from outside IMDB: where it comes from, its checksum and its role here."""

    name: str  # its key in metrics.json and logits.npz
    title: str
    role: str  # "development": out-of-domain choices may look at it; "evaluation only": never
    file: str
    sha256: str
    url: str  # the authors' download: the file itself, or a zip holding it
    reader: str  # the name of the function in this module that reads it


OOD_SETS = (
    OutOfDomainSet("amazon", "Amazon: phones and accessories, one sentence each", "development",
                   "amazon_cells_labelled.txt",
                   "47003fc0a0d4840b00e96e715b6189bad09e7443a3da41c4cbe12ffc79f86ae3", SENTENCES_ZIP_URL,
                   "read_labelled_sentences"),
    OutOfDomainSet("yelp", "Yelp: restaurants, one sentence each", "evaluation only", "yelp_labelled.txt",
                   "b565b1eeb864d76842588c3a256731b08bcdd9faf6de507bfe211a96f8b81912", SENTENCES_ZIP_URL,
                   "read_labelled_sentences"),
    OutOfDomainSet("polarity", "Pang & Lee: full-length movie reviews, Usenet before 2002", "evaluation only",
                   "review_polarity.tar.gz",
                   "fc0dccc2671af5db3c5d8f81f77a1ebfec953ecdd422334062df61ede36b2179", POLARITY_URL,
                   "read_polarity"),
)


def sha256sum(path):
    """The SHA-256 hex digest of a file (the out-of-domain sets' published checksums)."""
    return md5sum(path, algorithm="sha256")


def read_labelled_sentences(path):
    """Kotzias et al.'s format, a sentence, a tab and 1 (positive) or 0 (negative) a line: (texts, labels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    if path.stat().st_size > SENTENCES_MAX_BYTES:
        raise ValueError(f"{path} holds {path.stat().st_size:,} bytes, more than a labelled-sentences file "
                         f"({SENTENCES_MAX_BYTES:,} at most)")
    texts, labels = [], []
    for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        text, tab, label = line.rpartition("\t")
        if not tab or label.strip() not in ("0", "1") or not text.strip():
            raise ValueError(f"{path}, line {number}: expected a sentence, a tab and 0 or 1, got {line[:80]!r}")
        texts.append(text.strip())
        labels.append(int(label))
    if not texts:
        raise ValueError(f"{path} holds no labelled sentence")
    return texts, labels


def read_polarity(path):
    """Pang & Lee's polarity v2.0 archive, read without extracting it: (texts, labels), negatives first.

    Each review is lower-cased and tokenized by its authors, a sentence a line; its lines are joined by spaces.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    found = {0: [], 1: []}
    total = 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for count, member in enumerate(tar, start=1):
                if count > POLARITY_MAX_MEMBERS:
                    raise ValueError(f"{path} holds over {POLARITY_MAX_MEMBERS:,} members: not the polarity archive")
                parts = member.name.split("/")
                if not member.isfile() or len(parts) != 3 or parts[0] != "txt_sentoken" or parts[1] not in (
                        "neg", "pos") or not parts[2].endswith(".txt"):
                    continue  # the README, folders: nothing else is read
                total += member.size
                if total > POLARITY_MAX_BYTES:
                    raise ValueError(f"{path} expands to more than {POLARITY_MAX_BYTES:,} bytes of reviews: "
                                     "not the polarity archive")
                data = tar.extractfile(member).read()
                found[int(parts[1] == "pos")].append((parts[2], " ".join(data.decode("utf-8", "replace").split())))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(f"{path} is truncated or not a valid tar.gz archive ({err})") from err
    if not found[0] or not found[1]:
        raise ValueError(f"{path} lacks txt_sentoken/neg/*.txt or txt_sentoken/pos/*.txt: not the polarity archive")
    texts, labels = [], []
    for label in (0, 1):
        texts += [text for _, text in sorted(found[label])]
        labels += [label] * len(found[label])
    return texts, labels


def _download_ood(spec, folder, timeout=20):
    """Fetch spec's file from its authors into folder (from inside their zip where they publish one)."""
    target = Path(folder) / spec.file
    if not spec.url.endswith(".zip"):
        return download(spec.url, target, progress=False, timeout=timeout)
    import zipfile

    archive = download(spec.url, Path(folder) / Path(spec.url).name, progress=False, timeout=timeout)
    with zipfile.ZipFile(archive) as bundle:
        member = next((info for info in bundle.infolist() if Path(info.filename).name == spec.file
                       and not info.filename.startswith("__MACOSX")), None)
        if member is None or member.file_size > SENTENCES_MAX_BYTES:
            raise ValueError(f"{archive} holds no {spec.file} of the expected size")
        write_atomic(target, bundle.read(member))
    return target


def find_ood_set(spec, folder="", download_missing=True, log=print):
    """The path of one out-of-domain set, or None (with a note) where it is neither given nor downloadable.

    Looked for in `folder` (a local copy, as imdb_archive is), then in data/ood/, then downloaded there.
    A download must match the published SHA-256; a local copy that does not is used, and the note says so.
    """
    for place in ([Path(folder)] if folder else []) + [OOD_DIR]:
        path = place / spec.file
        if path.is_file():
            if (actual := sha256sum(path)) != spec.sha256:
                log(f"note: {shown_path(path)} is not the published {spec.file} (SHA-256 {actual[:12]}…): "
                    "its figures are not comparable with the README's")
            return path
    if folder and not Path(folder).is_dir():
        raise FileNotFoundError(f"ood_data {folder} is not a folder")
    if not download_missing:
        log(f"note: {spec.file} not found{f' in {folder}' if folder else ''}; the {spec.name} set is skipped")
        return None
    try:
        path = _download_ood(spec, OOD_DIR)
    except (ConnectionError, ValueError, OSError) as err:
        log(f"note: {spec.file} is not in {folder or shown_path(OOD_DIR)} and could not be downloaded "
            f"({str(err).split('. ')[0]}); the {spec.name} set is skipped")
        return None
    if (actual := sha256sum(path)) != spec.sha256:
        path.unlink()
        raise ValueError(f"the download of {spec.file} has SHA-256 {actual}, not the published {spec.sha256}; "
                         "it was deleted")
    return path


@dataclass
class OutOfDomainData:
    """One out-of-domain set as read: its texts, their tokens and labels, what it is and its file's SHA-256."""

    texts: list
    tokens: list
    labels: list
    spec: OutOfDomainSet
    sha256: str


def load_ood_sets(folder="", download_missing=True, log=print, cache_dir=None):
    """{name: OutOfDomainData} for each out-of-domain set found (OOD_SETS, in their order), tokenized.

    A text with no tokens (nothing to classify) is left out, and the note says how many.
    """
    loaded = {}
    for spec in OOD_SETS:
        path = find_ood_set(spec, folder, download_missing, log)
        if path is None:
            continue
        texts, labels = globals()[spec.reader](path)
        tokens = tokenize_all(texts, **({} if cache_dir is None else {"cache_dir": cache_dir}))
        kept = [i for i, t in enumerate(tokens) if t]
        if len(kept) < len(texts):
            log(f"note: {len(texts) - len(kept)} texts of {spec.file} have no words once cleaned; left out")
        loaded[spec.name] = OutOfDomainData([texts[i] for i in kept], [tokens[i] for i in kept],
                                            [labels[i] for i in kept], spec, sha256sum(path))
    return loaded


def plot_confusion(matrix, path=None):
    """The confusion matrix as an annotated heat map."""
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        ax.text(col, row, f"{count:,}", ha="center", va="center", color=color)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=LABEL_NAMES, yticklabels=LABEL_NAMES,
           xlabel="predicted", ylabel="true", title="Test set confusion matrix")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- 6. predicting new reviews
def review_tokens(text, number=None):
    """The tokens of one review to classify, or an error saying why it is not one."""
    which = "the review" if number is None else f"review {number}"
    if not isinstance(text, str):
        raise TypeError(f"a review must be a str, got {type(text).__name__}" + ("" if number is None else
                                                                                f" (item {number})"))
    if not text.strip():
        raise ValueError(f"{which} is empty or only whitespace; there is nothing to classify")
    tokens = tokenize(text)
    if not tokens:
        raise ValueError(f"{which} has no words once HTML markup is removed: {text[:60]!r}")
    return tokens


def known_fraction(text, vocab):
    """The share of a text's tokens that the vocabulary knows."""
    tokens = tokenize(text)
    unk = vocab[UNK_TOKEN]
    return sum(vocab[t] != unk for t in tokens) / max(len(tokens), 1)


def predict_proba(model, texts, vocab, max_length, device, batch_size=64):
    """Probability of 'positive' for each text; each review is read up to its first max_length tokens."""
    for i, text in enumerate(texts):  # every type checked before any tokenizing
        if not isinstance(text, str):
            raise TypeError(f"a review must be a str, got {type(text).__name__} (item {i})")
    token_lists = [review_tokens(text, i) for i, text in enumerate(texts)]
    encoded = [numericalize(tokens, vocab, max_length) for tokens in token_lists]
    return sigmoid(predict_logits(model, BucketBatches(encoded, [0] * len(encoded), batch_size), device))


PREDICTION_EXCERPT_CHARS = 300  # predictions.csv shows each review's start, enough to recognise it
MAX_REVIEW_LINE_BYTES = 1 << 20  # a review line longer than this (the longest IMDB review: 14 KB) is refused
PREDICTION_BATCH = 256  # reviews read, classified and written at a time by predict_review_file
MAX_SKIPPED_SHOWN = 100  # line numbers of word-less lines that predict_review_file returns


def _prediction_row(number, review, probs):
    """One line of predictions.csv: the label follows probs[0] (the combined model's), then every probability,
    and the review cut to PREDICTION_EXCERPT_CHARS (with "…" where cut)."""
    excerpt = review if len(review) <= PREDICTION_EXCERPT_CHARS else review[:PREDICTION_EXCERPT_CHARS] + "…"
    shown = ",".join(f"{prob:.6f}" for prob in probs)
    return f'{number},{LABEL_NAMES[int(probs[0] >= 0.5)]},{shown},"{excerpt.replace(chr(34), chr(34) * 2)}"\n'


def predictions_header(columns=("prob_positive",)):
    """The first line of predictions.csv."""
    return ",".join(["line", "label", *columns, "review"]) + "\n"


def iter_review_lines(path):
    """(line number, review or None if the line has no words) for each line of a UTF-8 file, read line by line.

    Lines end at \\n or \\r\\n only: \\x85 (in 321 of IMDB's test reviews) or U+2028 stay inside a review.
    A line longer than MAX_REVIEW_LINE_BYTES is refused, so memory is bounded by a line, not the file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"predict_file {path} is a folder, not a text file")
    if not path.is_file():
        raise FileNotFoundError(f"predict_file {path} does not exist or is not a regular file")
    with open(path, "rb") as f:  # bytes: no universal-newline translation of a lone \r
        for number in itertools.count(1):
            raw = f.readline(MAX_REVIEW_LINE_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_REVIEW_LINE_BYTES:
                raise ValueError(f"predict_file {path}: line {number} is longer than {MAX_REVIEW_LINE_BYTES:,} bytes; "
                                 "one review per line is expected")
            try:
                line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
            except UnicodeDecodeError as err:
                raise ValueError(f"predict_file {path} is not UTF-8 text (line {number}, byte {err.start} of it); "
                                 "save it as UTF-8") from err
            yield number, line if _basic_english(clean_text(line)) else None  # not interned: no growth


def predict_review_file(path, out_path, predict, batch_size=PREDICTION_BATCH, columns=("prob_positive",)):
    """Classify a file of one review per line into predictions.csv, batch_size reviews at a time.

    predict(list of reviews) -> their probabilities of positive, one column per name in `columns` (the first
    decides the label: the combined model's; then, say, each part's). Memory is bounded by a batch, not the
    file; out_path is written through a temporary file and appears only when complete. Returns
    (reviews classified, lines with no words, the first MAX_SKIPPED_SHOWN of those lines' numbers).
    """
    out_path = Path(out_path)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    n_predicted, n_skipped, skipped = 0, 0, []
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(predictions_header(columns))
            batch = []

            def flush():
                probabilities = np.asarray(predict([review for _, review in batch]), dtype=np.float64)
                probabilities = probabilities.reshape(len(batch), len(columns))
                out.writelines(_prediction_row(number, review, prob)
                               for (number, review), prob in zip(batch, probabilities, strict=True))
                batch.clear()

            for number, review in iter_review_lines(path):
                if review is None:
                    n_skipped += 1
                    if len(skipped) < MAX_SKIPPED_SHOWN:
                        skipped.append(number)
                    continue
                batch.append((number, review))
                n_predicted += 1
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
        if not n_predicted:
            raise ValueError(f"predict_file {path} holds no review: every line is blank or has no words")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n_predicted, n_skipped, skipped


# --------------------------------------------------------------------------- 7. which words decided
def integrated_gradients(model, token_ids, device, steps=64, max_tokens=MAX_BATCH_TOKENS):
    """Each token's contribution to the logit by integrated gradients from an all-<pad> review.

    Returns (contributions, logit, reference_logit): the all-<pad> review is the reference input, whose logit the
    contributions add up from. The model must offer forward_embedded(embedded, lengths).
    """
    model.eval()
    tokens = torch.tensor([token_ids], dtype=torch.long, device=device)  # [1, seq_len]
    lengths = torch.tensor([len(token_ids)])
    with torch.no_grad():
        embedded = model.embedding(tokens)  # [1, seq_len, embedding_dim]
        reference = model.embedding(torch.full_like(tokens, model.embedding.padding_idx))
    alphas = torch.linspace(0, 1, steps + 1, device=device).view(-1, 1, 1)  # [steps + 1, 1, 1]
    path = reference + alphas * (embedded - reference)  # [steps + 1, seq_len, dim]
    gradients, logits = [], []
    # The points of the path in parts of at most max_tokens tokens, as training's batches. cuDNN
    # computes LSTM gradients only in training mode; the plain kernels work in eval mode.
    with torch.backends.cudnn.flags(enabled=False):
        for part in batch_parts(steps + 1, len(token_ids), max_tokens):
            points = path[part].requires_grad_(True)
            part_logits = model.forward_embedded(points, lengths.expand(len(points)))
            gradients.append(torch.autograd.grad(part_logits.sum(), points)[0])
            logits.append(part_logits.detach())
    gradients, logits = torch.cat(gradients), torch.cat(logits)
    weights = torch.full((steps + 1, 1, 1), 1.0 / steps, device=device)
    weights[0] = weights[-1] = 0.5 / steps  # trapezoid rule
    average_gradient = (gradients * weights).sum(dim=0)  # [seq_len, dim]
    contributions = ((embedded[0] - reference[0]) * average_gradient).sum(dim=1)  # [seq_len]
    return contributions.detach().cpu().numpy(), float(logits[-1]), float(logits[0])


def attribution_html(tokens, contributions):
    """The tokens as HTML, shaded green for positive and red for negative contributions."""
    scale = max(float(np.max(np.abs(contributions))), 1e-9)
    spans = []
    for token, value in zip(tokens, contributions, strict=True):
        alpha = round(255 * min(abs(value) / scale, 1.0))
        color = f"#009600{alpha:02x}" if value > 0 else f"#d20000{alpha:02x}"  # RGB plus opacity
        spans.append(f'<span title="{value:+.3f}" style="background:{color}">{html.escape(token)}</span>')
    return '<div style="line-height:1.8">' + " ".join(spans) + "</div>"


class ShadedTokens:
    """Tokens shaded by contribution: HTML in Jupyter; elsewhere text marking the strongest, e.g. `superb[+0.81]`."""

    def __init__(self, tokens, contributions, caption="", n_marked=8):
        self.tokens, self.contributions, self.caption = list(tokens), np.asarray(contributions), caption
        self.n_marked = n_marked

    def _repr_html_(self):
        caption = f"<div>{html.escape(self.caption)}</div>" if self.caption else ""
        return caption + attribution_html(self.tokens, self.contributions)

    def __repr__(self):
        marked = set(np.argsort(-np.abs(self.contributions))[: self.n_marked].tolist())
        words = [f"{t}[{c:+.2f}]" if i in marked else t
                 for i, (t, c) in enumerate(zip(self.tokens, self.contributions, strict=True))]
        return (self.caption + "\n" if self.caption else "") + " ".join(words)


def review_box(explain, text):
    """In JupyterLab, a text box whose review is shown as explain(review) whenever typing pauses; in a batch run,
    explain(text) once (the box needs a live kernel)."""
    from IPython.display import display

    if not interactive_frontend():
        display(explain(text))
        return
    import ipywidgets as widgets

    box = widgets.Textarea(value=text, continuous_update=False, layout=widgets.Layout(width="100%", height="5em"))
    output = widgets.Output()

    def show(_change=None):
        output.clear_output(wait=True)
        with output:
            display(explain(box.value))

    box.observe(show, names="value")
    show()
    display(widgets.VBox([box, output]))


def plot_attributions(tokens, contributions, title, path=None, width_in_chars=110):
    """The review's words shaded by contribution (green: towards positive, red: towards negative)."""
    import matplotlib.pyplot as plt

    lines, line, used = [], [], 0  # the words flowed into lines by their length, as a text would wrap
    for token, value in zip(tokens, contributions, strict=True):
        if line and used + len(token) + 1 > width_in_chars:
            lines.append(line)
            line, used = [], 0
        line.append((used, token, value))
        used += len(token) + 2
    lines.append(line)
    scale = max(float(np.max(np.abs(contributions))), 1e-9)
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(lines) + 0.7))
    ax.set_axis_off()
    ax.set_title(title, loc="left", fontsize=10)
    for row, words in enumerate(lines):
        for column, token, value in words:
            color = (0.0, 0.59, 0.0) if value > 0 else (0.82, 0.0, 0.0)
            ax.text(column / width_in_chars, 1 - (row + 0.5) / len(lines), token, fontsize=10, family="monospace",
                    ha="left", va="center",
                    bbox={"facecolor": (*color, min(abs(value) / scale, 1.0)), "edgecolor": "none", "pad": 1.2})
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- 8. where it fails
def strongest_window(contributions, size):
    """(start, stop) of the `size` consecutive tokens with the largest total |contribution|."""
    weights = np.abs(np.asarray(contributions, dtype=np.float64))
    if len(weights) <= size:
        return 0, len(weights)
    sums = np.convolve(weights, np.ones(size), mode="valid")  # sums[i]: tokens i .. i + size - 1
    start = int(np.argmax(sums))
    return start, start + size


def accuracy_by_length(token_counts, probs, labels, max_length, n_bins=4):
    """(bin labels, accuracies, counts) by review length: n_bins of equal size, then those cut at max_length."""
    token_counts, labels = np.asarray(token_counts), np.asarray(labels)
    correct = (np.asarray(probs) >= 0.5) == (labels == 1)
    fits = token_counts <= max_length
    names, accuracies, counts = [], [], []
    if fits.any():
        quantiles = np.quantile(token_counts[fits], np.linspace(0, 1, n_bins + 1))
        edges = np.unique(np.floor(quantiles)).astype(int)
        for low, high in zip(edges[:-1], edges[1:], strict=True):
            last = high == edges[-1]  # the last bin includes its upper edge, the others stop below it
            in_bin = fits & (token_counts >= low) & ((token_counts <= high) if last else (token_counts < high))
            names.append(f"{low}–{high if last else high - 1}")
            accuracies.append(float(correct[in_bin].mean()))
            counts.append(int(in_bin.sum()))
    if (~fits).any():
        names.append(f"> {max_length} (cut)")
        accuracies.append(float(correct[~fits].mean()))
        counts.append(int((~fits).sum()))
    return names, accuracies, counts


def plot_accuracy_by_length(names, accuracies, counts, path=None):
    """Test accuracy per review-length bin, with each bin's number of reviews; the axis starts at chance (0.5)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    bars = ax.bar(names, accuracies, color=["tab:orange" if name.startswith(">") else "tab:blue" for name in names])
    for bar, accuracy, count in zip(bars, accuracies, counts, strict=True):
        ax.annotate(f"{accuracy:.3f}\n{count:,} reviews", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="review length in tokens", ylabel="test accuracy", ylim=(0.5, 1.05),
           title="Accuracy by review length (0.5 is chance)")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- 9. can the probabilities be trusted
def expected_calibration_error(probs, labels, n_bins=10):
    """(ECE, bins) of the predicted label's confidence, bins on [0.5, 1] of (confidence, accuracy, count)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = np.maximum(probs, 1 - probs)
    correct = (probs >= 0.5) == (labels == 1)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece, bins = 0.0, []
    for b in range(n_bins):
        in_bin = which == b
        if in_bin.any():
            conf, acc = confidence[in_bin].mean(), correct[in_bin].mean()
            ece += in_bin.mean() * abs(acc - conf)
            bins.append((float(conf), float(acc), int(in_bin.sum())))
    return float(ece), bins


def fit_temperature(logits, labels):
    """The temperature T > 0 that minimises the log loss of sigmoid(logits / T) on held-out data."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)

    def log_loss(t):
        z = logits / t
        return np.mean(np.logaddexp(0, z) - labels * z)  # -log-likelihood, stable for large |z|

    # The loss is smooth in log T: a coarse grid, then a fine one around its best point.
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))
    best = grid[np.argmin([log_loss(t) for t in grid])]
    fine = best * np.exp(np.linspace(-0.02, 0.02, 401))
    return float(fine[np.argmin([log_loss(t) for t in fine])])


def plot_reliability(curves, path=None):
    """Reliability diagram: accuracy against confidence per bin, with each bin's number of predictions below."""
    import matplotlib.pyplot as plt

    fig, (ax, counts_ax) = plt.subplots(2, 1, figsize=(5.2, 5.4), sharex=True, height_ratios=(3, 1.2))
    ax.plot([0.5, 1], [0.5, 1], color="grey", ls=":", label="perfect calibration")
    width = 0.05 / (len(curves) + 1)
    for k, (name, bins) in enumerate(curves.items()):
        confidence, accuracy, count = zip(*bins, strict=True)
        (line,) = ax.plot(confidence, accuracy, "o-", label=name)
        counts_ax.bar(np.asarray(confidence) + (k - (len(curves) - 1) / 2) * width, count, width=width,
                      color=line.get_color())
    ax.set(ylabel="accuracy", title="Reliability on the test set")
    ax.legend(fontsize=8)
    counts_ax.set(xlabel="confidence of the predicted label", ylabel="predictions", yscale="log")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- 10. the record
def environment_info(device):
    """Versions and hardware of this run, for metrics.json."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "torchtext": torchtext.__version__,
            "numpy": np.__version__, "device": str(device), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_metrics(*, test, valid, history, stopper, interrupted, n_train_reviews, n_valid_reviews, model, calibration,
                ngram_baseline, combined, ood_sets, ood_scores, seconds, peak_memory_before_evaluation, params, config,
                device):
    """The run's record for metrics.json, from the notebook's results (the sweeps, the records and the tests read it).

    ngram_baseline: c, max_n, n_features, valid_acc, valid_acc_by_c, test (its binary_metrics) and seconds;
    combined: rule, weights, bias, valid_acc and test (its binary_metrics); seconds: training, pretraining and
    analysis. With no epoch trained (a loaded checkpoint used as it is) the best epoch's fields are None.
    """
    trained = bool(history["epoch"])
    weights = [float(w) for w in combined["weights"]]
    return {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_precision": test["precision"],
        "test_recall": test["recall"],
        "test_f1": test["f1"],
        "test_confusion_matrix": test["confusion_matrix"],
        "best_epoch": stopper.best_epoch if trained else None,
        "best_valid_loss": stopper.best_loss if trained else None,
        "best_valid_acc": history["valid_acc"][stopper.best_epoch - 1] if trained else None,
        "valid_loss": valid["loss"],
        "valid_acc": valid["accuracy"],
        "history": history,
        "training_seconds": seconds["training"],
        "interrupted": interrupted,
        "n_train_reviews": n_train_reviews,
        "n_valid_reviews": n_valid_reviews,
        "n_parameters": count_parameters(model),
        "calibration": calibration,
        "ngram_baseline": {"c": ngram_baseline["c"], "max_n": ngram_baseline["max_n"],
                           "n_features": ngram_baseline["n_features"], "valid_acc": ngram_baseline["valid_acc"],
                           "valid_acc_by_c": ngram_baseline["valid_acc_by_c"],
                           "test_accuracy": ngram_baseline["test"]["accuracy"],
                           "test_loss": ngram_baseline["test"]["loss"], "seconds": ngram_baseline["seconds"]},
        "combined": {"rule": combined["rule"], "weights": weights, "lstm_weight": weights[0],
                     "ngram_weight": weights[1], "bias": float(combined["bias"]), "valid_acc": combined["valid_acc"],
                     "test_accuracy": combined["test"]["accuracy"], "test_loss": combined["test"]["loss"],
                     "test_f1": combined["test"]["f1"]},
        "out_of_domain": out_of_domain_record(ood_sets, ood_scores),
        "pretraining_seconds": seconds["pretraining"],
        "analysis_seconds": seconds["analysis"],
        "peak_memory": peak_memory_mib(device),
        "peak_memory_before_evaluation": peak_memory_before_evaluation,
        "params": params,
        "config": config,  # as saved with the final model
        "environment": environment_info(device),
    }


def out_of_domain_record(ood_sets, ood_scores):
    """metrics.json's "out_of_domain" entry: each set's source, checksum, size and the three models' accuracies."""
    return {name: {"title": ood_sets[name].spec.title, "role": ood_sets[name].spec.role,
                   "file": ood_sets[name].spec.file, "sha256": ood_sets[name].sha256,
                   "n_reviews": len(scores["labels"]),
                   **{f"{model}_accuracy": float(np.mean((scores[model] >= 0) == scores["labels"]))
                      for model in ("ngram", "lstm", "combined")}}
            for name, scores in ood_scores.items()}


RUN_EXCERPT = {"test_accuracy": "test accuracy", "test_loss": "test loss", "best_epoch": "best epoch",
               "best_valid_acc": "its validation accuracy", "n_train_reviews": "training reviews",
               "n_parameters": "parameters", "training_seconds": "training seconds"}


def metrics_excerpt(metrics):
    """A table of the figures of metrics.json a reader looks for first."""
    return Table.from_dict({label: metrics[name] for name, label in RUN_EXCERPT.items()}
                           | {"n-gram baseline: test accuracy": metrics["ngram_baseline"]["test_accuracy"],
                              "LSTM + n-grams: test accuracy": metrics["combined"]["test_accuracy"],
                              "peak memory (MiB)": round(metrics["peak_memory"]["cpu_rss_mib"])},
                           columns=("metrics.json (excerpt)", ""))


def write_atomic(path, data):
    """Write bytes or text to path through a temporary file, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, obj):
    """Write obj as indented JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# --------------------------------------------------------------------------- diagrams, drawn once
# Okabe-Ito colours, which stay distinct under the common kinds of colour blindness.
SKY, ORANGE, BLUE, VERMILLION, GREEN, YELLOW = "#56B4E9", "#E69F00", "#0072B2", "#D55E00", "#009E73", "#F0E442"


def _box(ax, x, y, w, h, text="", fill="white", fontsize=11, **text_style):
    """A rounded box of size w × h centred on (x, y), with text in it."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                facecolor=fill, edgecolor="black", linewidth=1.0, zorder=2))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=3, **text_style)


def _circle(ax, x, y, text, radius=0.3):
    """A point-wise operation: a small circle with ⊙ or + in it."""
    from matplotlib.patches import Circle

    ax.add_patch(Circle((x, y), radius, facecolor=YELLOW, edgecolor="black", linewidth=1.0, zorder=2))
    ax.text(x, y, text, ha="center", va="center", fontsize=12, zorder=3)


def _arrow(ax, *points, color="black", width=1.3):
    """A line through the points, with an arrowhead on its last segment."""
    xs, ys = zip(*points, strict=True)
    ax.plot(xs[:-1], ys[:-1], color=color, linewidth=width, solid_capstyle="butt", zorder=1)
    ax.annotate("", xy=points[-1], xytext=points[-2], zorder=1,
                arrowprops={"arrowstyle": "-|>", "color": color, "linewidth": width, "shrinkA": 0, "shrinkB": 0})


def plot_lstm_cell(path=None):
    """One LSTM cell at time step t: its four gates, the cell state across the top and h_t out, with the equations."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.set(xlim=(0, 18), ylim=(0, 8.3), aspect="equal")
    ax.set_axis_off()
    ax.add_patch(FancyBboxPatch((1.2, 0.9), 10.4, 7.0, boxstyle="round,pad=0,rounding_size=0.3",
                                facecolor="#f4f4f4", edgecolor="grey", zorder=0))
    # The cell state runs straight across: it is only scaled and added to, which lets gradients flow far back.
    for start, end in (((0.2, 7.0), (2.5, 7.0)), ((3.1, 7.0), (5.0, 7.0)), ((5.6, 7.0), (12.6, 7.0))):
        _arrow(ax, start, end, color=BLUE, width=2.5)
    ax.text(0.2, 7.3, "$c_{t-1}$", fontsize=12, color=BLUE)
    ax.text(12.7, 7.0, "$c_t$", fontsize=12, color=BLUE, va="center")
    _circle(ax, 2.8, 7.0, r"$\odot$")  # feature by feature, as every product in the cell (not a matrix product)
    _circle(ax, 5.3, 7.0, "$+$")
    # The inputs: h_{t-1} from the left and x_t from below, joined into one vector that feeds every gate.
    ax.plot([0.2, 8.0], [1.7, 1.7], color="black", linewidth=1.3, zorder=1)
    _arrow(ax, (2.0, 0.05), (2.0, 1.7))
    ax.text(0.2, 2.0, "$h_{t-1}$", fontsize=12)
    ax.text(1.75, 0.35, "$x_t$", fontsize=12, ha="right")
    ax.text(5.2, 1.3, r"$[x_t,\ h_{t-1}]$", fontsize=10, ha="center", va="center")
    gates = ((2.8, r"$\sigma$", SKY), (4.4, r"$\sigma$", SKY), (6.2, r"$\tanh$", ORANGE), (8.0, r"$\sigma$", SKY))
    for x, text, color in gates:  # forget, input, candidate, output
        _arrow(ax, (x, 1.7), (x, 3.0))
        ax.plot(x, 1.7, "o", color="black", markersize=4, zorder=2)
        _box(ax, x, 3.4, 1.0, 0.8, text, color, fontsize=13 if color == SKY else 11)
    _arrow(ax, (2.8, 3.8), (2.8, 6.7))
    ax.text(2.95, 5.3, "$f_t$", fontsize=12, va="center")
    _arrow(ax, (4.4, 3.8), (4.4, 5.3), (5.0, 5.3))
    ax.text(4.25, 4.55, "$i_t$", fontsize=12, ha="right", va="center")
    _arrow(ax, (6.2, 3.8), (6.2, 5.3), (5.6, 5.3))
    ax.text(6.35, 4.55, "$g_t$", fontsize=12, va="center")
    _circle(ax, 5.3, 5.3, r"$\odot$")
    _arrow(ax, (5.3, 5.6), (5.3, 6.7))
    ax.text(5.45, 6.15, r"$i_t \odot g_t$", fontsize=10, va="center")
    # Output: h_t is a gated, squashed copy of the new cell state.
    _arrow(ax, (9.6, 7.0), (9.6, 5.6), color=BLUE)
    ax.plot(9.6, 7.0, "o", color=BLUE, markersize=5, zorder=2)
    _box(ax, 9.6, 5.3, 1.0, 0.6, r"$\tanh$", ORANGE)
    _arrow(ax, (9.6, 5.0), (9.6, 3.7))
    _arrow(ax, (8.5, 3.4), (9.3, 3.4))
    ax.text(8.9, 3.6, "$o_t$", fontsize=11, ha="center", va="bottom")
    _circle(ax, 9.6, 3.4, r"$\odot$")
    _arrow(ax, (9.9, 3.4), (12.6, 3.4), color=VERMILLION, width=2.0)
    ax.text(12.7, 3.4, "$h_t$", fontsize=12, color=VERMILLION, va="center")
    equations = (("input gate", r"$i_t = \sigma(W_i[x_t, h_{t-1}] + b_i)$"),  # the lesson's order, and PyTorch's
                 ("forget gate", r"$f_t = \sigma(W_f[x_t, h_{t-1}] + b_f)$"),
                 ("candidate", r"$g_t = \tanh(W_g[x_t, h_{t-1}] + b_g)$"),
                 ("output gate", r"$o_t = \sigma(W_o[x_t, h_{t-1}] + b_o)$"),
                 ("new cell state", r"$c_t = f_t \odot c_{t-1} + i_t \odot g_t$"),
                 ("new hidden state", r"$h_t = o_t \odot \tanh(c_t)$"))
    for k, (name, equation) in enumerate(equations):
        ax.text(13.6, 7.6 - 1.2 * k, name, fontsize=9, color="dimgrey")
        ax.text(13.6, 7.15 - 1.2 * k, equation, fontsize=10)
    ax.set_title("One LSTM cell at time step $t$", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def plot_pipeline(path=None):
    """The classifier from review text to P(positive), one stage per column, with each stage's shape below it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.set(xlim=(0, 9), ylim=(0.3, 4.5), aspect="equal")  # one unit is one inch
    ax.set_axis_off()
    ax.set_title("An illustration: the token ids and the probability are made up", fontsize=10, color="dimgrey")
    tokens, ids = "a moving film with a brilliant cast".split(), [5, 863, 24, 20, 5, 516, 183]
    rows = [3.5 - 0.4 * k for k in range(len(tokens))]  # positions run down the page, one row per token
    middle = rows[3]
    stages = ((0.55, "review", "1 string"), (1.6, "tokens", "7 tokens"), (2.35, "token\nids", "7 ids"),
              (3.2, "word\nvectors", r"7 $\times$ 128"), (4.55, "bidirectional\nLSTM", r"7 $\times$ 2$\cdot$128"),
              (5.85, "max over\ntime", "256"), (6.7, "fully\nconnected", "1 logit"),
              (7.55, "sigmoid", "probability"), (8.45, "P(positive)", "> 0.5:\npositive"))
    for x, title, caption in stages:
        ax.text(x, 4.05, title, ha="center", va="center", fontsize=9.5)
        ax.text(x, 0.82, caption, ha="center", va="top", fontsize=9, color="dimgrey")
    _box(ax, 0.55, middle, 1.0, 1.0, "“A moving\nfilm with a\nbrilliant cast”", "white", fontsize=8.5, style="italic")
    rng = np.random.default_rng(0)
    by_token = {token: rng.uniform(-1, 1, 5) for token in dict.fromkeys(tokens)}  # one vector per word
    embedding = [by_token[token] for token in tokens]
    for y, token, token_id, vector in zip(rows, tokens, ids, embedding, strict=True):
        _box(ax, 1.6, y, 0.62, 0.3, token, "#eeeeee", fontsize=9)
        _box(ax, 2.35, y, 0.42, 0.3, str(token_id), "white", fontsize=9)
        for j, value in enumerate(vector):
            ax.add_patch(plt.Rectangle((2.9 + 0.12 * j, y - 0.15), 0.12, 0.3, facecolor=plt.cm.cividis((value + 1) / 2),
                                       edgecolor="white", linewidth=0.8))
        # The forward LSTM reads positions in order (downwards here), the backward one in reverse (upwards).
        _box(ax, 4.25, y, 0.42, 0.28, "", ORANGE)
        _box(ax, 4.85, y, 0.42, 0.28, "", SKY)
    for upper, lower in itertools.pairwise(rows):
        _arrow(ax, (4.25, upper - 0.14), (4.25, lower + 0.14), width=1.0)
        _arrow(ax, (4.85, lower + 0.14), (4.85, upper - 0.14), width=1.0)
    ax.text(4.25, 3.78, r"fwd $\downarrow$", ha="center", va="center", fontsize=8)
    ax.text(4.85, 3.78, r"bwd $\uparrow$", ha="center", va="center", fontsize=8)
    # The pooled vector: the forward half and the backward half, each the maximum over the 7 positions.
    for k in range(8):
        _box(ax, 5.85, 3.3 - 0.28 * k, 0.26, 0.24, "", ORANGE if k < 4 else SKY)
    _box(ax, 6.7, middle, 0.72, 0.6, r"$w^\top v + b$", "white", fontsize=8.5)
    _box(ax, 7.55, middle, 0.55, 0.55, r"$\sigma$", "white", fontsize=14)
    _box(ax, 8.45, middle, 0.65, 0.45, "0.91", GREEN, fontsize=11, color="white", weight="bold")
    for start, end in ((1.05, 1.29), (1.91, 2.14), (2.56, 2.9), (3.5, 4.04), (5.06, 5.72), (5.98, 6.34),
                       (7.06, 7.27), (7.83, 8.12)):
        _arrow(ax, (start, middle), (end, middle), color="dimgrey", width=1.2)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- command line
DIAGRAMS = {"3_pipeline.png": plot_pipeline, "3_lstm_cell.png": plot_lstm_cell}  # the lesson shows them as images


def main(argv=None):
    """`python helpers.py convert-checkpoint FOLDER --trust-pickled-file`; `python helpers.py diagrams`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python helpers.py", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    diagrams = commands.add_parser("diagrams", help="draw the lesson's fixed diagrams into figures/ (they never "
                                                    "change with a run, so the notebook shows the files)")
    diagrams.add_argument("--folder", default=str(REPO_DIR / "figures"), help="where to write them")
    convert = commands.add_parser("convert-checkpoint",
                                  help="rewrite an old checkpoint's weights.pt (a pickle) as weights.safetensors")
    convert.add_argument("folder", help="the checkpoint folder holding weights.pt, vocab.json and config.json")
    convert.add_argument("--trust-pickled-file", action="store_true",
                         help="required: you trust whoever made weights.pt, since unpickling it can run code")
    args = parser.parse_args(argv)
    if args.command == "diagrams":
        import matplotlib

        matplotlib.use("Agg")
        for name, draw in DIAGRAMS.items():
            draw(Path(args.folder) / name)
            print(f"wrote {Path(args.folder) / name}")
        return
    try:
        written = convert_legacy_checkpoint(args.folder, trust_pickled_file=args.trust_pickled_file)
    except (UntrustedCheckpointError, FileNotFoundError, FileExistsError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {written}; {LEGACY_WEIGHTS_FILE} removed")


if __name__ == "__main__":
    main()
