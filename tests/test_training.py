"""The notebook's own model, training step, evaluation pass, early stopping and predict_review."""

import shutil
import time

import numpy as np
import pytest
import torch

import helpers
from conftest import TinyModel
from notebook_code import cell_containing, cell_defining, namespace

torch.set_num_threads(1)


def sentiment_lstm(**overrides):
    config = dict(vocab_size=40, embedding_dim=6, hidden_dim=5, n_layers=1, bidirectional=True,
                  embedding_dropout=0.0, dropout=0.0, pooling="max", pad_index=0)
    torch.manual_seed(0)
    return namespace("SentimentLSTM")["SentimentLSTM"](**dict(config, **overrides)).eval()


@pytest.mark.parametrize("pooling", ["max", "mean", "last", "max+mean"])
@pytest.mark.parametrize("n_layers, bidirectional", [(1, True), (2, True), (2, False)])
def test_a_review_gets_the_same_logit_whatever_padding_follows_it(pooling, n_layers, bidirectional):
    model = sentiment_lstm(pooling=pooling, n_layers=n_layers, bidirectional=bidirectional)
    review = [5, 9, 13, 2, 7]
    alone = model(torch.tensor([review]), torch.tensor([5]))
    for padding in (1, 4, 30):
        tokens, lengths = helpers.pad_batch([review, [3] * (5 + padding)])
        batched = model(tokens, lengths)
        assert batched[0].item() == pytest.approx(alone.item(), abs=1e-6)


def test_reading_padding_first_changes_the_logit_which_is_why_the_model_reverses_within_length():
    model = sentiment_lstm()
    model.reverse = lambda x, lengths: x.flip(1)  # exercise 6's edit
    review = [5, 9, 13, 2, 7]
    alone = model(torch.tensor([review]), torch.tensor([5]))
    tokens, lengths = helpers.pad_batch([review, [3] * 12])
    assert model(tokens, lengths)[0].item() != pytest.approx(alone.item(), abs=1e-4)


def _toy_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).tolist()
    # Positive reviews use tokens 2-9, negative ones 10-19: an easy task for a tiny LSTM.
    sequences = [rng.integers(2, 10, rng.integers(3, 12)).tolist() if y else
                 rng.integers(10, 20, rng.integers(3, 12)).tolist() for y in labels]
    return sequences, labels


def _train(n_epochs=4, seed=0):
    space = namespace("train_epoch", "evaluate")
    helpers.set_seed(seed)
    model = TinyModel(vocab_size=20)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train = helpers.BucketBatches(*_toy_data(), 8, shuffle=True, seed=seed)
    valid = helpers.BucketBatches(*_toy_data(32, seed=1), 16)
    history = []
    for _ in range(n_epochs):
        train_result = space["train_epoch"](model, train, optimizer, loss_fn, 1.0, "cpu")
        history.append((*train_result, *space["evaluate"](model, valid, loss_fn, "cpu")))
    return model, history


def test_the_training_step_learns_the_toy_task():
    model, history = _train(n_epochs=6)
    train_loss, train_acc, clipped, valid_loss, valid_acc = zip(*history, strict=True)
    assert valid_acc[-1] > 0.9 and valid_loss[-1] < valid_loss[0] and train_loss[-1] < train_loss[0]
    assert all(0 <= share <= 1 for share in clipped)


class GradientRecordingAdam(torch.optim.Adam):
    """Adam that records the length of the whole gradient each step is about to take."""

    def __init__(self, params, **kwargs):
        params = list(params)
        super().__init__(params, **kwargs)
        self.params, self.norms = params, []

    def step(self, closure=None):
        self.norms.append(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in self.params if p.grad is not None])).item())
        return super().step(closure)


@pytest.mark.parametrize("adversarial_epsilon", [0.0, 1.0])
@pytest.mark.parametrize("clip_norm", [1e-3, 0.05])
def test_the_notebooks_training_step_clips_its_models_gradient_to_clip_norm(clip_norm, adversarial_epsilon):
    space = namespace("train_epoch", "adversarial_backward")
    model = sentiment_lstm(vocab_size=20, dropout=0.2, embedding_dropout=0.2).train()
    optimizer = GradientRecordingAdam(model.parameters(), lr=0.02)
    train = helpers.BucketBatches(*_toy_data(), 8, shuffle=True, seed=0)
    _, _, clipped = space["train_epoch"](model, train, optimizer, torch.nn.BCEWithLogitsLoss(), clip_norm, "cpu",
                                         adversarial_epsilon)
    assert len(optimizer.norms) == len(train) and clipped > 0  # these gradients were longer than clip_norm
    assert max(optimizer.norms) <= clip_norm * (1 + 1e-4)  # no step is taken with a longer one
    assert sum(norm >= clip_norm * 0.999 for norm in optimizer.norms) >= clipped * len(train)  # scaled, not zeroed


def test_a_batch_trained_in_parts_takes_the_same_step_as_the_whole_batch():
    # Without dropout the parts' weighted gradients must add up to the whole batch's: the same weights after
    # an epoch, the same loss and accuracy. Batches of 8 reviews padded to 4 to 11 tokens; max_tokens=30:
    # two parts of 4, four of 2, or three of 3, 2 and 3 (which an equal weighting of the parts would get wrong).
    space = namespace("train_epoch")
    results = {}
    for max_tokens in (10_000, 30):
        model = sentiment_lstm(vocab_size=20).train()
        # Plain SGD without clipping: Adam and clipping would hide a gradient that is off by a constant factor.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        train = helpers.BucketBatches(*_toy_data(), 8, shuffle=True, seed=0)
        summary = space["train_epoch"](model, train, optimizer, torch.nn.BCEWithLogitsLoss(), 1e9, "cpu",
                                       max_tokens=max_tokens)
        results[max_tokens] = summary, torch.cat([p.detach().flatten() for p in model.parameters()])
    (whole_summary, whole_weights), (parts_summary, parts_weights) = results.values()
    sizes = {tuple(part.stop - part.start for part in helpers.batch_parts(len(idx), max(len(train.sequences[i])
                                                                                      for i in idx), 30))
             for idx in train.batch_indices()}
    assert (3, 2, 3) in sizes and (4, 4) in sizes  # unequal parts as well as equal ones were trained
    assert parts_summary == pytest.approx(whole_summary, abs=1e-6)
    assert torch.allclose(parts_weights, whole_weights, atol=1e-5)
    assert not torch.equal(whole_weights, torch.cat([p.detach().flatten() for p in sentiment_lstm(
        vocab_size=20).parameters()]))  # training moved them


@pytest.mark.parametrize("n_reviews, seq_len, max_tokens, sizes", [
    (64, 800, 25_600, [32, 32]), (64, 400, 25_600, [64]), (64, 401, 25_600, [32, 32]), (64, 600, 25_600, [32, 32]),
    (65, 800, 25_600, [22, 21, 22]), (10, 800, 25_600, [10]), (3, 30_000, 25_600, [1, 1, 1]), (7, 5, 10, [2, 2, 1, 2]),
])
def test_batch_parts_cover_the_batch_in_order_within_the_token_budget(n_reviews, seq_len, max_tokens, sizes):
    parts = helpers.batch_parts(n_reviews, seq_len, max_tokens)
    assert [part.stop - part.start for part in parts] == sizes
    assert [i for part in parts for i in range(n_reviews)[part]] == list(range(n_reviews))
    assert all((part.stop - part.start) * seq_len <= max_tokens for part in parts) or sizes == [1] * len(sizes)


def test_batch_parts_refuse_sizes_that_are_not_positive():
    with pytest.raises(ValueError, match="0 reviews of 800 tokens"):
        helpers.batch_parts(0, 800, 25_600)


def test_two_trainings_with_one_seed_match_exactly():
    assert _train(seed=3)[1] == _train(seed=3)[1]


def test_evaluate_leaves_the_weights_alone_and_turns_dropout_off():
    space = namespace("evaluate")
    model = sentiment_lstm(dropout=0.5, embedding_dropout=0.5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = helpers.BucketBatches([[5, 6, 7], [8, 9]], [1, 0], 2)
    first = space["evaluate"](model, batches, torch.nn.BCEWithLogitsLoss(), "cpu")
    assert not model.training
    assert space["evaluate"](model, batches, torch.nn.BCEWithLogitsLoss(), "cpu") == first  # no dropout noise
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_early_stopping_stops_after_patience_and_keeps_the_best_epochs_weights(tmp_path):
    model = TinyModel(vocab_size=20)
    stopper = helpers.EarlyStopping(2, tmp_path / "ck")
    best_weights = None
    for epoch, valid_loss in enumerate([0.9, 0.7, 0.8, 0.75, 0.6], start=1):
        with torch.no_grad():
            model.fc.bias.fill_(float(epoch))  # each epoch leaves different weights
        if stopper.update(epoch, valid_loss, model):
            best_weights = {k: v.clone() for k, v in model.state_dict().items()}
        if stopper.should_stop:
            break
    assert (epoch, stopper.best_epoch, stopper.best_loss) == (4, 2, 0.7)
    saved = helpers.read_weights(tmp_path / "ck")
    assert saved["fc.bias"].item() == 2.0
    assert all(torch.equal(saved[k], best_weights[k]) for k in best_weights)


def _run_training_cell(tmp_path, train_batches, n_epochs, patience):
    """Execute the notebook's training-loop cell on the toy task; returns its namespace."""
    model = TinyModel(vocab_size=20)
    space = namespace("train_epoch", "evaluate", "fit", model=model, train_batches=train_batches,
                      valid_batches=helpers.BucketBatches(*_toy_data(32, seed=1), 16), run_dir=tmp_path,
                      n_epochs=n_epochs, patience=patience, vocab=None, model_config={}, max_length=20,
                      clip_norm=1.0, adversarial_epsilon=0.0, device="cpu", time=time,
                      loss_fn=torch.nn.BCEWithLogitsLoss(),
                      optimizer=torch.optim.Adam(model.parameters(), lr=0.02))
    exec(cell_containing("history, stopper, interrupted = fit(model"), space)  # noqa: S102
    return space


def test_an_interrupt_before_the_first_epoch_ends_stops_the_notebook_with_a_clear_message(tmp_path):
    class InterruptedBatches(helpers.BucketBatches):
        def __iter__(self):
            raise KeyboardInterrupt  # the user presses stop in the first epoch

    space = _run_training_cell(tmp_path, InterruptedBatches(*_toy_data(), 8), n_epochs=3, patience=2)
    assert space["interrupted"] and space["history"]["epoch"] == []
    with pytest.raises(RuntimeError, match="interrupted before its first epoch ended, so no model was saved"):
        exec(cell_containing("elif stopper.best_epoch == 0"), space)  # noqa: S102


def test_an_interrupt_later_keeps_the_best_checkpoint_and_the_history(tmp_path):
    class InterruptedBatches(helpers.BucketBatches):
        def __iter__(self):
            if self.epoch == 2:  # the user presses stop during the third epoch
                raise KeyboardInterrupt
            yield from super().__iter__()

    space = _run_training_cell(tmp_path, InterruptedBatches(*_toy_data(), 8, shuffle=True), n_epochs=5, patience=5)
    assert space["interrupted"] and space["history"]["epoch"] == [1, 2]
    assert len(space["history"]["seconds"]) == 2  # one entry per epoch, not a total
    exec(cell_containing("elif stopper.best_epoch == 0"), space)  # noqa: S102 - goes on with the best checkpoint
    assert (tmp_path / "checkpoint" / "weights.safetensors").exists()


@pytest.mark.parametrize("best, last, size, expected", [
    (3, 5, 1, [3]), (3, 5, 2, [3, 4]), (3, 5, 3, [2, 3, 4]), (3, 5, 4, [2, 3, 4, 5]), (3, 5, 5, [1, 2, 3, 4, 5]),
    (5, 5, 3, [3, 4, 5]),  # the best epoch is the last: the window moves back
    (1, 4, 3, [1, 2, 3]),  # the best epoch is the first: the window moves forward
    (2, 2, 3, [1, 2]),  # fewer epochs than the window: all of them
])
def test_averaging_window_centres_on_the_best_epoch_within_the_epochs_run(best, last, size, expected):
    assert helpers.averaging_window(best, last, size) == expected


@pytest.mark.parametrize("best, last, size, message", [(0, 3, 2, "best_epoch 0 is not an epoch of 1..3"),
                                                       (4, 3, 2, "best_epoch 4"), (2, 3, 0, "at least one epoch")])
def test_averaging_window_rejects_what_is_no_window(best, last, size, message):
    with pytest.raises(ValueError, match=message):
        helpers.averaging_window(best, last, size)


def test_the_final_model_averages_the_weights_of_the_epochs_around_the_best(tmp_path):
    space = _run_training_cell(tmp_path, helpers.BucketBatches(*_toy_data(), 8, shuffle=True), n_epochs=4, patience=4)
    saved = [helpers.read_weights(tmp_path / "epoch_weights" / f"epoch_{e}") for e in (1, 2, 3, 4)]
    assert not torch.equal(saved[0]["fc.weight"], saved[3]["fc.weight"])  # training moved the weights
    best = space["stopper"].best_epoch
    exec(cell_defining("averaged_weights"), space)  # noqa: S102
    exec(cell_containing("elif stopper.best_epoch == 0"), space)  # noqa: S102
    space.update(average_epochs=3, shutil=shutil, display=lambda table: None)
    exec(cell_containing("averaging = []"), space)  # noqa: S102 - the table of windows
    assert [row["epochs"] for row in space["averaging"]] == [helpers.averaging_window(best, 4, n) for n in (1, 2, 3, 4)]
    exec(cell_containing("final_epochs = helpers.averaging_window"), space)  # noqa: S102
    epochs = helpers.averaging_window(best, 4, 3)
    assert space["final_epochs"] == epochs
    expected = {k: sum(saved[e - 1][k] for e in epochs) / 3 for k in saved[0]}
    kept = helpers.read_weights(tmp_path / "checkpoint")
    assert all(torch.allclose(kept[k], expected[k]) for k in expected)
    assert not torch.allclose(kept["fc.weight"], saved[best - 1]["fc.weight"])  # not the best epoch alone
    assert space["final_valid_loss"] == space["evaluate"](space["model"], space["valid_batches"],
                                                          space["loss_fn"], "cpu")[0]


def test_binary_metrics_on_a_case_worked_by_hand():
    # labels:    1    1    1    0    0    0    0
    # predicted: 1    1    0    1    0    0    0   -> TP 2, FN 1, FP 1, TN 3
    probs = [0.9, 0.6, 0.4, 0.7, 0.1, 0.2, 0.3]
    metrics = helpers.binary_metrics(probs, [1, 1, 1, 0, 0, 0, 0])
    assert metrics["confusion_matrix"] == [[3, 1], [1, 2]]  # rows: true negative, positive; columns: predicted
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    expected_loss = -np.mean(np.log([0.9, 0.6, 0.4, 0.3, 0.9, 0.8, 0.7]))
    assert metrics["loss"] == pytest.approx(expected_loss)


@pytest.fixture
def predict_review():
    vocab = helpers.build_vocab([["great", "film", "awful", "plot", "."]])
    space = namespace("predict_review", model=sentiment_lstm(vocab_size=len(vocab)), vocab=vocab, max_length=20,
                      device="cpu")
    return space["predict_review"]


def test_predict_review_returns_a_label_and_a_probability(predict_review):
    label, probability = predict_review("A great film.")
    assert label in helpers.LABEL_NAMES and 0 < probability < 1
    assert label == helpers.LABEL_NAMES[probability >= 0.5]


@pytest.mark.parametrize("text, error, message", [
    ("", ValueError, "empty or only whitespace"),
    ("   \n", ValueError, "empty or only whitespace"),
    ("<br /><br />", ValueError, "no words once HTML markup is removed"),
    (None, TypeError, "must be a str, got NoneType"),
    (["a", "list"], TypeError, "must be a str, got list"),
])
def test_predict_review_refuses_what_is_not_a_review(predict_review, text, error, message):
    with pytest.raises(error, match=message):
        predict_review(text)


def test_predict_review_of_only_unknown_words_says_it_is_a_default_guess(predict_review, capsys):
    label, probability = predict_review("zorblax quonk")
    assert label in helpers.LABEL_NAMES and 0 < probability < 1
    assert "no word of this review is in the vocabulary" in capsys.readouterr().out


def test_an_ensembles_logit_is_the_mean_of_its_members_logits():
    space = namespace("Ensemble")
    torch.manual_seed(0)
    members = [TinyModel(vocab_size=20) for _ in range(3)]
    tokens, lengths = torch.randint(2, 20, (5, 7)), torch.full((5,), 7)
    ensemble = space["Ensemble"](members).eval()
    expected = torch.stack([member.eval()(tokens, lengths) for member in members]).mean(dim=0)
    assert torch.allclose(ensemble(tokens, lengths), expected)
    assert not torch.allclose(members[0](tokens, lengths), expected)  # the members do differ
    assert len(list(ensemble.parameters())) == 3 * len(list(members[0].parameters()))  # trained, saved, loaded as one


def _adversarial_batch():
    tokens, lengths = helpers.pad_batch([[5, 9, 13, 2, 7], [3, 8, 21], [30, 31, 4, 6]])
    return tokens, lengths, torch.tensor([1.0, 0.0, 1.0])


def _spread(words, lengths):
    """The standard deviation of a batch's word vectors, padding left out: the push's unit."""
    return torch.cat([words[i, :n] for i, n in enumerate(lengths.tolist())]).std().detach()


def _plain_and_pushed_losses(adversarial_backward, model, tokens, lengths, labels, epsilon):
    """The two losses adversarial_backward computes: the plain reviews' and the pushed reviews'."""
    losses = []

    def recording_loss(logits, targets):
        losses.append(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets))
        return losses[-1]

    adversarial_backward(model, tokens, lengths, labels, recording_loss, epsilon)
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
    space = namespace("SentimentLSTM", "adversarial_backward")
    model = sentiment_lstm(embedding_dropout=dropout, dropout=dropout).train()
    tokens, lengths, labels = _adversarial_batch()
    torch.manual_seed(5)  # the same dropout masks, drawn in the same order, for both computations
    logits, loss = space["adversarial_backward"](model, tokens, lengths, labels, torch.nn.BCEWithLogitsLoss(), 2.0)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    torch.manual_seed(5)
    expected = _reference_adversarial_gradients(model, tokens, lengths, labels, 2.0)
    for name in grads:
        assert torch.allclose(grads[name], expected[name], atol=1e-6), name
    if dropout == 0:
        assert torch.equal(logits, model(tokens, lengths)) and loss.item() == pytest.approx(
            torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item())


def test_the_push_raises_the_loss_more_than_a_random_push_and_a_push_of_zero_is_the_plain_step():
    space = namespace("SentimentLSTM", "adversarial_backward")
    model = sentiment_lstm()
    tokens, lengths, labels = _adversarial_batch()
    plain, pushed = _plain_and_pushed_losses(space["adversarial_backward"], model, tokens, lengths, labels, 0.5)
    torch.manual_seed(0)
    words = model.embedding(tokens).detach()
    noise = torch.randn_like(words) * (tokens != 0)[..., None]  # no push on padding, as the gradient gives
    random_push = 0.5 * _spread(words, lengths) * noise / noise.flatten(1).norm(dim=1)[:, None, None]  # same length
    randomly_pushed = torch.nn.functional.binary_cross_entropy_with_logits(model.read(words + random_push, lengths),
                                                                            labels).item()
    assert pushed > plain and pushed - plain > abs(randomly_pushed - plain)  # the worst way, not just any way
    model.zero_grad()
    space["adversarial_backward"](model, tokens, lengths, labels, torch.nn.BCEWithLogitsLoss(), 0.0)
    at_zero = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    torch.nn.BCEWithLogitsLoss()(model(tokens, lengths), labels).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(at_zero[name], p.grad, atol=1e-6), name


def test_adversarial_training_learns_the_toy_task_and_makes_the_model_harder_to_push():
    space = namespace("train_epoch", "evaluate", "adversarial_backward")
    valid_sequences, valid_labels = _toy_data(32, seed=1)
    tokens, lengths = helpers.pad_batch(valid_sequences)
    labels = torch.tensor(valid_labels, dtype=torch.float)
    pushed_losses, accuracies = {}, {}
    for epsilon in (0.0, 3.0):
        model = sentiment_lstm(vocab_size=20, hidden_dim=8)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        train = helpers.BucketBatches(*_toy_data(), 8, shuffle=True, seed=0)
        for _ in range(6):
            space["train_epoch"](model, train, optimizer, loss_fn, 1.0, "cpu", epsilon)
        valid = helpers.BucketBatches(valid_sequences, valid_labels, 16)
        accuracies[epsilon] = space["evaluate"](model, valid, loss_fn, "cpu")[1]
        model.eval()
        _, pushed_losses[epsilon] = _plain_and_pushed_losses(space["adversarial_backward"], model, tokens, lengths,
                                                             labels, 3.0)  # validation reviews pushed the worst way
    assert accuracies[3.0] > 0.9
    assert pushed_losses[3.0] < pushed_losses[0.0]
