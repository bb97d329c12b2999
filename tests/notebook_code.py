"""The notebook's own definitions (model, training step, evaluation pass, predict_review), for tests and bench.

The lesson's code lives in notebooks/sentiment_lstm.ipynb, not in a module. These functions pull
the cells that define a name, or that contain a given text, out of the notebook and execute them
in a namespace, so that tests and the benchmark exercise exactly what the reader reads.
"""

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from IPython.display import display
from torch import nn

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "sentiment_lstm.ipynb"
sys.path.insert(0, str(REPO))

import helpers  # noqa: E402


def notebook_cells(path=NOTEBOOK):
    """The notebook's cells, as saved."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["cells"]


def code_cells(path=NOTEBOOK):
    """The sources of the notebook's code cells, in order."""
    return ["".join(c["source"]) for c in notebook_cells(path) if c["cell_type"] == "code"]


def cell_defining(name, path=NOTEBOOK):
    """The source of the code cell that defines `name` (a class or function)."""
    pattern = re.compile(rf"^(class|def) {re.escape(name)}\b", flags=re.MULTILINE)
    for source in code_cells(path):
        if pattern.search(source):
            return source
    raise LookupError(f"no cell of {Path(path).name} defines {name}")


def cell_containing(text, path=NOTEBOOK):
    """The source of the one code cell that contains `text`."""
    found = [source for source in code_cells(path) if text in source]
    if len(found) != 1:
        raise LookupError(f"{len(found)} code cells of {Path(path).name} contain {text!r}; expected one")
    return found[0]


def default_parameters(path=NOTEBOOK):
    """The defaults of the notebook's cell tagged 'parameters'."""
    for cell in notebook_cells(path):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            namespace = {}
            exec("".join(cell["source"]), namespace)  # noqa: S102 - the notebook's own parameters cell
            return {k: v for k, v in namespace.items() if k in helpers.PARAM_SPECS}
    raise LookupError(f"{Path(path).name} has no cell tagged 'parameters'")


def namespace(*names, **values):
    """A namespace holding the notebook's imports, `values`, and the notebook's definitions of `names`."""
    space = {"torch": torch, "nn": nn, "np": np, "helpers": helpers, "display": display, **values}
    for name in names:
        exec(cell_defining(name), space)  # noqa: S102 - the notebook's own code
    return space
