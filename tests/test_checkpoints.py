"""Checkpoints from someone else: weights are safetensors, and a pickle is never loaded unasked.

Each crafted file below, if unpickled, creates a marker file; every test checks that the marker
was not created and that the error says what was wrong.
"""

import json
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


def test_conversion_needs_the_user_to_say_they_trust_the_file(tmp_path):
    folder = crafted_checkpoint(tmp_path / "ck", tmp_path / "marker")
    with pytest.raises(helpers.UntrustedCheckpointError, match="trust_pickled_file=True"):
        helpers.convert_legacy_checkpoint(folder)
    done = subprocess.run([sys.executable, str(REPO / "helpers.py"), "convert-checkpoint", str(folder)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "--trust-pickled-file" in done.stderr
    assert not (tmp_path / "marker").exists() and (folder / "weights.pt").exists()


def test_a_trusted_old_checkpoint_converts_to_the_same_weights(tmp_path, tiny_model, vocab):
    folder = tmp_path / "ck"
    helpers.save_checkpoint(folder, tiny_model, vocab, {"max_length": 20})
    (folder / "weights.safetensors").unlink()
    torch.save(tiny_model.state_dict(), folder / "weights.pt")  # what earlier versions wrote
    done = subprocess.run([sys.executable, str(REPO / "helpers.py"), "convert-checkpoint", str(folder),
                           "--trust-pickled-file"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "vocab.json", "weights.safetensors"]
    state, _, _ = helpers.load_checkpoint(folder)
    fresh = TinyModel()
    helpers.load_weights(fresh, state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tiny_model.state_dict().values(),
                                                 strict=True))


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
                                   kernel_name=KERNEL, cwd=REPO, progress_bar=False)
    assert not (tmp_path / "marker").exists()


def test_nothing_in_the_project_calls_torch_load_but_the_trusted_conversion():
    sources = [REPO / "helpers.py", *sorted((REPO / "sweeps").glob("*.py")),
               *sorted((REPO / "notebooks").glob("*.ipynb"))]
    calls = {path.name: path.read_text(encoding="utf-8").count("torch.load(") for path in sources}
    assert calls.pop("helpers.py") == 1  # convert_legacy_checkpoint, behind trust_pickled_file=True
    assert not any(calls.values()), calls
