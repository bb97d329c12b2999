"""Shared, tested helpers for the sentiment-LSTM notebook.

The plumbing lives here: downloading and extracting the IMDB data, cleaning and tokenizing,
the vocabulary, batching, word-vector counting, checkpoints, early-stopping bookkeeping,
progress display, metrics and plots. The notebook imports this module and holds the lesson:
the LSTM, the training step and the evaluation pass are written out there.

Every use of torchtext is in this file, so that replacing torchtext touches nothing else. Where
torchtext cannot be used (not installed, or installed with a torch it cannot load: it needs torch
2.3), or where SENTIMENT_NO_TORCHTEXT=1 is set, this file uses its own tokenizer and vocabulary,
which give the same tokens, the same vocabulary and the same ids (tests/test_stacks.py).
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
import itertools
import json
import math
import os
import platform
import random
import re
import shutil
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

STACK_FIX = 'pip install torch==2.3.1 torchtext==0.18.0 "numpy<2"'
# torch alone, the CPU-only build (no CUDA libraries); torchtext is not needed (see check_stack)
TORCH_FIX = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def _older(version, than):
    """Whether a version string such as '2.3.1+cpu' is older than the (major, minor) pair `than`."""
    numbers = re.match(r"(\d+)\.(\d+)", version or "")
    return numbers is not None and (int(numbers[1]), int(numbers[2])) < than


def check_stack(versions=None, no_torchtext=None):
    """Whether to use torchtext (True) or this file's own tokenizer and vocabulary (False).

    Raise ImportError, naming what is missing and the fix, only for what cannot work: no torch,
    or a torch older than 2.3. torchtext 0.18.0, its last release, is compiled against torch 2.3;
    with another torch (the usual case on hosted notebooks) `import torchtext` dies with an
    undefined-symbol error that says nothing useful. So the installed versions are compared
    before it is imported, and torchtext is used only with torch 2.3.x; otherwise (torchtext
    missing, another torchtext or torch, or SENTIMENT_NO_TORCHTEXT=1 in the environment) the
    built-in tokenizer and vocabulary are used, which give the same tokens and ids.
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
    if torch_version is None or _older(torch_version, (2, 3)):
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

if USE_TORCHTEXT:
    try:
        import torchtext
    except (ImportError, OSError) as error:  # the versions matched, but the library did not load
        warnings.warn(f"torchtext did not load ({error}); helpers.py uses its own tokenizer and vocabulary "
                      "instead (the same tokens and ids)", stacklevel=1)
        USE_TORCHTEXT = False
if USE_TORCHTEXT:
    # torchtext warns at every import that 0.18 is its last release; the README says so once.
    torchtext.disable_torchtext_deprecation_warning()
    from torchtext.data.utils import get_tokenizer
    from torchtext.vocab import build_vocab_from_iterator
    from torchtext.vocab import vocab as vocab_from_ordered_dict
else:
    # environment_info records torchtext.__version__: None there says the built-in path ran.
    torchtext = types.SimpleNamespace(__version__=None)

REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = REPO_DIR / "data"
SAMPLE_DIR = DATA_DIR / "sample" / "aclImdb"
RUNS_DIR = REPO_DIR / "runs"

# The authors' archive, the same URL and checksum torchtext's IMDB loader uses.
IMDB_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
IMDB_FOLDERS = ("train/pos", "train/neg", "test/pos", "test/neg")

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
LABEL_NAMES = ("negative", "positive")


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamSpec:
    """What one notebook parameter accepts."""

    kind: type | tuple[type, ...]
    allowed: str
    check: object = None  # a callable value -> bool, or None


def _positive(value):
    return value > 0


POOLINGS = ("last", "max", "mean", "max+mean")  # the ways pool_over_time summarises a review

PARAM_SPECS = {
    "imdb_archive": ParamSpec(str, "a path to aclImdb_v1.tar.gz, or '' to download"),
    "use_sample": ParamSpec(bool, "True or False"),
    "valid_fraction": ParamSpec(float, "a fraction with 0 < value < 1", lambda v: 0 < v < 1),
    "train_size": ParamSpec(int, "0 (every training review) or an integer >= 2", lambda v: v == 0 or v >= 2),
    "n_epochs": ParamSpec(int, "an integer >= 1 (0 only with init_checkpoint)", lambda v: v >= 0),
    "patience": ParamSpec(int, "an integer >= 1", lambda v: v >= 1),
    "average_epochs": ParamSpec(int, "an integer >= 1 (1: the best epoch's weights alone)", _positive),
    "n_models": ParamSpec(int, "an integer >= 1 (1: one model, no ensemble)", _positive),
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
    "n_layers": ParamSpec(int, "an integer >= 1", _positive),
    "bidirectional": ParamSpec(bool, "True or False"),
    "pooling": ParamSpec(str, "'last', 'max', 'mean' or 'max+mean'", lambda v: v in POOLINGS),
    "embedding_dropout": ParamSpec(float, "a float with 0 <= value < 1", lambda v: 0 <= v < 1),
    "dropout": ParamSpec(float, "a float with 0 <= value < 1", lambda v: 0 <= v < 1),
    "lr": ParamSpec(float, "a float > 0", _positive),
    "clip_norm": ParamSpec(float, "a float > 0", _positive),
    "adversarial_epsilon": ParamSpec(float, "a finite float >= 0 (0: no adversarial training)",
                                     lambda v: math.isfinite(v) and v >= 0),
    "seed": ParamSpec(int, "an integer >= 0", lambda v: v >= 0),
    "device": ParamSpec(str, "'auto', 'cpu' or 'cuda'", lambda v: v in ("auto", "cpu", "cuda")),
    "ig_steps": ParamSpec(int, "an integer >= 1", _positive),
    "shaded_tokens": ParamSpec(int, "an integer >= 1", _positive),
    "run_dir": ParamSpec(str, "a folder path, or '' for a new folder under runs/"),
    "init_checkpoint": ParamSpec(str, "a checkpoint folder, or '' to train"),
    "predict_file": ParamSpec(str, "a text file with one review per line, or ''"),
}


def validate_params(params):
    """Check every notebook parameter and return them as a plain dict, or raise naming the bad one."""
    missing = sorted(set(PARAM_SPECS) - set(params))
    if missing:
        raise ValueError(f"missing parameters: {', '.join(missing)}")
    check_parameter_names(params)
    checked = {}
    for name, spec in PARAM_SPECS.items():
        value = params[name]
        # papermill passes 1e-3 as a float but 1 as an int; accept an int where a float is asked.
        if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        is_bool = isinstance(value, bool)
        wrong_type = not isinstance(value, spec.kind) or (is_bool and spec.kind is not bool)
        if wrong_type or (spec.check is not None and not spec.check(value)):
            raise ValueError(f"parameter {name}={value!r} is not valid: expected {spec.allowed}")
        checked[name] = value
    if checked["n_epochs"] == 0 and not checked["init_checkpoint"]:
        raise ValueError("parameter n_epochs=0 is only valid with init_checkpoint; expected n_epochs >= 1")
    for name in ("imdb_archive", "init_checkpoint", "predict_file"):
        if checked[name] and not Path(checked[name]).exists():
            raise ValueError(f"parameter {name}={checked[name]!r} is not valid: no such file or folder")
    if checked["init_checkpoint"] and checked["n_epochs"] > 0:
        config_file = Path(checked["init_checkpoint"]) / "config.json"
        n_models = json.loads(config_file.read_text()).get("n_models", 1) if config_file.exists() else 1
        if n_models > 1:
            raise ValueError(f"parameter init_checkpoint={checked['init_checkpoint']!r} holds an ensemble of "
                             f"{n_models} models, which a run can use as it is (n_epochs=0) but not train on; "
                             "train on from a single model's checkpoint")
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
    """The parameters papermill injected in this run, {name: value}, read from the kernel's input history.

    papermill passes `-p name value` by running a cell that starts with '# Parameters' right
    after the notebook's parameters cell, so a misspelt name would silently define a new
    variable. We look back for that cell (in IPython's `In`), stopping at the parameters cell
    itself (the entry holding `parameters_marker`), and return what it assigns.
    """
    for source in reversed(history[-10:]):
        if source.startswith(PAPERMILL_HEADER):
            return assigned_values(source)
        if parameters_marker in source:
            return {}
    return {}


# --------------------------------------------------------------------------- setup


def set_seed(seed):
    """Seed Python, numpy and torch so that a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def flush_denormal_floats():
    """Make the CPU treat denormal floats (magnitudes below about 1e-38) as zero.

    Gradients that fade through many LSTM steps end up denormal, and CPUs compute on those up to
    ten times slower; as zeros they change nothing a model learns. NumPy's float limits are
    looked up first, because NumPy warns when it meets a CPU that flushes them.
    """
    for dtype in (np.float16, np.float32, np.float64):
        np.finfo(dtype)  # cached by NumPy from now on
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


def environment_info(device):
    """Versions and hardware of this run, for metrics.json."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchtext": torchtext.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def new_run_dir(run_dir="", runs_dir=RUNS_DIR):
    """Create and return the folder for this run; refuse one that already holds a run."""
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
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    return run_dir


def peak_memory_mib(device):
    """This process's peak resident memory so far (and, on a GPU, peak tensor memory) in MiB."""
    peak = {}
    try:
        import resource
    except ImportError:  # Windows has no resource module
        resource = None
    if resource is not None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak["cpu_rss_mib"] = rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes there, KiB on Linux
    if device.type == "cuda":
        peak["gpu_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


# --------------------------------------------------------------------------- files


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


def md5sum(path, chunk_size=1 << 20):
    """The MD5 hex digest of a file."""
    digest = hashlib.md5()
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
        raise ConnectionError(
            f"could not download {url} ({err}). Without network access, download the archive "
            "elsewhere and pass its path as the imdb_archive parameter or the IMDB_ARCHIVE "
            "environment variable."
        ) from err
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
        if md5 is not None:
            actual = md5sum(partial)
            if actual != md5:
                raise ValueError(
                    f"checksum mismatch for {url}: expected MD5 {md5}, got {actual}; "
                    "the file was deleted, run again to download it anew"
                )
        os.replace(partial, dest)
    finally:
        # Whatever went wrong, never leave a partial file that looks like the archive.
        partial.unlink(missing_ok=True)
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


def extract_imdb(archive, data_dir=DATA_DIR, top="aclImdb", md5=None):
    """Extract the IMDB archive into data_dir/aclImdb, safely and atomically; return that folder.

    The folder's `.complete` marker records the archive's name and MD5, so that a later call
    knows which archive an extraction came from (see prepare_imdb).
    """
    archive, data_dir = Path(archive), Path(data_dir)
    target = data_dir / top
    if not archive.is_file():
        raise FileNotFoundError(f"IMDB archive {archive} does not exist")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
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
                origin = {"archive": archive.name, "md5": md5 or md5sum(archive)}
                write_json(staging / top / ".complete", origin)
                if target.exists():  # an interrupted extraction, or one from another archive: replaced
                    shutil.rmtree(target)
                os.replace(staging / top, target)
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

    An earlier extraction is reused only if it came from the same archive (same MD5); an
    archive given explicitly is never silently ignored: a different one is extracted in place of
    the old extraction, and we say so.
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


def read_unlabelled(root):
    """The unlabelled reviews of train/unsup (50,000 in the full data), in a fixed order."""
    folder = Path(root, "train", "unsup")
    paths = sorted(folder.glob("*.txt"), key=lambda p: p.name)
    if not paths:
        raise FileNotFoundError(f"no unlabelled reviews found in {folder}; set pretrain_embeddings=False "
                                "to train without them")
    return [path.read_text(encoding="utf-8") for path in paths]


def read_imdb(root, split):
    """Read one split ('train' or 'test') as (texts, labels) with 1 = positive, in a fixed order."""
    texts, labels = [], []
    for label, folder in ((0, "neg"), (1, "pos")):
        paths = sorted(Path(root, split, folder).glob("*.txt"), key=lambda p: p.name)
        if not paths:
            raise FileNotFoundError(f"no reviews found in {Path(root, split, folder)}")
        for path in paths:
            texts.append(path.read_text(encoding="utf-8"))
            labels.append(label)
    return texts, labels


# Settings that say only where a run reads or writes; any other injected value makes a run non-default.
LOCATION_PARAMETERS = ("imdb_archive", "run_dir")


def publish_notebook(executed, destination):
    """Copy a run's executed notebook to `destination` as the committed notebook, fit to run as it is.

    papermill's injected-parameters cell is dropped, so that "Run all" uses the parameters cell's
    defaults, and so is the run's record of paths in the notebook's metadata; images are stored
    in fewer bytes, with the same pixels (compact_png). Refused, with
    nothing written: a run given any parameter other than where to read and write (it would not
    be a default run; one given a default's own value is), a run that failed or was not run to
    the end, and outputs that name a path of this machine (the repository folder, the home
    folder, or the archive or run folder given).
    """
    notebook = json.loads(Path(executed).read_text(encoding="utf-8"))
    injected_cells = [c for c in notebook["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    injected = {}
    for cell in injected_cells:
        injected.update(injected_parameters(["".join(cell["source"])]))
    defaults = {}
    for cell in notebook["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            defaults.update(assigned_values("".join(cell["source"])))
    # a parameter given its default value (`-p seed 42`) leaves the run a default one
    not_default = sorted(name for name, value in injected.items()
                         if name not in LOCATION_PARAMETERS and (name not in defaults or defaults[name] != value))
    if not_default:
        raise ValueError(f"{executed} was run with {', '.join(not_default)} set; publish only a default run")
    notebook["cells"] = [c for c in notebook["cells"] if c not in injected_cells]
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    failed = [o for c in code for o in c.get("outputs", []) if o["output_type"] == "error"]
    if failed or not all(c.get("execution_count") for c in code):
        raise ValueError(f"{executed} is not one complete run: it holds errors, or cells that were not run")
    papermill_info = notebook.get("metadata", {}).get("papermill", {})
    for key in ("input_path", "output_path", "parameters", "environment_variables"):
        papermill_info.pop(key, None)
    for cell in notebook["cells"]:  # per-cell timestamps say nothing to a reader; keep each cell's duration
        metadata = cell.get("metadata", {})
        metadata.pop("execution", None)
        if "papermill" in metadata:
            metadata["papermill"] = {k: v for k, v in metadata["papermill"].items() if k == "duration"}
    for cell in code:
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                output["data"]["image/png"] = compact_png(output["data"]["image/png"])
    text = json.dumps(notebook)
    paths = [str(REPO_DIR), str(Path.home()), str(injected.get("imdb_archive", ""))]
    if Path(str(injected.get("run_dir", ""))).is_absolute():
        paths.append(str(injected["run_dir"]))
    found = sorted({p for p in paths if len(p) > 1 and (p in text or json.dumps(p)[1:-1] in text)})
    if found:
        raise ValueError(f"{executed} names paths of this machine in its outputs: {', '.join(found)}")
    write_atomic(destination, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return destination


def compact_png(png_base64):
    """The same picture in fewer bytes: a fully opaque RGBA PNG re-encoded as RGB, optimised; pixels unchanged."""
    import base64
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(png_base64)))
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode("ascii")
    return smaller if len(smaller) < len(png_base64) else png_base64


def shown_path(path):
    """A path as a run reports it: relative to the repository when inside it, so no machine's folders show."""
    path = Path(path).resolve()
    return path.relative_to(REPO_DIR).as_posix() if path.is_relative_to(REPO_DIR) else str(path)


# --------------------------------------------------------------------------- text


_BREAK = re.compile(r"<br\s*/?>", flags=re.IGNORECASE)
_TAG = re.compile(r"<[^>]{0,200}>")


def clean_text(text):
    """Remove HTML line breaks and tags and decode entities such as &amp;."""
    text = _BREAK.sub(" ", text)
    text = _TAG.sub(" ", text)
    return html.unescape(text)


# torchtext 0.18's basic_english tokenizer (torchtext/data/utils.py, _basic_english_normalize):
# lower(), these substitutions in this order, then split() on whitespace.
_BASIC_ENGLISH_RULES = [(re.compile(pattern), replacement) for pattern, replacement in (
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "), (r"\(", " ( "), (r"\)", " ) "),
    (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "), (r"\:", " "), (r"\s+", " "))]


def _basic_english_normalize(line):
    """torchtext's basic_english tokenizer, without torchtext: the same tokens for any text."""
    line = line.lower()
    for pattern, replacement in _BASIC_ENGLISH_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


_basic_english = get_tokenizer("basic_english") if USE_TORCHTEXT else _basic_english_normalize


def tokenize(text):
    """Clean a review and split it into lower-case tokens with torchtext's basic_english tokenizer.

    Every token is interned (sys.intern): all the reviews' copies of "the" are one string in
    memory, so that the token lists of 100,000 reviews take a few hundred MB, not gigabytes.
    """
    return [sys.intern(token) for token in _basic_english(clean_text(text))]


class _Vocab:
    """The part of torchtext's Vocab that the project uses, in plain Python, with the same results.

    Tokens and ids both ways (get_itos, get_stoi, lookup_token(s), lookup_indices, calling it), len,
    `in`, vocab[token], and the default index that unknown tokens get (without one, an unknown
    token or an index out of range raises RuntimeError, as in torchtext). A dict and a list: no
    C++ table that reserves room for 30 million entries (0.12 GiB) whatever the size.
    """

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

    Tokens by descending count, ties in code-point order; the cut to max_tokens - len(specials)
    comes before specials are taken out and before min_freq, as there.
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
    """A vocabulary of the most frequent tokens, with <pad> = 0 and <unk> = 1 as default.

    torchtext's where it is used, else a _Vocab with the same tokens in the same order.
    """
    specials = [PAD_TOKEN, UNK_TOKEN]
    if USE_TORCHTEXT:
        vocab = build_vocab_from_iterator(
            token_lists, min_freq=min_freq, specials=specials, special_first=True, max_tokens=max_size
        )
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
    """Token ids for the first max_length tokens as an int32 array; unknown tokens map to <unk>.

    An array of 4-byte integers, where a list of Python ints takes about 36 bytes an id.
    """
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


def stratified_subset(indices, labels, size, seed):
    """Exactly `size` of the given indices, keeping the share of each label, reproducible from seed.

    Each label gets its share of `size` rounded down, and the reviews still missing go to the
    labels with the largest remainders: every label's count is within one of its exact share.
    """
    indices = np.asarray(indices)
    if size < 0 or size > len(indices):
        raise ValueError(f"train_size={size} must be between 0 and the {len(indices):,} training reviews available")
    subset_labels = np.asarray(labels)[indices]
    rng = np.random.default_rng([seed, size])
    classes = np.unique(subset_labels)
    shares = np.array([size * np.sum(subset_labels == label) / len(indices) for label in classes])
    counts = np.floor(shares).astype(int)
    # Largest remainders first; a stable sort breaks ties by label order, so the result is seeded only.
    for i in np.argsort(-(shares - counts), kind="stable")[: size - counts.sum()]:
        counts[i] += 1
    chosen = []
    for label, n in zip(classes, counts, strict=True):
        of_label = indices[subset_labels == label]
        chosen.extend(rng.choice(of_label, size=n, replace=False).tolist())
    return sorted(chosen)


# --------------------------------------------------------------------------- word vectors


def cooccurrence_matrix(id_lists, vocab_size, window=5, ignore=(0, 1), n_chunks=8):
    """How often each pair of vocabulary tokens appears within `window` tokens of each other.

    A pair d tokens apart counts 1/d, so near neighbours weigh more. Tokens in `ignore` (by
    default <pad> and <unk>) are skipped, and pairs never cross from one review into the next.
    Returns a symmetric sparse [vocab_size, vocab_size] float64 tensor in CSR layout.

    The pairs are counted in `n_chunks` parts, each holding the pairs whose smaller id falls in
    it (ids modulo n_chunks), so that only about 1/n_chunks of the pairs is in memory at once;
    every part's counts are final, and the result does not depend on n_chunks.
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
    apart = low != high
    rows = np.concatenate([low, high[apart]])
    cols = np.concatenate([high, low[apart]])
    values = np.concatenate([np.where(apart, weights, 2 * weights), weights[apart]])
    del low, high, weights, apart
    return _csr_matrix(rows, cols, values, vocab_size)


def _csr_matrix(rows, cols, values, size):
    """A [size, size] sparse CSR tensor (int32 indices) from unsorted, distinct (row, col) entries."""
    key = rows.astype(np.int64)
    key *= size
    key += cols
    order = np.argsort(key)
    del key
    crow = np.zeros(size + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=size), out=crow[1:])
    cols = cols[order]
    values = values[order]
    del order
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


def _csr_transpose(matrix):
    """The transpose of a square CSR tensor, as CSR."""
    rows = _csr_rows(matrix).numpy()
    return _csr_matrix(matrix.col_indices().numpy(), rows, matrix.values().numpy(), matrix.size(0))


def ppmi(counts, context_power=0.75):
    """Positive pointwise mutual information of a sparse co-occurrence matrix, as float32 CSR.

    PMI(w, c) = log p(w, c) / (p(w) p(c)): how much more often two words meet than chance says.
    Negative values (rarer than chance, and noisy) become 0. Raising the context counts to
    `context_power` < 1 keeps rare contexts from getting huge scores (Levy et al., 2015).
    """
    if counts.layout != torch.sparse_csr:
        counts = counts.to_sparse_csr()
    rows, cols, values = _csr_rows(counts), counts.col_indices(), counts.values().double()
    row_totals = torch.zeros(counts.size(0), dtype=torch.float64).index_add_(0, rows, values)
    context = row_totals ** context_power
    # pmi = log(value * sum(context) / (row_total[row] * context[col])), in place: the matrix can be large.
    chance = row_totals[rows]
    chance.mul_(context[cols])
    pmi = values * context.sum()
    pmi.div_(chance).log_()
    del chance
    keep = pmi > 0
    # Keeping some entries of each row leaves them in CSR order; only the row starts change.
    crow = torch.zeros(counts.size(0) + 1, dtype=cols.dtype)
    crow[1:] = torch.bincount(rows[keep], minlength=counts.size(0)).cumsum(0)
    del rows
    return _csr_tensor(crow, cols[keep], pmi[keep].float(), counts.shape)


def svd_word_vectors(matrix, dim, seed=0, n_iter=4):
    """dim-dimensional word vectors from a truncated SVD of a (PPMI) matrix: U * sqrt(S).

    A randomised SVD (Halko et al., 2011; the algorithm of torch.svd_lowrank): multiplying the
    matrix and its transpose by a random [n, dim] block a few times finds the directions that
    matter most, and an exact SVD of the small [n, dim] result gives them. Written out here with
    an explicit transposed copy, because torch.svd_lowrank on a large sparse matrix makes
    several temporary copies of it.

    The vectors are scaled to a standard deviation of 1, the scale of nn.Embedding's own random
    initialisation, so that training treats them like the vectors it would start from anyway.
    Rows that are all zero (<pad>, <unk>, words never counted) stay zero. The random block is
    drawn from a seeded generator, leaving torch's global random state as it was.
    """
    if not 1 <= dim <= min(matrix.shape):
        raise ValueError(f"dim={dim!r} must lie between 1 and {min(matrix.shape)}")
    if matrix.layout != torch.sparse_csr:
        matrix = matrix.to_sparse_csr()
    if matrix.size(0) != matrix.size(1):
        raise ValueError(f"the matrix must be square; got {tuple(matrix.shape)}")
    transposed = _csr_transpose(matrix)
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


def pretrain_word_vectors(token_lists, vocab, dim, window=5, context_power=0.75, seed=0):
    """Word vectors for every vocabulary entry from co-occurrence counts in token_lists.

    The count-based cousin of word2vec: count which words appear near which (cooccurrence_matrix),
    keep the surprising pairs (ppmi) and compress each word's row to `dim` numbers
    (svd_word_vectors). Words used in similar contexts, such as 'awful' and 'dreadful', get
    similar vectors. token_lists may be a generator: each review becomes an int32 id array as it
    is read, so that the tokens of all reviews never need to be in memory at once.
    Returns a [len(vocab), dim] float32 tensor.
    """
    ignore = (vocab[PAD_TOKEN], vocab[UNK_TOKEN])
    id_arrays = [np.array(vocab.lookup_indices(tokens), dtype=np.int32) for tokens in token_lists]
    counts = cooccurrence_matrix(id_arrays, len(vocab), window, ignore)
    del id_arrays
    if counts.values().numel() == 0:
        raise ValueError("no two vocabulary words occur near each other in the texts; nothing to learn from")
    weights = ppmi(counts, context_power)
    del counts
    vectors = svd_word_vectors(weights, dim, seed)
    del weights
    return_freed_memory()
    return vectors


def return_freed_memory():
    """Hand memory that Python and torch have freed back to the operating system, where possible.

    After many large temporary arrays, glibc's allocator keeps freed pages for reuse, and the
    process looks hundreds of MB bigger than what it holds; malloc_trim releases them. A no-op
    where the C library has no malloc_trim (macOS, Windows, musl).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def nearest_words(vectors, vocab, word, k=8):
    """The k vocabulary words whose vectors are most similar (cosine) to word's."""
    index = vocab[word]
    if index == vocab[UNK_TOKEN]:
        raise KeyError(f"{word!r} is not in the vocabulary")
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = unit @ unit[index]
    similarity[index] = -2  # not itself
    return vocab.lookup_tokens(similarity.topk(k).indices.tolist())


# --------------------------------------------------------------------------- batching


def pad_batch(sequences, pad_index=0):
    """Right-pad id lists or arrays into a [batch, max_len] tensor; returns (tokens, lengths)."""
    lengths = torch.tensor([max(len(s), 1) for s in sequences], dtype=torch.long)
    tokens = torch.full((len(sequences), int(lengths.max())), pad_index, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = torch.as_tensor(seq)
    return tokens, lengths


class BucketBatches:
    """Batches of reviews of similar length, so that little compute is spent on padding.

    For training, examples are shuffled, then sorted by length within pools of
    `pool_batches` batches, and the batches are shuffled again: every epoch sees a new order
    while each batch holds reviews of nearly equal length. Without shuffling, batches follow
    length order. The last, smaller batch is kept, so every review is used.
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
        batches = self.batch_indices()
        padded = sum(len(idx) * lengths[idx].max() for idx in batches)
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


# --------------------------------------------------------------------------- model parts


# At most this many token slots (reviews x padded length) go through the LSTM with gradients at once:
# 64 reviews of 400 tokens. Training and explanations cut longer batches into parts (batch_parts).
MAX_BATCH_TOKENS = 25_600


def batch_parts(n_reviews, seq_len, max_tokens=MAX_BATCH_TOKENS):
    """Slices that cut a batch of n_reviews, padded to seq_len tokens, into parts of at most max_tokens tokens.

    The backward pass needs every activation of the forward pass at once: for 64 reviews of 800
    tokens, about 0.6 GiB. Trained part by part, each part's loss weighted by its share of the
    batch, the gradients add up to the whole batch's while one part's activations are held. A part
    holds at least one review, and the parts of a batch differ in size by at most one review.
    """
    if n_reviews < 1 or seq_len < 1 or max_tokens < 1:
        raise ValueError(f"batch_parts needs positive sizes, got {n_reviews} reviews of {seq_len} tokens, "
                         f"at most {max_tokens} tokens a part")
    n_parts = math.ceil(n_reviews / max(1, max_tokens // seq_len))
    bounds = [round(k * n_reviews / n_parts) for k in range(n_parts + 1)]
    return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def reverse_padded(x, lengths):
    """Reverse each sequence's first `length` steps, leaving the padding at the end.

    x: [batch, seq_len, features]. Running an LSTM over the result reads every review
    backwards without ever reading padding before a real word. Applying it twice gives x back.
    """
    seq_len = x.size(1)
    positions = torch.arange(seq_len, device=x.device).unsqueeze(0)  # [1, seq_len]
    lengths = lengths.to(x.device).unsqueeze(1)  # [batch, 1]
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)  # [batch, seq_len]
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def padding_mask(lengths, seq_len):
    """A [batch, seq_len] bool mask, True at real tokens."""
    return torch.arange(seq_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def pool_over_time(outputs, lengths, how):
    """Summarise [batch, seq_len, features] LSTM outputs per review, ignoring padding.

    'last': the output at each review's last real token; 'max': the largest value of each
    feature over the real tokens; 'mean': their average; 'max+mean': both, side by side
    ([batch, 2 * features]).
    """
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


# --------------------------------------------------------------------------- training plumbing


def interactive_frontend():
    """True in JupyterLab or Jupyter Notebook, where a live progress bar helps; False in batch runs.

    jupyter_server names the session of every kernel it starts in JPY_SESSION_NAME; papermill
    and nbval start their kernels without it, so their saved outputs hold no bar fragments.
    """
    return "JPY_SESSION_NAME" in os.environ


def progress(iterable, desc, total=None):
    """A live progress bar over iterable in JupyterLab (a widget), nothing extra in batch runs."""
    if not interactive_frontend():
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=1.0)


class EarlyStopping:
    """The bookkeeping of early stopping: keep the best epoch by validation loss, say when to stop.

    Each better validation loss saves the model's weights (with the vocabulary and configuration)
    to checkpoint_dir; after `patience` epochs without a better one, should_stop is True.
    """

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


def averaging_window(best_epoch, last_epoch, size):
    """The `size` consecutive epochs around best_epoch, within 1..last_epoch, whose weights are averaged.

    The window is centred on the best epoch (one more epoch after it than before when `size` is
    even), moved inwards where it would run past the first or the last epoch, and shortened to
    every epoch when there are fewer than `size`.
    """
    if not 1 <= best_epoch <= last_epoch:
        raise ValueError(f"best_epoch {best_epoch} is not an epoch of 1..{last_epoch}")
    if size < 1:
        raise ValueError(f"an averaging window needs at least one epoch, got size {size}")
    size = min(size, last_epoch)
    first = best_epoch - (size - 1) // 2
    first = max(1, min(first, last_epoch - size + 1))
    return list(range(first, first + size))


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


def predict_batches(model, batches, device):
    """Probabilities of 'positive' for every example of batches, in the examples' original order."""
    return sigmoid(predict_logits(model, batches, device))


def binary_metrics(probs, labels, threshold=0.5):
    """Loss, accuracy, precision, recall, F1 and the confusion matrix [[TN, FP], [FN, TP]]."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    predicted = probs >= threshold
    tp = int(np.sum(predicted & (labels == 1)))
    tn = int(np.sum(~predicted & (labels == 0)))
    fp = int(np.sum(predicted & (labels == 0)))
    fn = int(np.sum(~predicted & (labels == 1)))
    eps = 1e-7  # keeps log(0) finite, as torch's BCE loss clamps it
    clipped = np.clip(probs, eps, 1 - eps)
    loss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"loss": loss, "accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall,
            "f1": f1, "confusion_matrix": [[tn, fp], [fn, tp]]}


# --------------------------------------------------------------------------- the n-gram baseline


def nb_log_count_ratios(features, labels, alpha=1.0):
    """Naive-Bayes log-count ratio of each feature: log((p / |p|_1) / (q / |q|_1)).

    p is alpha plus the feature's column sum over the positive examples, q the same over the
    negative ones (Wang & Manning, 2012). Positive ratios mark features of positive reviews.
    """
    labels = np.asarray(labels)
    if set(np.unique(labels).tolist()) != {0, 1}:
        raise ValueError("the labels must hold both classes, 0 and 1")
    p = alpha + np.asarray(features[labels == 1].sum(axis=0), dtype=np.float64).ravel()
    q = alpha + np.asarray(features[labels == 0].sum(axis=0), dtype=np.float64).ravel()
    return np.log((p / p.sum()) / (q / q.sum())).astype(np.float32)


class NBNgramFeatures:
    """Binary word n-gram features scaled by their naive-Bayes log-count ratios (the features of NBSVM).

    `fit` learns the n-grams and their ratios from training token lists only: an n-gram that no
    training review holds has no column, so it carries no weight whatever reviews come later.
    """

    def __init__(self, ngram_range=(1, 2), alpha=1.0):
        self.ngram_range, self.alpha = tuple(ngram_range), alpha

    def _counts(self, token_lists, fit=False):
        if fit:
            from sklearn.feature_extraction.text import CountVectorizer

            # The token lists are ours already (helpers.tokenize): no second tokenizer, no lower-casing.
            self.vectorizer = CountVectorizer(tokenizer=_same, preprocessor=_same, token_pattern=None,
                                              lowercase=False, ngram_range=self.ngram_range, binary=True,
                                              dtype=np.float32)
            return self.vectorizer.fit_transform(token_lists)
        return self.vectorizer.transform(token_lists)

    def fit(self, token_lists, labels):
        """Learn the vocabulary of n-grams and their ratios; returns self."""
        self.ratios = nb_log_count_ratios(self._counts(token_lists, fit=True), labels, self.alpha)
        return self

    def transform(self, token_lists):
        """A sparse matrix: row i holds the ratios of the n-grams that review i contains, 0 elsewhere."""
        if not hasattr(self, "ratios"):
            raise RuntimeError("call fit(training token lists, labels) before transform")
        return self._counts(token_lists).multiply(self.ratios).tocsr()

    def feature_names(self):
        """The n-grams, in column order."""
        return self.vectorizer.get_feature_names_out()


def _same(tokens):
    return tokens


# --------------------------------------------------------------------------- checkpoints


WEIGHTS_FILE = "weights.safetensors"
LEGACY_WEIGHTS_FILE = "weights.pt"


class UntrustedCheckpointError(ValueError):
    """A checkpoint whose weights are in torch's pickle format, which this project never loads unasked."""


def save_checkpoint(folder, model, vocab=None, config=None):
    """Save the weights (weights.safetensors) and, if given, the vocabulary and config as JSON, atomically.

    safetensors holds only tensors (names, dtypes, shapes, raw numbers), so reading one back can
    never run code, unlike torch's pickle-based .pt files.
    """
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


def read_weights(folder):
    """The state_dict in folder/weights.safetensors; an old weights.pt is refused, never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    if not path.exists():
        if (folder / LEGACY_WEIGHTS_FILE).exists():
            raise UntrustedCheckpointError(
                f"checkpoint {folder} holds {LEGACY_WEIGHTS_FILE}, torch's pickle format of earlier versions of this "
                f"project; loading such a file can run code hidden in it (CVE-2025-32434, CVE-2026-24747), so this "
                f"version reads only {WEIGHTS_FILE}. If you trust whoever made it, convert it once with "
                f"`python helpers.py convert-checkpoint {shown_path(folder)} --trust-pickled-file` (or "
                f"helpers.convert_legacy_checkpoint(folder, trust_pickled_file=True)), then load it as usual")
        raise FileNotFoundError(f"checkpoint {folder} lacks {WEIGHTS_FILE}")
    try:
        return safetensors_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err


def load_checkpoint(folder):
    """Load (state_dict, vocab, config) from a checkpoint folder: safetensors and JSON only, nothing pickled."""
    folder = Path(folder)
    state = read_weights(folder)
    for name in ("vocab.json", "config.json"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"checkpoint {folder} lacks {name}")
    vocab = vocab_from_tokens(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return state, vocab, config


def convert_legacy_checkpoint(folder, trust_pickled_file=False):
    """Rewrite an old checkpoint's weights.pt as weights.safetensors; only for a file whose maker you trust.

    This is the one place where the project unpickles anything, and it does so only when asked to
    with trust_pickled_file=True: torch.load can run code from a crafted file even with
    weights_only=True on the pinned torch 2.3.1 (CVE-2025-32434, CVE-2026-24747).
    """
    folder = Path(folder)
    legacy = folder / LEGACY_WEIGHTS_FILE
    if not legacy.exists():
        raise FileNotFoundError(f"{folder} has no {LEGACY_WEIGHTS_FILE} to convert")
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


def member_weights(state, index):
    """The weights of member `index` of an ensemble's state_dict (whose names start "members.<index>.")."""
    prefix = f"members.{index}."
    member = {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}
    if not member:
        members = sorted({int(name.split(".")[1]) for name in state if name.startswith("members.")})
        raise ValueError(f"the checkpoint has no member {index}; its members: {members or 'none (not an ensemble)'}")
    return member


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


# --------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_proba(model, texts, vocab, max_length, device, batch_size=64):
    """Probability of 'positive' for each text; each review is read up to its first max_length tokens."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"a review must be a str, got {type(text).__name__} (item {i})")
        if not text.strip():
            raise ValueError(f"review {i} is empty or only whitespace; there is nothing to classify")
    token_lists = [tokenize(text) for text in texts]
    for i, tokens in enumerate(token_lists):
        if not tokens:
            raise ValueError(f"review {i} has no words once HTML markup is removed: {texts[i][:60]!r}")
    encoded = [numericalize(tokens, vocab, max_length) for tokens in token_lists]
    batches = BucketBatches(encoded, [0] * len(encoded), batch_size)
    return predict_batches(model, batches, device)


def known_fraction(text, vocab):
    """The share of a text's tokens that the vocabulary knows."""
    tokens = tokenize(text)
    unk = vocab[UNK_TOKEN]
    return sum(vocab[t] != unk for t in tokens) / max(len(tokens), 1)


def write_predictions(path, line_numbers, reviews, probabilities):
    """Write predictions.csv: line number, label, probability of positive and the review."""
    rows = ["line,label,prob_positive,review"]
    for number, review, prob in zip(line_numbers, reviews, probabilities, strict=True):
        quoted = '"' + review.replace('"', '""') + '"'
        rows.append(f"{number},{LABEL_NAMES[int(prob >= 0.5)]},{prob:.6f},{quoted}")
    write_atomic(path, "\n".join(rows) + "\n")


def read_review_file(path):
    """Read one review per line: returns (reviews, their line numbers, skipped line numbers).

    Lines end at \\n or \\r\\n only: characters such as \\x85 (NEL, in 321 of IMDB's test reviews)
    or U+2028, which str.splitlines() would also break at, stay inside their review. A line
    with no words (blank, or only markup and spaces) is skipped and its number listed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predict_file {path} does not exist or is not a file")
    try:
        text = path.read_bytes().decode("utf-8")  # bytes: no universal-newline translation of a lone \r
    except UnicodeDecodeError as err:
        raise ValueError(f"predict_file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from err
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no line of its own
    reviews, numbers, skipped = [], [], []
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if tokenize(line):
            reviews.append(line)
            numbers.append(number)
        else:
            skipped.append(number)
    if not reviews:
        raise ValueError(f"predict_file {path} holds no review: every line is blank or has no words")
    return reviews, numbers, skipped


# --------------------------------------------------------------------------- explanations


def integrated_gradients(model, token_ids, device, steps=64, max_tokens=MAX_BATCH_TOKENS):
    """Each token's contribution to the logit, by integrated gradients on the embeddings.

    The baseline is the same review made only of <pad> tokens, whose embeddings are zero. The
    gradient of the logit is averaged along the straight path from the baseline to the review's
    embeddings (trapezoid rule over `steps` intervals) and multiplied by the embedding, summed
    over its dimensions. By completeness the contributions add up to logit(review) minus
    logit(baseline). The model must offer forward_embedded(embedded, lengths).
    Returns (contributions, logit, baseline_logit).
    """
    model.eval()
    tokens = torch.tensor([token_ids], dtype=torch.long, device=device)  # [1, seq_len]
    lengths = torch.tensor([len(token_ids)])
    with torch.no_grad():
        embedded = model.embedding(tokens)  # [1, seq_len, embedding_dim]
        baseline = model.embedding(torch.full_like(tokens, model.embedding.padding_idx))
    alphas = torch.linspace(0, 1, steps + 1, device=device).view(-1, 1, 1)  # [steps + 1, 1, 1]
    path = baseline + alphas * (embedded - baseline)  # [steps + 1, seq_len, dim]
    gradients, logits = [], []
    # The points of the path in parts of at most max_tokens tokens (as training's batches): each
    # point's gradient is its own, and a long review's 65 copies would need as much memory as a step.
    # cuDNN computes LSTM gradients only in training mode; the plain kernels work in eval mode.
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
    contributions = ((embedded[0] - baseline[0]) * average_gradient).sum(dim=1)  # [seq_len]
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


def strongest_window(contributions, size):
    """(start, stop) of the `size` consecutive tokens with the largest total |contribution|."""
    weights = np.abs(np.asarray(contributions, dtype=np.float64))
    if len(weights) <= size:
        return 0, len(weights)
    sums = np.convolve(weights, np.ones(size), mode="valid")  # sums[i]: tokens i .. i + size - 1
    start = int(np.argmax(sums))
    return start, start + size


class ShadedTokens:
    """Tokens shaded by contribution: HTML in Jupyter, and a plain-text form elsewhere.

    The text form marks the strongest tokens with their contribution, e.g. `superb[+0.81]`,
    so that a static page or a terminal still shows what the shading shows.
    """

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


# --------------------------------------------------------------------------- calibration


def expected_calibration_error(probs, labels, n_bins=10):
    """ECE of the predicted label's confidence (Guo et al., 2017), with equal-width bins on [0.5, 1].

    Returns (ece, bins), where bins lists (mean confidence, accuracy, count) per non-empty bin.
    """
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


def accuracy_by_length(token_counts, probs, labels, max_length, n_bins=4):
    """Accuracy by review length: returns (bin labels, accuracies, counts).

    Reviews that fit in max_length are split into n_bins bins of about equal size; the reviews
    longer than max_length, which the model reads only in part, get a last bin of their own.
    """
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


# --------------------------------------------------------------------------- plots


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


def plot_lengths(token_counts, max_length, path=None, also_mark=(400,)):
    """Histogram of review lengths in tokens, with max_length (and other lengths worth comparing) marked.

    The axis stops where 99.5 % of the reviews are in (or just past the marks); the title says
    how many longer reviews lie beyond it.
    """
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


def plot_attributions(tokens, contributions, title, path=None, width_in_chars=110):
    """The review's words shaded by contribution (green: towards positive, red: towards negative)."""
    import matplotlib.pyplot as plt

    # Flow the words into lines by their length in characters, as a text would wrap.
    lines, line, used = [], [], 0
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


def plot_accuracy_by_length(names, accuracies, counts, path=None):
    """Test accuracy per review-length bin, with each bin's number of reviews; the axis starts at chance (0.5)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    colors = ["tab:orange" if name.startswith(">") else "tab:blue" for name in names]
    bars = ax.bar(names, accuracies, color=colors)
    for bar, accuracy, count in zip(bars, accuracies, counts, strict=True):
        ax.annotate(f"{accuracy:.3f}\n{count:,} reviews", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="review length in tokens", ylabel="test accuracy", ylim=(0.5, 1.05),
           title="Accuracy by review length (0.5 is chance)")
    fig.tight_layout()
    return _save(fig, path)


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


def plot_padding_demo(tokens, lengths, reversed_tokens, mask, path=None):
    """A toy padded batch, the same batch reversed within each length, and the pooling mask, as three grids."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    panels = (("padded batch (0 = <pad>)", tokens), ("reversed within each length", reversed_tokens),
              ("pooling mask (1 = real token)", mask.long()))
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.3))
    for ax, (title, grid) in zip(axes, panels, strict=True):
        grid = grid.numpy()
        is_pad = ~mask.numpy()
        ax.imshow(is_pad, cmap=ListedColormap(["#cfe3f7", "#eeeeee"]), vmin=0, vmax=1)
        for (row, col), value in np.ndenumerate(grid):
            ax.text(col, row, str(value), ha="center", va="center", fontsize=10,
                    color="grey" if is_pad[row, col] else "black")
        ax.set(title=title, xlabel="position", xticks=range(grid.shape[1]), yticks=range(grid.shape[0]),
               yticklabels=[f"review {i} (length {n})" for i, n in enumerate(lengths.tolist())] if ax is axes[0]
               else [])
        ax.title.set_fontsize(10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


# --------------------------------------------------------------------------- command line


def main(argv=None):
    """`python helpers.py convert-checkpoint FOLDER --trust-pickled-file`: the one command line this module has."""
    import argparse

    parser = argparse.ArgumentParser(prog="python helpers.py", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert-checkpoint",
                                  help="rewrite an old checkpoint's weights.pt (a pickle) as weights.safetensors")
    convert.add_argument("folder", help="the checkpoint folder holding weights.pt, vocab.json and config.json")
    convert.add_argument("--trust-pickled-file", action="store_true",
                         help="required: you trust whoever made weights.pt, since unpickling it can run code")
    args = parser.parse_args(argv)
    try:
        written = convert_legacy_checkpoint(args.folder, trust_pickled_file=args.trust_pickled_file)
    except (UntrustedCheckpointError, FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {written}; {LEGACY_WEIGHTS_FILE} removed")


if __name__ == "__main__":
    main()
