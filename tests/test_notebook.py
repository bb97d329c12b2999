"""The notebook end to end on the bundled sample, through papermill, as `make run` runs it."""

import csv
import json
import re
import shutil
from pathlib import Path

import nbclient
import nbformat
import papermill
import pytest

import helpers

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "sentiment_lstm.ipynb"
REVIEWS = REPO / "tests" / "fixtures" / "reviews.txt"
KERNEL = "sentiment-lstm"
# Adversarial training is on here, so that its path runs end to end; nbval runs the plain default.
TINY = dict(use_sample=True, n_epochs=2, n_models=2, embedding_dim=16, hidden_dim=16, max_vocab_size=3000,
            batch_size=16, max_length=200, adversarial_epsilon=1.0, predict_file=str(REVIEWS))


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
    assert metrics["params"]["adversarial_epsilon"] == 1.0
    assert metrics["environment"]["torch"].startswith("2.3.1")
    assert metrics["training_seconds"] > 0
    assert metrics["pretraining_seconds"] > 0  # word vectors from the sample's unlabelled reviews
    assert 100 < metrics["peak_memory"]["cpu_rss_mib"] < 100_000


def test_an_ensemble_run_records_each_model_and_saves_them_as_one(sample_run):
    run_dir, _ = sample_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_models"] == 2 and metrics["config"]["n_models"] == 2
    assert [member["seed"] for member in metrics["members"]] == [42, 43]  # seed, seed + 1
    first, second = metrics["members"]
    assert first["history"] == metrics["history"] and first["best_epoch"] == metrics["best_epoch"]
    assert second["history"]["train_loss"] != first["history"]["train_loss"]  # its own start and batch order
    assert metrics["training_seconds"] == pytest.approx(first["seconds"] + second["seconds"])
    state, _, config = helpers.load_checkpoint(run_dir / "checkpoint")
    assert config["n_models"] == 2 and {name.split(".")[1] for name in state} == {"0", "1"}
    assert not (run_dir / "members").exists() and not (run_dir / "epoch_weights").exists()


def test_predict_file_writes_one_row_per_review_and_reports_blank_lines(sample_run):
    run_dir, notebook = sample_run
    rows = read_predictions(run_dir)
    assert [row["line"] for row in rows] == ["1", "3", "4"]
    assert all(row["label"] in ("positive", "negative") and 0 < float(row["prob_positive"]) < 1 for row in rows)
    outputs = "".join("".join(o.get("text", "")) for c in notebook["cells"] for o in c.get("outputs", []))
    assert "blank lines skipped: [2]" in outputs


def test_metrics_json_keeps_the_seconds_of_every_epoch(sample_run):
    history = json.loads((sample_run[0] / "metrics.json").read_text())["history"]
    assert len(history["seconds"]) == len(history["epoch"]) == 2 and all(s > 0 for s in history["seconds"])


def test_the_batch_outputs_hold_one_line_per_epoch_and_no_progress_bar_fragments(sample_run):
    _, notebook = sample_run
    def printed(code):
        cell = next(c for c in notebook["cells"] if code in "".join(c["source"]))
        text = "".join("".join(o.get("text", "")) for o in cell["outputs"])
        return [line.split(":")[0] for line in text.splitlines()]

    assert printed("history, stopper, interrupted = fit(") == ["epoch 1/2", "epoch 2/2"]
    assert printed("member, record, interrupted = train_member(") == ["model 2 of 2 (seed 43)", "epoch 1/2",
                                                                      "epoch 2/2"]
    assert all(o.get("name") != "stderr" for c in notebook["cells"] for o in c.get("outputs", []))


def test_rich_outputs_carry_a_readable_plain_text_form(sample_run):
    _, notebook = sample_run
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            plain = "".join(output.get("data", {}).get("text/plain", ""))
            assert not plain.startswith("<IPython.core.display"), plain


def test_a_misspelt_parameter_stops_the_run_naming_the_closest_valid_name(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute(tmp_path, "typo", n_epoch=1)
    assert "unknown parameter: 'n_epoch' (did you mean 'n_epochs'?)" in error.value.evalue
    assert not (tmp_path / "typo").exists()  # stopped before the run folder, let alone the data


def test_reloading_the_checkpoint_reproduces_the_predictions(sample_run, tmp_path):
    first_dir, _ = sample_run
    reload_dir, _ = execute(tmp_path, "reload", init_checkpoint=str(first_dir / "checkpoint"), n_epochs=0,
                            hidden_dim=99)  # the checkpoint's own configuration wins over the parameters
    assert read_predictions(reload_dir) == read_predictions(first_dir)
    first, reloaded = (json.loads((d / "metrics.json").read_text()) for d in (first_dir, reload_dir))
    assert reloaded["test_accuracy"] == first["test_accuracy"]
    assert reloaded["test_loss"] == pytest.approx(first["test_loss"], abs=1e-9)
    assert reloaded["pretraining_seconds"] == 0  # the checkpoint's trained vectors are used
    # The record holds the configuration the model really had, not the ignored parameter.
    assert reloaded["config"]["model"]["hidden_dim"] == 16 and reloaded["config"]["max_length"] == 200
    assert reloaded["config"] == first["config"]


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


def test_a_later_run_can_train_on_from_a_single_models_checkpoint(tmp_path):
    first_dir, _ = execute(tmp_path, "single", n_models=1)
    on_dir, _ = execute(tmp_path, "train_on", init_checkpoint=str(first_dir / "checkpoint"), n_epochs=1)
    first, on = (json.loads((d / "metrics.json").read_text()) for d in (first_dir, on_dir))
    assert first["n_models"] == on["n_models"] == 1  # the checkpoint's one model wins over TINY's n_models=2
    assert on["history"]["epoch"] == [1]
    # It starts from the trained weights, so its first epoch beats the first run's first epoch.
    assert on["history"]["train_loss"][0] < first["history"]["train_loss"][0]
    assert (on_dir / "checkpoint" / "weights.pt").exists()


def test_training_on_from_an_ensembles_checkpoint_is_refused_before_any_data_is_read(sample_run, tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="holds an ensemble of 2 models"):
        execute(tmp_path, "refused", init_checkpoint=str(sample_run[0] / "checkpoint"), n_epochs=1)
    assert not (tmp_path / "refused").exists()


def run_committed_notebook(cwd, use_sample=True):
    """Execute the committed notebook itself, as "Run all" does in JupyterLab, from folder cwd.

    The one change is the one a reader makes: `use_sample = False` becomes `True` in the
    parameters cell. Returns the executed notebook and the run folder it made under runs/.
    """
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    assert "use_sample = False" in parameters.source
    if use_sample:
        parameters.source = parameters.source.replace("use_sample = False", "use_sample = True", 1)
    before = set(helpers.RUNS_DIR.glob("*")) if helpers.RUNS_DIR.exists() else set()
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": cwd}})
    try:
        client.execute()
    finally:
        made = sorted(set(helpers.RUNS_DIR.glob("*")) - before)
    return notebook, made


def test_the_committed_notebook_runs_as_it_is_from_notebooks_and_from_the_root_twice(tmp_path):
    made = []
    try:
        for cwd in (REPO / "notebooks", REPO / "notebooks", REPO):
            notebook, runs = run_committed_notebook(cwd)
            made += runs
            assert len(runs) == 1 and (runs[0] / "metrics.json").exists()
            errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
            assert errors == []
    finally:
        for run in made:
            shutil.rmtree(run, ignore_errors=True)


def test_the_committed_notebook_is_a_clean_default_run():
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    tags = [t for c in notebook["cells"] for t in c.get("metadata", {}).get("tags", [])]
    assert "injected-parameters" not in tags and tags.count("parameters") == 1
    assert "parameters" not in notebook["metadata"].get("papermill", {})
    text = NOTEBOOK.read_text(encoding="utf-8")
    for machine_path in (str(REPO), "/root/", "/home/", "/tmp/", "shared/data"):
        assert machine_path not in text, machine_path
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert all(counts) and counts == sorted(counts), "not one top-to-bottom run"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert NOTEBOOK.stat().st_size < 340_000  # one run's figures and tables (323 KB); a stray image would blow it
