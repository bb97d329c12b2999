"""The notebook end to end on the bundled sample, through papermill, as `make run` runs it."""

import csv
import json
import re
from pathlib import Path

import papermill
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "sentiment_lstm.ipynb"
REVIEWS = REPO / "tests" / "fixtures" / "reviews.txt"
KERNEL = "sentiment-lstm"
TINY = dict(use_sample=True, n_epochs=2, embedding_dim=16, hidden_dim=16, max_vocab_size=3000, batch_size=16,
            max_length=200, predict_file=str(REVIEWS))


def execute(tmp_path, name, **parameters):
    """Run the notebook with papermill; returns (run folder, executed notebook)."""
    run_dir = tmp_path / name
    parameters = dict(TINY, run_dir=str(run_dir), **parameters)
    output = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(NOTEBOOK, output, parameters=parameters, kernel_name=KERNEL, cwd=REPO,
                               progress_bar=False)
    return run_dir, json.loads(output.read_text())


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    return execute(tmp_path_factory.mktemp("runs"), "first")


def read_predictions(run_dir):
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_run_folder_holds_metrics_checkpoint_figures_and_predictions(sample_run):
    run_dir, _ = sample_run
    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert {"metrics.json", "predictions.csv", "checkpoint/weights.pt", "checkpoint/vocab.json",
            "checkpoint/config.json", "figures/2_review_lengths.png", "figures/4_loss_curves.png",
            "figures/5_confusion_matrix.png"} <= names


def test_metrics_json_records_results_history_parameters_and_environment(sample_run):
    metrics = json.loads((sample_run[0] / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "test_precision", "test_recall", "test_f1"):
        assert 0 <= metrics[key] <= (1 if key != "test_loss" else 10), key
    assert sum(map(sum, metrics["test_confusion_matrix"])) == 200  # the sample's 200 test reviews
    assert metrics["history"]["epoch"] == [1, 2]
    assert metrics["best_epoch"] in (1, 2)
    assert metrics["params"]["hidden_dim"] == 16 and metrics["params"]["max_length"] == 200
    assert metrics["environment"]["torch"].startswith("2.3.1")
    assert metrics["training_seconds"] > 0
    assert metrics["pretraining_seconds"] > 0  # word vectors from the sample's unlabelled reviews
    assert 100 < metrics["peak_memory"]["cpu_rss_mib"] < 100_000


def test_predict_file_writes_one_row_per_review_and_reports_blank_lines(sample_run):
    run_dir, notebook = sample_run
    rows = read_predictions(run_dir)
    assert [row["line"] for row in rows] == ["1", "3", "4"]
    assert all(row["label"] in ("positive", "negative") and 0 < float(row["prob_positive"]) < 1 for row in rows)
    outputs = "".join("".join(o.get("text", "")) for c in notebook["cells"] for o in c.get("outputs", []))
    assert "blank lines skipped: [2]" in outputs


def test_reloading_the_checkpoint_reproduces_the_predictions(sample_run, tmp_path):
    first_dir, _ = sample_run
    reload_dir, _ = execute(tmp_path, "reload", init_checkpoint=str(first_dir / "checkpoint"), n_epochs=0,
                            hidden_dim=99)  # the checkpoint's own configuration wins over the parameters
    assert read_predictions(reload_dir) == read_predictions(first_dir)
    first, reloaded = (json.loads((d / "metrics.json").read_text()) for d in (first_dir, reload_dir))
    assert reloaded["test_accuracy"] == first["test_accuracy"]
    assert reloaded["test_loss"] == pytest.approx(first["test_loss"], abs=1e-9)
    assert reloaded["pretraining_seconds"] == 0  # the checkpoint's trained vectors are used


def test_without_pretraining_the_model_starts_from_random_vectors(sample_run, tmp_path):
    plain_dir, notebook = execute(tmp_path, "plain", pretrain_embeddings=False, n_epochs=1)
    first, plain = (json.loads((d / "metrics.json").read_text()) for d in (sample_run[0], plain_dir))
    assert plain["pretraining_seconds"] == 0
    assert plain["history"]["train_loss"][0] != first["history"]["train_loss"][0]
    outputs = "".join("".join(o.get("text", "")) for c in notebook["cells"] for o in c.get("outputs", []))
    assert "word vectors of" not in outputs


def test_two_runs_with_one_seed_give_the_same_numbers(sample_run, tmp_path):
    again_dir, _ = execute(tmp_path, "again")
    first, again = (json.loads((d / "metrics.json").read_text()) for d in (sample_run[0], again_dir))
    assert again["history"]["valid_loss"] == first["history"]["valid_loss"]
    assert again["test_accuracy"] == first["test_accuracy"]


def test_a_bad_parameter_fails_before_any_data_is_read(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute(tmp_path, "bad", dropout=1.5)
    assert error.value.ename == "ValueError"
    assert "dropout=1.5 is not valid: expected a float with 0 <= value < 1" in error.value.evalue
    assert not (tmp_path / "bad").exists()


def test_a_run_folder_that_holds_a_run_is_refused(sample_run, tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="already holds a run"):
        papermill.execute_notebook(NOTEBOOK, tmp_path / "out.ipynb", kernel_name=KERNEL, cwd=REPO, progress_bar=False,
                                   parameters=dict(TINY, run_dir=str(sample_run[0])))
    assert (sample_run[0] / "metrics.json").exists()


def test_every_figure_the_readme_and_notebook_link_to_exists():
    for document in (REPO / "README.md", NOTEBOOK):
        links = re.findall(r"\]\(([^)\s]+\.(?:png|svg|jpg))\)", document.read_text(encoding="utf-8"))
        for link in links:
            assert (document.parent / link).exists(), f"{document.name} links to missing {link}"
    assert re.findall(r"figures/\S+\.png", (REPO / "README.md").read_text(encoding="utf-8"))


def test_a_later_run_can_train_on_from_a_saved_checkpoint(sample_run, tmp_path):
    first_dir, _ = sample_run
    on_dir, _ = execute(tmp_path, "train_on", init_checkpoint=str(first_dir / "checkpoint"), n_epochs=1)
    first, on = (json.loads((d / "metrics.json").read_text()) for d in (first_dir, on_dir))
    assert on["history"]["epoch"] == [1]
    # It starts from the trained weights, so its first epoch beats the first run's first epoch.
    assert on["history"]["train_loss"][0] < first["history"]["train_loss"][0]
    assert (on_dir / "checkpoint" / "weights.pt").exists()
