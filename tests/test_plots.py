"""Every plot of helpers draws a Figure and, given a path, saves a PNG there (in a folder it makes)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import helpers  # noqa: E402

# matplotlib's mathtext calls pyparsing's old names; the warning comes from pyparsing.util, which pyproject's
# filter of matplotlib.* does not match.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pyparsing.*")
TOKENS = torch.tensor([[5, 6, 7], [8, 0, 0]])
PLOTS = {
    "lstm_cell": lambda path: helpers.plot_lstm_cell(path),
    "pipeline": lambda path: helpers.plot_pipeline(path),
    "history": lambda path: helpers.plot_history({"epoch": [1, 2], "train_loss": [0.6, 0.4], "valid_loss": [0.5, 0.45],
                                                  "train_acc": [0.7, 0.8], "valid_acc": [0.75, 0.78], "best_epoch": 2},
                                                 path),
    "lengths": lambda path: helpers.plot_lengths(np.arange(1, 1000), 800, path),
    "confusion": lambda path: helpers.plot_confusion([[40, 10], [5, 45]], path),
    "attributions": lambda path: helpers.plot_attributions(["not", "bad", "at", "all"], [-0.2, 0.5, 0, 0.1], "x", path),
    "accuracy_by_length": lambda path: helpers.plot_accuracy_by_length(["1–9", "> 10 (cut)"], [0.8, 0.7], [5, 2], path),
    "reliability": lambda path: helpers.plot_reliability({"model": [(0.6, 0.55, 10), (0.9, 0.85, 30)]}, path),
    "padding_demo": lambda path: helpers.plot_padding_demo(TOKENS, torch.tensor([3, 1]), TOKENS.flip(1),
                                                           TOKENS != 0, path),
}


@pytest.mark.parametrize("name", PLOTS)
def test_a_plot_returns_its_figure_and_saves_nothing_without_a_path(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = PLOTS[name](None)
    assert isinstance(fig, Figure) and not list(tmp_path.iterdir())
    plt.close(fig)


@pytest.mark.parametrize("name", PLOTS)
def test_a_plot_given_a_path_saves_a_png_there(name, tmp_path):
    path = tmp_path / "nested" / f"{name}.png"
    plt.close(PLOTS[name](path))
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000
