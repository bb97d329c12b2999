"""Checkpoints from someone else: weights are safetensors, and a pickle is never loaded unasked.

Each crafted file below, if unpickled, creates a marker file; every test checks that the marker
was not created and that the error says what was wrong.
"""

import json
import os
import pickle
import subprocess
import sys

import papermill
import pytest
import torch

import helpers
from conftest import REPO, CreatesAFile, TinyModel

KERNEL = "sentiment-lstm"


def crafted_checkpoint(folder, marker, weights_name="weights.pt", vocab=None):
    """A checkpoint folder whose weights file is a pickle that creates `marker` when loaded."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / weights_name, "wb") as f:
        pickle.dump({"embedding.weight": CreatesAFile(marker)}, f)
    helpers.write_json(folder / "vocab.json", vocab.get_itos() if vocab else ["<pad>", "<unk>", "good"])
    helpers.write_json(folder / "config.json", {"max_length": 20})
    return folder


def test_the_crafted_pickle_really_runs_code_when_unpickled(tmp_path):
    # Guards the tests below: their payload would leave the marker if anything unpickled it.
    folder = crafted_checkpoint(tmp_path / "ck", tmp_path / "marker")
    with open(folder / "weights.pt", "rb") as f:
        pickle.load(f)  # noqa: S301 - on purpose, to prove the payload works
    assert (tmp_path / "marker").exists()


def test_a_checkpoint_saves_safetensors_and_json_only(tmp_path, tiny_model, vocab):
    helpers.save_checkpoint(tmp_path / "ck", tiny_model, vocab, {"max_length": 20})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "vocab.json", "weights.safetensors"]
    header_length = int.from_bytes((tmp_path / "ck" / "weights.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "ck" / "weights.safetensors").read_bytes()[8:8 + header_length])
    assert header["fc.weight"] == {"dtype": "F32", "shape": [1, 8], "data_offsets": header["fc.weight"]["data_offsets"]}


def test_an_old_pickled_checkpoint_is_refused_with_the_way_to_convert_it(tmp_path):
    folder = crafted_checkpoint(tmp_path / "ck", tmp_path / "marker")
    refusal = r"holds weights.pt.*CVE-2025-32434.*--trust-pickled-file"
    with pytest.raises(helpers.UntrustedCheckpointError, match=refusal):
        helpers.load_checkpoint(folder)
    with pytest.raises(helpers.UntrustedCheckpointError):
        helpers.read_weights(folder)
    assert not (tmp_path / "marker").exists()


def test_a_pickle_named_like_safetensors_is_refused_as_unreadable(tmp_path):
    folder = crafted_checkpoint(tmp_path / "ck", tmp_path / "marker", weights_name="weights.safetensors")
    with pytest.raises(ValueError, match="weights.safetensors is not a readable safetensors file"):
        helpers.load_checkpoint(folder)
    assert not (tmp_path / "marker").exists()


@pytest.mark.slow
def test_conversion_needs_the_user_to_say_they_trust_the_file(tmp_path):
    folder = crafted_checkpoint(tmp_path / "ck", tmp_path / "marker")
    with pytest.raises(helpers.UntrustedCheckpointError, match="trust_pickled_file=True"):
        helpers.convert_legacy_checkpoint(folder)
    done = subprocess.run([sys.executable, str(REPO / "helpers.py"), "convert-checkpoint", str(folder)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "--trust-pickled-file" in done.stderr
    assert not (tmp_path / "marker").exists() and (folder / "weights.pt").exists()


@pytest.mark.slow
def test_a_trusted_old_checkpoint_converts_to_the_same_weights(tmp_path):
    folder = lesson_checkpoint(tmp_path / "ck")
    original = helpers.read_weights(folder)
    (folder / "weights.safetensors").unlink()
    torch.save(original, folder / "weights.pt")  # what earlier versions wrote
    done = subprocess.run([sys.executable, str(REPO / "helpers.py"), "convert-checkpoint", str(folder),
                           "--trust-pickled-file"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "vocab.json", "weights.safetensors"]
    state, _, _ = helpers.load_checkpoint(folder)
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s | {"fc.weight2": s.pop("fc.weight")}, "missing fc.weight; unexpected fc.weight2"),
    (lambda s: s | {"fc.weight": torch.zeros(1, 9)}, r"fc.weight: checkpoint \(1, 9\) vs model \(1, 8\)"),
    (lambda s: s | {"fc.weight": s["fc.weight"].double()}, "fc.weight: checkpoint dtype torch.float64 vs model"),
])
def test_a_safetensors_file_with_a_wrong_name_shape_or_dtype_is_refused_naming_it(tmp_path, tiny_model, change,
                                                                                 message):
    state = change(dict(tiny_model.state_dict()))
    helpers.save_checkpoint(tmp_path / "ck", state)
    with pytest.raises(ValueError, match=message):
        helpers.load_weights(TinyModel(), helpers.read_weights(tmp_path / "ck"))


@pytest.mark.notebook
def test_the_notebooks_init_checkpoint_refuses_a_crafted_checkpoint(tmp_path):
    folder = crafted_checkpoint(tmp_path / "ck", tmp_path / "marker")
    with pytest.raises(papermill.PapermillExecutionError, match="UntrustedCheckpointError"):
        papermill.execute_notebook(REPO / "notebooks" / "sentiment_lstm.ipynb", tmp_path / "out.ipynb",
                                   parameters=dict(use_sample=True, init_checkpoint=str(folder), n_epochs=0,
                                                   run_dir=str(tmp_path / "run")),
                                   kernel_name=KERNEL, cwd=REPO, progress_bar=False, request_save_on_cell_execute=False)
    assert not (tmp_path / "marker").exists()


def test_nothing_in_the_project_calls_torch_load_but_the_trusted_conversion():
    sources = [REPO / "helpers.py", *sorted((REPO / "sweeps").glob("*.py")),
               *sorted((REPO / "notebooks").glob("*.ipynb"))]
    calls = {path.name: path.read_text(encoding="utf-8").count("torch.load(") for path in sources}
    assert calls.pop("helpers.py") == 1  # convert_legacy_checkpoint, behind trust_pickled_file=True
    assert not any(calls.values()), calls


# --------------------------------------------------------------------------- a checkpoint from someone else, checked
# Issue 32: every file and value is checked before any tensor is made, and every refusal names the file and field.
from notebook_code import namespace  # noqa: E402

MODEL = dict(vocab_size=5, embedding_dim=4, hidden_dim=3, n_layers=1, bidirectional=True, embedding_dropout=0.0,
             dropout=0.0, pooling="max", pad_index=0, cell="lstm")
ITOS = ["<pad>", "<unk>", "good", "bad", "film"]


def lesson_checkpoint(folder, model=None, max_length=20, itos=ITOS, **config):
    """A valid checkpoint of the notebook's SentimentLSTM, as the notebook saves it (weights from the layout)."""
    model = dict(MODEL, **(model or {}))
    config = {"model": model, "max_length": max_length, **config}
    state = {name: torch.randn(shape) for name, (_, shape) in helpers.checkpoint_weight_layout(config).items()}
    helpers.save_checkpoint(folder, state, helpers.vocab_from_tokens(itos), config)
    return folder


@pytest.mark.parametrize("model", [{}, {"cell": "gru", "n_layers": 2}, {"cell": "rnn", "bidirectional": False},
                                   {"pooling": "max+mean", "n_layers": 3, "hidden_dim": 2}])
def test_the_layout_a_config_implies_is_the_notebook_models_own(model):
    config = dict(MODEL, **model)
    own = namespace("SentimentLSTM")["SentimentLSTM"](**config).state_dict()
    assert helpers.model_weight_layout(config) == {name: ("F32", tuple(t.shape)) for name, t in own.items()}


def test_a_valid_checkpoint_loads_and_an_ensemble_too(tmp_path):
    state, vocab, config = helpers.load_checkpoint(lesson_checkpoint(tmp_path / "ck"))
    assert vocab.get_itos() == ITOS and config["max_length"] == 20 and state["fc.weight"].shape == (1, 6)
    state, _, _ = helpers.load_checkpoint(lesson_checkpoint(tmp_path / "ensemble", n_models=2))
    assert {name.split(".")[1] for name in state} == {"0", "1"}


def rewrite_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(config)) if callable(change) else change)


@pytest.mark.parametrize("change, message", [
    (lambda c: c | {"max_length": 0}, r"config.json: max_length=0 is not valid: expected an integer >= 1"),
    (lambda c: c | {"max_length": -5}, r"config.json: max_length=-5 is not valid"),
    (lambda c: c | {"max_length": "200"}, r"config.json: max_length='200' is not valid"),
    (lambda c: c | {"model": c["model"] | {"hidden_dim": 10**9}}, r"config.json: model implies [\d,]+ bytes"),
    (lambda c: c | {"model": c["model"] | {"hidden_dim": 1e9}}, r"config.json: model.hidden_dim=1000000000.0 is not"),
    (lambda c: c | {"model": c["model"] | {"cell": "transformer"}}, r"config.json: model.cell='transformer'"),
    (lambda c: c | {"model": c["model"] | {"dropout": 1.5}}, r"config.json: model.dropout=1.5 is not valid"),
    (lambda c: c | {"model": c["model"] | {"pad_index": 7}}, r"config.json: model.pad_index=7 is not valid"),
    (lambda c: c | {"model": c["model"] | {"colour": "red"}}, r"config.json: model has unknown keys 'colour'"),
    (lambda c: c | {"model": {k: v for k, v in c["model"].items() if k != "hidden_dim"}},
     "config.json: model lacks hidden_dim"),
    (lambda c: c | {"surprise": 1}, r"config.json: unknown keys 'surprise'"),
    (lambda c: {"model": c["model"]}, "config.json: missing max_length"),
    (lambda c: c | {"n_models": 0}, "config.json: n_models=0 is not valid"),
    (lambda c: [c], "config.json: expected a JSON object"),
    ("{not json", "config.json is not valid JSON"),
])
def test_a_bad_config_is_refused_naming_the_file_and_the_field(tmp_path, change, message):
    folder = lesson_checkpoint(tmp_path / "ck")
    rewrite_config(folder, change)
    with pytest.raises(ValueError, match=message):
        helpers.load_checkpoint(folder)


def test_a_vocabulary_longer_than_the_embedding_is_refused(tmp_path):
    folder = lesson_checkpoint(tmp_path / "ck")
    helpers.write_json(folder / "vocab.json", [*ITOS, "extra"])
    with pytest.raises(ValueError, match=r"vocab.json: 6 tokens, but .*config.json's model.vocab_size .* is 5"):
        helpers.load_checkpoint(folder)
    helpers.write_json(folder / "vocab.json", {"<pad>": 0})
    with pytest.raises(ValueError, match=r"vocab.json: expected a JSON list of tokens"):
        helpers.load_checkpoint(folder)


def test_weights_that_do_not_fit_the_config_are_refused_before_any_tensor_is_made(tmp_path, monkeypatch):
    folder = lesson_checkpoint(tmp_path / "ck")
    rewrite_config(folder, lambda c: c | {"model": c["model"] | {"hidden_dim": 4}})
    made = []
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load", lambda *a, **k: made.append(a))
    with pytest.raises(ValueError, match=r"weights.safetensors does not match its config.json: .*forward_rnns.0."
                                         r"weight_hh_l0: F32 \[12, 3\], the config implies F32 \[16, 4\]"):
        helpers.load_checkpoint(folder)
    assert made == []


def test_weights_of_another_dtype_are_refused_naming_the_tensor(tmp_path):
    folder = lesson_checkpoint(tmp_path / "ck")
    state = helpers.read_weights(folder)
    helpers.save_checkpoint(folder, state | {"fc.bias": state["fc.bias"].double()})
    with pytest.raises(ValueError, match=r"fc.bias: F64 \[1\], the config implies F32 \[1\]"):
        helpers.load_checkpoint(folder)


@pytest.mark.parametrize("header, message", [
    (b"\xff" * 8, "header length"),
    (len(b'{"a": 1}').to_bytes(8, "little") + b'{"a": 1}', "tensor 'a': expected dtype, shape and data_offsets"),
    (len(b"[]").to_bytes(8, "little") + b"[]", "header is not a JSON object"),
])
def test_a_malformed_safetensors_header_is_refused_naming_the_file(tmp_path, header, message):
    folder = lesson_checkpoint(tmp_path / "ck")
    (folder / "weights.safetensors").write_bytes(header)
    with pytest.raises(ValueError, match=f"weights.safetensors is not a readable safetensors file: .*{message}"):
        helpers.load_checkpoint(folder)


@pytest.mark.parametrize("name", ["weights.safetensors", "vocab.json", "config.json"])
def test_links_to_devices_fifos_and_files_outside_the_folder_are_refused(tmp_path, name):
    folder = lesson_checkpoint(tmp_path / "ck")
    (folder / name).unlink()
    (folder / name).symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=f"{name} is a link to /dev/zero, outside"):
        helpers.load_checkpoint(folder)
    (folder / name).unlink()
    os.mkfifo(folder / name)  # a FIFO inside the folder: refused at once, never read (which would block)
    with pytest.raises(ValueError, match=f"{name} is a device, FIFO or socket, not a regular file"):
        helpers.load_checkpoint(folder)


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    folder = lesson_checkpoint(tmp_path / "ck")
    monkeypatch.setattr(helpers, "MAX_CONFIG_BYTES", 10)
    with pytest.raises(ValueError, match=r"config.json holds \d+ bytes, more than the 10 it may"):
        helpers.load_checkpoint(folder)


@pytest.mark.slow
def test_convert_checkpoint_never_overwrites_an_existing_safetensors_file(tmp_path, tiny_model):
    folder = tmp_path / "ck"
    helpers.save_checkpoint(folder, tiny_model)
    before = (folder / "weights.safetensors").read_bytes()
    torch.save({k: torch.zeros_like(v) for k, v in tiny_model.state_dict().items()}, folder / "weights.pt")
    done = subprocess.run([sys.executable, str(REPO / "helpers.py"), "convert-checkpoint", str(folder),
                           "--trust-pickled-file"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "weights.safetensors exists already" in done.stderr
    assert (folder / "weights.safetensors").read_bytes() == before and (folder / "weights.pt").exists()
