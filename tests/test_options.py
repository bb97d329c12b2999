"""The options that left the lesson (sweeps/options.py) and the sweep edits that still run them."""

import json
import sys
from pathlib import Path

import numpy as np
import papermill
import pytest
import torch
import yaml

import helpers
from conftest import TinyModel
from notebook_code import NOTEBOOK, cell_defining, namespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sweeps"))
import sweep  # noqa: E402

sys.path.insert(0, str(REPO))
from sweeps import options  # noqa: E402

torch.set_num_threads(1)
OPTION_SWEEPS = ("adversarial_seeds", "averaging_seeds", "ensemble_seeds")
KERNEL = "sentiment-lstm"


def sweep_edits(name):
    """The `edit` list of the one run of sweeps/<name>.yaml."""
    spec = yaml.safe_load((REPO / "sweeps" / f"{name}.yaml").read_text())
    (run,) = spec["runs"]
    return run["edit"]


def sentiment_lstm(**overrides):
    config = dict(vocab_size=40, embedding_dim=6, hidden_dim=5, n_layers=1, bidirectional=True,
                  embedding_dropout=0.0, dropout=0.0, pooling="max", pad_index=0)
    torch.manual_seed(0)
    return namespace("SentimentLSTM")["SentimentLSTM"](**dict(config, **overrides)).eval()


def _toy_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).tolist()
    sequences = [rng.integers(2, 10, rng.integers(3, 12)).tolist() if y else
                 rng.integers(10, 20, rng.integers(3, 12)).tolist() for y in labels]
    return sequences, labels


# --------------------------------------------------------------------------- the edits still find their place


@pytest.mark.parametrize("name", [*OPTION_SWEEPS, "exercises"])
def test_every_edit_of_the_sweeps_finds_its_text_exactly_once_in_the_lesson(name, tmp_path):
    spec = yaml.safe_load((REPO / "sweeps" / f"{name}.yaml").read_text())
    for run in spec["runs"]:
        if "edit" in run:
            edited = sweep.edited_notebook(run["edit"], tmp_path / f"{run['name']}.ipynb")
            code = "".join("".join(c["source"]) for c in json.loads(edited.read_text())["cells"])
            for change in run["edit"] if isinstance(run["edit"], list) else [run["edit"]]:
                assert change["replace"] in code


def test_an_edit_whose_text_is_gone_is_refused_before_anything_runs(tmp_path):
    edits = [*sweep_edits("adversarial_seeds"), {"find": "no such line in the lesson", "replace": "x"}]
    with pytest.raises(sweep.SweepError, match="'no such line in the lesson' occurs 0 times"):
        sweep.edited_notebook(edits, tmp_path / "edited.ipynb")


TINY = dict(use_sample=True, n_epochs=2, embedding_dim=8, hidden_dim=8, max_vocab_size=2000, batch_size=16,
            max_length=120, ig_steps=8)


@pytest.mark.parametrize("name", OPTION_SWEEPS)
@pytest.mark.notebook
def test_each_option_runs_end_to_end_on_the_sample_through_its_sweeps_edits(name, tmp_path):
    notebook = sweep.edited_notebook(sweep_edits(name), tmp_path / "edited.ipynb")
    run_dir = tmp_path / "run"
    papermill.execute_notebook(notebook, tmp_path / "out.ipynb", kernel_name=KERNEL, cwd=REPO, progress_bar=False,
                               request_save_on_cell_execute=False,
                               parameters=dict(TINY, run_dir=str(run_dir)))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1
    if name == "averaging_seeds":
        assert [len(row["epochs"]) for row in metrics["averaging"]] == [1, 2]  # windows up to the 2 epochs run
        assert metrics["averaged_epochs"] == [1, 2]
    if name == "ensemble_seeds":
        assert metrics["n_models"] == 3 and [m["seed"] for m in metrics["members"]] == [42, 43, 44]
        state = helpers.load_checkpoint(run_dir / "checkpoint")[0]
        assert {key.split(".")[1] for key in state} == {"0", "1", "2"}  # saved as one ensemble


# --------------------------------------------------------------------------- weight averaging


@pytest.mark.parametrize("best, last, size, expected", [
    (3, 5, 1, [3]), (3, 5, 2, [3, 4]), (3, 5, 3, [2, 3, 4]), (3, 5, 4, [2, 3, 4, 5]), (3, 5, 5, [1, 2, 3, 4, 5]),
    (5, 5, 3, [3, 4, 5]),  # the best epoch is the last: the window moves back
    (1, 4, 3, [1, 2, 3]),  # the best epoch is the first: the window moves forward
    (2, 2, 3, [1, 2]),  # fewer epochs than the window: all of them
])
def test_averaging_window_centres_on_the_best_epoch_within_the_epochs_run(best, last, size, expected):
    assert options.averaging_window(best, last, size) == expected


@pytest.mark.parametrize("best, last, size, message", [(0, 3, 2, "best_epoch 0 is not an epoch of 1..3"),
                                                       (4, 3, 2, "best_epoch 4"), (2, 3, 0, "at least one epoch")])
def test_averaging_window_rejects_what_is_no_window(best, last, size, message):
    with pytest.raises(ValueError, match=message):
        options.averaging_window(best, last, size)


def test_the_averaged_model_holds_the_mean_of_the_windows_weights_and_every_window_is_measured(tmp_path):
    model = TinyModel(vocab_size=20)
    saved = []
    for epoch in (1, 2, 3, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        options.save_epoch_weights(tmp_path, epoch, model)
        saved.append({k: v.clone() for k, v in model.state_dict().items()})
    measured = []

    def evaluate(m):
        measured.append(m.fc.bias.item())
        return float(len(measured)), 0.5

    table, epochs = options.average_weights(model, tmp_path, best_epoch=2, last_epoch=4, size=3, evaluate=evaluate)
    assert epochs == [1, 2, 3] and [row["epochs"] for row in table] == [[2], [2, 3], [1, 2, 3], [1, 2, 3, 4]]
    assert measured[0] == pytest.approx(saved[1]["fc.bias"].item())  # the window of one: the best epoch alone
    expected = {k: sum(saved[e - 1][k] for e in epochs) / 3 for k in saved[0]}
    assert all(torch.allclose(model.state_dict()[k], expected[k]) for k in expected)


# --------------------------------------------------------------------------- an ensemble


def test_an_ensembles_logit_is_the_mean_of_its_members_logits():
    torch.manual_seed(0)
    members = [TinyModel(vocab_size=20) for _ in range(3)]
    tokens, lengths = torch.randint(2, 20, (5, 7)), torch.full((5,), 7)
    ensemble = options.Ensemble(members).eval()
    expected = torch.stack([member.eval()(tokens, lengths) for member in members]).mean(dim=0)
    assert torch.allclose(ensemble(tokens, lengths), expected)
    assert not torch.allclose(members[0](tokens, lengths), expected)  # the members do differ
    assert len(list(ensemble.parameters())) == 3 * len(list(members[0].parameters()))  # trained, saved, loaded as one
    assert torch.equal(options.member_weights(ensemble.state_dict(), 1)["fc.bias"], members[1].fc.bias)
    with pytest.raises(ValueError, match=r"no member 3; its members: \[0, 1, 2\]"):
        options.member_weights(ensemble.state_dict(), 3)


def test_an_ensembles_explanation_averages_its_members_and_stays_complete():
    torch.manual_seed(2)
    members = [TinyModel(vocab_size=30, dim=6) for _ in range(3)]
    ensemble = options.Ensemble(members)
    ids = [5, 9, 13, 2]
    contributions, logit, reference_logit = options.ensemble_integrated_gradients(ensemble, ids, "cpu", 128)
    each = [helpers.integrated_gradients(member, ids, "cpu", 128)[0] for member in members]
    assert np.allclose(contributions, np.mean(each, axis=0))
    with torch.no_grad():
        assert logit == pytest.approx(float(ensemble(torch.tensor([ids]), torch.tensor([len(ids)]))), abs=1e-5)
    assert contributions.sum() == pytest.approx(logit - reference_logit, abs=0.01 * max(1, abs(logit)))


# --------------------------------------------------------------------------- adversarial training


def _adversarial_batch():
    tokens, lengths = helpers.pad_batch([[5, 9, 13, 2, 7], [3, 8, 21], [30, 31, 4, 6]])
    return tokens, lengths, torch.tensor([1.0, 0.0, 1.0])


def _spread(words, lengths):
    """The standard deviation of a batch's word vectors, padding left out: the push's unit."""
    return torch.cat([words[i, :n] for i, n in enumerate(lengths.tolist())]).std().detach()


def _plain_and_pushed_losses(model, tokens, lengths, labels, epsilon):
    """The two losses adversarial_backward computes: the plain reviews' and the pushed reviews'."""
    losses = []

    def recording_loss(logits, targets):
        losses.append(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets))
        return losses[-1]

    options.adversarial_backward(model, tokens, lengths, labels, recording_loss, epsilon)
    return [loss.item() for loss in losses]


def _reference_adversarial_gradients(model, tokens, lengths, labels, epsilon):
    """The adversarial step computed another way (torch.autograd.grad for the push): the weights' gradients."""
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.zero_grad()
    words = model.embedding(tokens)
    keep = model.embedding_dropout(torch.ones_like(words))
    embedded = words * keep
    plain_loss = loss_fn(model.read(embedded, lengths), labels)
    (gradient,) = torch.autograd.grad(plain_loss, embedded, retain_graph=True)
    push = torch.stack([epsilon * _spread(words, lengths) * g / g.norm() for g in gradient])
    pushed_loss = loss_fn(model.read(model.embedding(tokens) * keep + push, lengths), labels)
    ((plain_loss + pushed_loss) / 2).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_adversarial_step_is_the_mean_of_the_plain_loss_and_the_loss_pushed_up_its_gradient(dropout):
    model = sentiment_lstm(embedding_dropout=dropout, dropout=dropout).train()
    tokens, lengths, labels = _adversarial_batch()
    torch.manual_seed(5)  # the same dropout masks, drawn in the same order, for both computations
    logits, loss = options.adversarial_backward(model, tokens, lengths, labels, torch.nn.BCEWithLogitsLoss(), 2.0)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    torch.manual_seed(5)
    expected = _reference_adversarial_gradients(model, tokens, lengths, labels, 2.0)
    for name in grads:
        assert torch.allclose(grads[name], expected[name], atol=1e-6), name
    if dropout == 0:
        assert torch.equal(logits, model(tokens, lengths)) and loss.item() == pytest.approx(
            torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item())


def test_the_push_raises_the_loss_more_than_a_random_push_and_a_push_of_zero_is_the_plain_step():
    model = sentiment_lstm()
    tokens, lengths, labels = _adversarial_batch()
    plain, pushed = _plain_and_pushed_losses(model, tokens, lengths, labels, 0.5)
    torch.manual_seed(0)
    words = model.embedding(tokens).detach()
    noise = torch.randn_like(words) * (tokens != 0)[..., None]  # no push on padding, as the gradient gives
    random_push = 0.5 * _spread(words, lengths) * noise / noise.flatten(1).norm(dim=1)[:, None, None]  # same length
    randomly_pushed = torch.nn.functional.binary_cross_entropy_with_logits(model.read(words + random_push, lengths),
                                                                            labels).item()
    assert pushed > plain and pushed - plain > abs(randomly_pushed - plain)  # the worst way, not just any way
    model.zero_grad()
    options.adversarial_backward(model, tokens, lengths, labels, torch.nn.BCEWithLogitsLoss(), 0.0)
    at_zero = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    torch.nn.BCEWithLogitsLoss()(model(tokens, lengths), labels).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(at_zero[name], p.grad, atol=1e-6), name


def adversarial_train_epoch(epsilon):
    """The lesson's train_epoch with the adversarial sweep's edits (the push as a literal, here `epsilon`)."""
    source = cell_defining("train_epoch", NOTEBOOK)
    for change in sweep_edits("adversarial_seeds"):
        source = source.replace(change["find"], change["replace"].replace("epsilon=5.0", f"epsilon={epsilon}"))
    space = namespace(options=options)
    exec(source, space)  # noqa: S102 - the lesson's own code, edited as the sweep edits it
    assert "options.adversarial_backward" in source
    return space["train_epoch"]


def test_adversarial_training_learns_the_toy_task_and_makes_the_model_harder_to_push():
    evaluate = namespace("evaluate")["evaluate"]
    valid_sequences, valid_labels = _toy_data(32, seed=1)
    tokens, lengths = helpers.pad_batch(valid_sequences)
    labels = torch.tensor(valid_labels, dtype=torch.float)
    pushed_losses, accuracies = {}, {}
    for epsilon in (0.0, 3.0):
        train_epoch = adversarial_train_epoch(epsilon)
        model = sentiment_lstm(vocab_size=20, hidden_dim=8)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        train = helpers.BucketBatches(*_toy_data(), 8, shuffle=True, seed=0)
        for _ in range(6):
            train_epoch(model, train, optimizer, loss_fn, 1.0, "cpu")
        valid = helpers.BucketBatches(valid_sequences, valid_labels, 16)
        accuracies[epsilon] = evaluate(model, valid, loss_fn, "cpu")[1]
        model.eval()
        _, pushed_losses[epsilon] = _plain_and_pushed_losses(model, tokens, lengths, labels, 3.0)
    assert accuracies[3.0] > 0.9
    assert pushed_losses[3.0] < pushed_losses[0.0]
