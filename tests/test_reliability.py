"""Parameters, predictions, checkpoints, run folders and interrupted training."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import helpers
from conftest import REPO, TinyModel

DEFAULTS = dict(
    imdb_archive="", use_sample=True, valid_fraction=0.1, valid_size=0, train_size=0, test_size=0, n_epochs=1,
    patience=2, batch_size=8,
    max_length=50, min_freq=1, max_vocab_size=100, embedding_dim=8, ngram_max_n=2, ngram_c_values=[0.3],
    pretrain_embeddings=True, word_vector_window=5, ppmi_context_power=0.75, hidden_dim=8, cell="lstm", n_layers=1,
    bidirectional=True, pooling="max", embedding_dropout=0.0, dropout=0.0, lr=1e-3, clip_norm=1.0, seed=0,
    device="cpu", ig_steps=8, shaded_tokens=10, run_dir="", init_checkpoint="", predict_file="", ood_data="",
)

# At least one bad value for every parameter, with what the error must say.
BAD_VALUES = [
    ("imdb_archive", "/no/such/archive.tar.gz", "imdb_archive='/no/such/archive.tar.gz' is not valid: no such"),
    ("imdb_archive", 3, "imdb_archive=3 is not valid: expected a path"),
    ("use_sample", "yes", "use_sample='yes' is not valid: expected True or False"),
    ("valid_fraction", 1.0, "valid_fraction=1.0 is not valid: expected a fraction"),
    ("valid_size", 1, "valid_size=1 is not valid: expected 0 \\(the whole validation split\\) or an integer >= 2"),
    ("train_size", 1, "train_size=1 is not valid: expected 0 \\(every training review\\) or an integer >= 2"),
    ("train_size", -5, "train_size=-5 is not valid"),
    ("test_size", 1, "test_size=1 is not valid: expected 0 \\(every test review\\) or an integer >= 2"),
    ("n_epochs", 0, "n_epochs=0 is only valid with init_checkpoint"),
    ("n_epochs", 2.5, "n_epochs=2.5 is not valid: expected an integer"),
    ("patience", 0, "patience=0 is not valid: expected an integer >= 1"),
    ("batch_size", True, "batch_size=True is not valid"),
    ("max_length", 0, "max_length=0 is not valid"),
    ("min_freq", 0, "min_freq=0 is not valid"),
    ("max_vocab_size", 2, "max_vocab_size=2 is not valid: expected an integer >= 3"),
    ("embedding_dim", -1, "embedding_dim=-1 is not valid"),
    ("ngram_max_n", 4, "ngram_max_n=4 is not valid: expected 1, 2 or 3"),
    ("ngram_c_values", [], r"ngram_c_values=\[\] is not valid: expected a non-empty list of numbers > 0"),
    ("ngram_c_values", [0.1, -1], "ngram_c_values=.* is not valid"),
    ("ngram_c_values", 0.3, "ngram_c_values=0.3 is not valid"),
    ("pretrain_embeddings", 1, "pretrain_embeddings=1 is not valid: expected True or False"),
    ("word_vector_window", 0, "word_vector_window=0 is not valid"),
    ("ppmi_context_power", 1.5, "ppmi_context_power=1.5 is not valid: expected a float with 0 < value <= 1"),
    ("hidden_dim", 0, "hidden_dim=0 is not valid"),
    ("cell", "LSTM", "cell='LSTM' is not valid: expected 'lstm', 'gru' or 'rnn'"),
    ("cell", 1, "cell=1 is not valid"),
    ("n_layers", 0, "n_layers=0 is not valid"),
    ("bidirectional", "yes", "bidirectional='yes' is not valid: expected True or False"),
    ("pooling", "min", "pooling='min' is not valid"),
    ("embedding_dropout", -0.1, "embedding_dropout=-0.1 is not valid"),
    ("dropout", 1.0, "dropout=1.0 is not valid: expected a float with 0 <= value < 1"),
    ("lr", -0.1, "lr=-0.1 is not valid"),
    ("clip_norm", 0.0, "clip_norm=0.0 is not valid"),
    ("seed", -1, "seed=-1 is not valid"),
    ("device", "tpu", "device='tpu' is not valid: expected 'auto', 'cpu' or 'cuda'"),
    ("ig_steps", 0, "ig_steps=0 is not valid"),
    ("shaded_tokens", 0, "shaded_tokens=0 is not valid"),
    ("run_dir", None, "run_dir=None is not valid: expected a folder path"),
    ("init_checkpoint", "/no/such/checkpoint", "init_checkpoint='/no/such/checkpoint' is not valid: no such"),
    ("predict_file", "/no/such/file.txt", "predict_file='/no/such/file.txt' is not valid"),
    ("ood_data", "/no/such/folder", "ood_data='/no/such/folder' is not valid"),
    ("ood_data", 3, "ood_data=3 is not valid: expected a folder"),
]


def test_valid_parameters_pass_and_an_int_learning_rate_becomes_a_float():
    checked = helpers.validate_params(dict(DEFAULTS, lr=1))
    assert checked["lr"] == 1.0 and isinstance(checked["lr"], float)


@pytest.mark.parametrize("name, value, message", BAD_VALUES)
def test_a_bad_parameter_is_named_with_its_value_and_what_is_allowed(name, value, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        helpers.validate_params(dict(DEFAULTS, **{name: value}))


def test_every_parameter_has_a_bad_value_test():
    assert {name for name, _, _ in BAD_VALUES} == set(helpers.PARAM_SPECS) == set(DEFAULTS)


def test_unknown_and_missing_parameters_are_listed():
    with pytest.raises(ValueError, match="unknown parameter: 'hiden_dim' \\(did you mean 'hidden_dim'\\?\\); valid"):
        helpers.validate_params(dict(DEFAULTS, hiden_dim=8))
    with pytest.raises(ValueError, match="missing parameters: seed"):
        helpers.validate_params({k: v for k, v in DEFAULTS.items() if k != "seed"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error_not_a_fallback():
    with pytest.raises(ValueError, match="no CUDA device"):
        helpers.validate_params(dict(DEFAULTS, device="cuda"))
    with pytest.raises(ValueError, match="no CUDA device"):
        helpers.choose_device("cuda")
    assert helpers.choose_device("auto").type == "cpu"


def test_predict_proba_refuses_empty_and_non_string_reviews(tiny_model, vocab):
    with pytest.raises(ValueError, match="review 1 is empty or only whitespace"):
        helpers.predict_proba(tiny_model, ["fine", "  \n\t"], vocab, 20, "cpu")
    with pytest.raises(TypeError, match="must be a str, got int"):
        helpers.predict_proba(tiny_model, [42], vocab, 20, "cpu")


def test_predict_proba_handles_unknown_words_html_emoji_other_scripts_and_huge_reviews(tiny_model, vocab):
    texts = ["zorblax quonk", "<b>great</b> film 😀", "Фильм 映画 great", "great " * 100_000]
    probs = helpers.predict_proba(tiny_model, texts, vocab, 20, "cpu")
    assert probs.shape == (4,) and np.all((probs > 0) & (probs < 1))
    assert helpers.known_fraction("zorblax quonk", vocab) == 0
    # Only the first max_length tokens are read, so a huge review equals its first 20 words.
    assert probs[3] == pytest.approx(helpers.predict_proba(tiny_model, ["great " * 20], vocab, 20, "cpu")[0])


def test_predict_proba_returns_to_eval_mode_and_keeps_results_stable(tiny_model, vocab):
    tiny_model.train()
    first = helpers.predict_proba(tiny_model, ["great film", "awful plot"], vocab, 20, "cpu")
    assert not tiny_model.training
    assert np.array_equal(first, helpers.predict_proba(tiny_model, ["great film", "awful plot"], vocab, 20, "cpu"))


def three_quarters(reviews):
    """A model for predict_review_file that gives every review 0.75."""
    return np.full(len(reviews), 0.75)


def test_predict_review_file_reports_skipped_blank_lines(tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_text("good one\n\n   \nbad one\n", encoding="utf-8")
    assert helpers.predict_review_file(path, tmp_path / "p.csv", three_quarters) == (2, 2, [2, 3])
    assert [line.split(",")[0] for line in (tmp_path / "p.csv").read_text().splitlines()] == ["line", "1", "4"]


def test_predict_review_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        helpers.predict_review_file(tmp_path / "missing.txt", tmp_path / "p.csv", three_quarters)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="holds no review"):
        helpers.predict_review_file(tmp_path / "empty.txt", tmp_path / "p.csv", three_quarters)
    (tmp_path / "latin1.txt").write_bytes("café très bien".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        helpers.predict_review_file(tmp_path / "latin1.txt", tmp_path / "p.csv", three_quarters)


def test_predictions_csv_quotes_reviews(tmp_path):
    (tmp_path / "reviews.txt").write_text('\n\nsay "hi", then go\n', encoding="utf-8")
    helpers.predict_review_file(tmp_path / "reviews.txt", tmp_path / "p.csv", three_quarters)
    assert (tmp_path / "p.csv").read_text().splitlines() == [
        "line,label,prob_positive,review", '3,positive,0.750000,"say ""hi"", then go"']


def test_checkpoint_round_trip(tmp_path, tiny_model, vocab):
    model = dict(vocab_size=len(vocab), embedding_dim=8, hidden_dim=8, n_layers=1, bidirectional=False,
                 embedding_dropout=0.0, dropout=0.0, pooling="max", pad_index=0, cell="lstm")
    saved = {name: torch.randn(shape) for name, (_, shape) in helpers.model_weight_layout(model).items()}
    helpers.save_checkpoint(tmp_path / "ck", saved, vocab, {"model": model, "max_length": 20})
    state, loaded_vocab, config = helpers.load_checkpoint(tmp_path / "ck")
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in state)
    assert loaded_vocab.get_itos() == vocab.get_itos() and config["max_length"] == 20
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "vocab.json", "weights.safetensors"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, tiny_model, vocab, monkeypatch):
    helpers.save_checkpoint(tmp_path / "ck", tiny_model, vocab, {})
    before = (tmp_path / "ck" / "weights.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)  # interrupted after the new weights are written, before they land
    with torch.no_grad():
        tiny_model.fc.bias.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        helpers.save_checkpoint(tmp_path / "ck", tiny_model)
    assert (tmp_path / "ck" / "weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "vocab.json", "weights.safetensors"]


def test_a_mismatched_checkpoint_names_the_parts_that_differ(tiny_model):
    with pytest.raises(ValueError, match=r"embedding.weight: checkpoint \(50, 8\) vs model \(60, 8\)"):
        helpers.load_weights(TinyModel(vocab_size=60), tiny_model.state_dict())
    state = dict(tiny_model.state_dict(), extra=torch.zeros(1))
    del state["fc.bias"]
    with pytest.raises(ValueError, match="missing fc.bias; unexpected extra"):
        helpers.load_weights(TinyModel(), state)


def test_a_checkpoint_missing_a_file_is_named(tmp_path, tiny_model, vocab):
    helpers.save_checkpoint(tmp_path / "ck", tiny_model, vocab)
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        helpers.load_checkpoint(tmp_path / "ck")


def test_a_run_folder_holding_a_run_is_never_reused(tmp_path):
    run_dir = helpers.new_run_dir(tmp_path / "run")
    (run_dir / "sentiment_lstm.ipynb").write_text("{}")  # papermill's output alone is not a run
    assert helpers.new_run_dir(run_dir) == run_dir
    helpers.write_json(run_dir / "metrics.json", {"test_accuracy": 0.9})
    with pytest.raises(FileExistsError, match="already holds a run"):
        helpers.new_run_dir(run_dir)
    assert helpers.new_run_dir(runs_dir=tmp_path / "runs") != helpers.new_run_dir(runs_dir=tmp_path / "runs")


def test_a_run_folder_holding_files_that_are_no_run_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"run_dir .*notes holds files that are not a run's \(notes.txt\)"):
        helpers.new_run_dir(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    (folder / "notes.txt").unlink()
    (folder / "figures").mkdir()
    (folder / "figures" / "mine.png").write_bytes(b"png")  # figures/ of something else
    with pytest.raises(FileExistsError, match=r"holds files that are not a run's \(figures/\)"):
        helpers.new_run_dir(folder)


def test_predict_review_file_calls_a_folder_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"predict_file {re.escape(str(tmp_path))} is a folder"):
        helpers.predict_review_file(tmp_path, tmp_path / "p.csv", three_quarters)


def test_the_pinned_stack_uses_torchtext():
    """The rest of check_stack (the current stack, a torch too old) is tested in test_stacks.py."""
    assert helpers.check_stack({"torch": "2.3.1+cu121", "torchtext": "0.18.0+cpu"}, no_torchtext=False) is True


def test_environment_yml_pins_what_requirements_txt_pins():
    """conda users get the same versions: every package requirements.txt names (but uv) at its version."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    environment = (REPO / "environment.yml").read_text(encoding="utf-8")
    found = dict(re.findall(r"^\s+- ([A-Za-z0-9_.-]+)==?([0-9][^\s#]*)", environment, flags=re.MULTILINE))
    found = {name.lower(): version for name, version in found.items()}
    pins.pop("uv")  # the lock compiler, only needed by `make lock`
    assert {name: found.get(name) for name in pins} == pins


def test_a_path_given_from_the_repositorys_root_is_named_as_it_reads_from_the_notebooks_folder(monkeypatch):
    """Issue 35: JupyterLab runs the lesson in notebooks/, where "runs/<time>/checkpoint" is not found; the error
    says the path from there ("../runs/..."), since the route names the teacher's checkpoint from the root."""
    monkeypatch.chdir(helpers.REPO_DIR / "notebooks")
    with pytest.raises(ValueError, match=r"init_checkpoint='data/sample' is not valid: no such file or folder here "
                                         r"in .*notebooks; .* use '\.\./data/sample'"):
        helpers.validate_params(dict(DEFAULTS, init_checkpoint="data/sample", n_epochs=0))
    with pytest.raises(ValueError, match=r"no such file or folder$"):  # nowhere at all: no hint
        helpers.validate_params(dict(DEFAULTS, init_checkpoint="runs/no-such-run/checkpoint", n_epochs=0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's accounting of a forked child's memory")
def test_a_childs_peak_memory_is_the_parents_high_water_mark_when_it_was_forked():
    """Issue 34's runs recorded a 412 MiB child: scikit-learn's `lscpu` at import. A child that runs `true` from
    a process of 300 MiB shows 300 MiB (its parent's mark, not its own use), so the run's peak is the kernel's."""
    code = ("import resource, subprocess, numpy as np\n"
            "held = np.ones(300 * 2**20 // 8)\n"
            "subprocess.run(['true'], check=True)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n")
    child_mib = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   check=True).stdout)
    assert child_mib >= 300
