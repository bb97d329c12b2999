"""The notebook's own model, training step, evaluation pass, early stopping and predict_review."""

import time

import numpy as np
import pytest
import torch

import helpers
from conftest import TinyModel
from notebook_code import cell_containing, namespace

torch.set_num_threads(1)


def sentiment_lstm(**overrides):
    config = dict(vocab_size=40, embedding_dim=6, hidden_dim=5, n_layers=1, bidirectional=True,
                  embedding_dropout=0.0, dropout=0.0, pooling="max", pad_index=0, cell="lstm")
    torch.manual_seed(0)
    return namespace("SentimentLSTM")["SentimentLSTM"](**dict(config, **overrides)).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("pooling", ["max", "mean", "last", "max+mean"])
@pytest.mark.parametrize("n_layers, bidirectional", [(1, True), (2, True), (2, False)])
def test_a_review_gets_the_same_logit_whatever_padding_follows_it(pooling, n_layers, bidirectional, cell):
    model = sentiment_lstm(pooling=pooling, n_layers=n_layers, bidirectional=bidirectional, cell=cell)
    review = [5, 9, 13, 2, 7]
    alone = model(torch.tensor([review]), torch.tensor([5]))
    for padding in (1, 4, 30):
        tokens, lengths = helpers.pad_batch([review, [3] * (5 + padding)])
        batched = model(tokens, lengths)
        assert batched[0].item() == pytest.approx(alone.item(), abs=1e-6)


@pytest.mark.parametrize("cell, layer", [("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU), ("rnn", torch.nn.RNN)])
def test_the_cell_parameter_chooses_the_recurrent_layer_of_both_directions(cell, layer):
    model = sentiment_lstm(cell=cell, n_layers=2)
    assert [type(m) for m in (*model.forward_rnns, *model.backward_rnns)] == [layer] * 4
    weights = {"lstm": 4, "gru": 3, "rnn": 1}[cell] * 5  # gates (and candidate) per hidden unit: rows of weight_ih
    assert model.forward_rnns[0].weight_ih_l0.shape == (weights, 6)


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


@pytest.mark.parametrize("clip_norm", [1e-3, 0.05])
def test_the_notebooks_training_step_clips_its_models_gradient_to_clip_norm(clip_norm):
    space = namespace("train_epoch")
    model = sentiment_lstm(vocab_size=20, dropout=0.2, embedding_dropout=0.2).train()
    optimizer = GradientRecordingAdam(model.parameters(), lr=0.02)
    train = helpers.BucketBatches(*_toy_data(), 8, shuffle=True, seed=0)
    _, _, clipped = space["train_epoch"](model, train, optimizer, torch.nn.BCEWithLogitsLoss(), clip_norm, "cpu")
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
    """Execute the notebook's training cell (fit, then what an interrupt leaves) on the toy task; its namespace."""
    model = TinyModel(vocab_size=20)
    space = namespace("train_epoch", "evaluate", "fit", model=model, train_batches=train_batches,
                      valid_batches=helpers.BucketBatches(*_toy_data(32, seed=1), 16), run_dir=tmp_path,
                      checkpoint_dir=tmp_path / "checkpoint",
                      n_epochs=n_epochs, patience=patience, vocab=None, model_config={}, max_length=20,
                      clip_norm=1.0, device="cpu", time=time, lr=0.02, loss_fn=torch.nn.BCEWithLogitsLoss())
    exec(cell_containing("history, stopper, interrupted = fit(model"), space)  # noqa: S102
    return space


def test_an_interrupt_before_the_first_epoch_ends_stops_the_notebook_with_a_clear_message(tmp_path):
    class InterruptedBatches(helpers.BucketBatches):
        def __iter__(self):
            raise KeyboardInterrupt  # the user presses stop in the first epoch

    with pytest.raises(RuntimeError, match="interrupted before its first epoch ended, so no model was saved"):
        _run_training_cell(tmp_path, InterruptedBatches(*_toy_data(), 8), n_epochs=3, patience=2)
    assert not (tmp_path / "checkpoint").exists()


def test_an_interrupt_later_keeps_the_best_checkpoint_and_the_history(tmp_path):
    class InterruptedBatches(helpers.BucketBatches):
        def __iter__(self):
            if self.epoch == 2:  # the user presses stop during the third epoch
                raise KeyboardInterrupt
            yield from super().__iter__()

    space = _run_training_cell(tmp_path, InterruptedBatches(*_toy_data(), 8, shuffle=True), n_epochs=5, patience=5)
    assert space["interrupted"] and space["history"]["epoch"] == [1, 2]
    assert len(space["history"]["seconds"]) == 2  # one entry per epoch, not a total
    assert (tmp_path / "checkpoint" / "weights.safetensors").exists()  # the run goes on with the best epoch's


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


def tiny_ngram_model():
    """An n-gram model fitted on four tiny reviews, as the notebook's section 2 fits one."""
    from sklearn.linear_model import LogisticRegression

    reviews, labels = [["great", "film"], ["awful", "plot"], ["great", "plot"], ["awful", "film"]], [1, 0, 1, 0]
    features = helpers.NBNgramFeatures((1, 2)).fit(reviews, labels)
    return helpers.NgramModel.from_fitted(features, LogisticRegression().fit(features.transform(reviews), labels))


@pytest.fixture
def predict_review():
    vocab = helpers.build_vocab([["great", "film", "awful", "plot", "."]])
    space = namespace("predict_review", model=sentiment_lstm(vocab_size=len(vocab)), vocab=vocab, max_length=20,
                      device="cpu", baseline=tiny_ngram_model(), combination_rule="stacked",
                      combination_weights=np.array([0.7, 0.4]), combination_bias=0.1)
    return space["predict_review"]


def test_predict_review_returns_the_combined_label_and_probability_and_both_parts(predict_review):
    label, probability, parts = predict_review("A great film.")
    assert label in helpers.LABEL_NAMES and 0 < probability < 1
    assert label == helpers.LABEL_NAMES[probability >= 0.5]
    space = predict_review.__wrapped__.__globals__  # the namespace the notebook cell ran in
    lstm = float(space["model"](torch.tensor([[space["vocab"][t] for t in ("a", "great", "film", ".")]]),
                                torch.tensor([4])))
    ngram = float(space["baseline"].logits([["a", "great", "film", "."]])[0])
    assert parts == {"LSTM": round(float(helpers.sigmoid(lstm)), 4), "n-grams": round(float(helpers.sigmoid(ngram)), 4)}
    assert probability == round(float(helpers.sigmoid(0.7 * lstm + 0.4 * ngram + 0.1)), 4)


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
    label, probability, _ = predict_review("zorblax quonk")
    assert label in helpers.LABEL_NAMES and 0 < probability < 1
    assert "no word of 'zorblax quonk' is in the vocabulary" in capsys.readouterr().out  # which probe it was


def test_the_training_step_hands_freed_memory_back_only_above_the_mark(monkeypatch):
    # The lesson's train_epoch asks after every step; helpers trims only when the process is above the mark.
    space = namespace("train_epoch")
    asked = []
    monkeypatch.setattr(helpers, "return_freed_memory", lambda above_mib=None: asked.append(above_mib))
    model = sentiment_lstm(vocab_size=20).train()
    train = helpers.BucketBatches(*_toy_data(), 8, shuffle=True, seed=0)
    space["train_epoch"](model, train, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.BCEWithLogitsLoss(),
                         1.0, "cpu")
    assert asked == [helpers.TRIM_ABOVE_MIB] * len(train)


def test_freed_memory_is_handed_back_above_the_mark_and_kept_below_it(monkeypatch):
    resident = helpers.resident_mib()
    if resident is None:
        pytest.skip("no /proc/self/statm here")
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched: resident memory must show it
    assert helpers.resident_mib() >= resident + 60
    del block
    trims = []
    monkeypatch.setattr(helpers.ctypes, "CDLL", lambda name: type("libc", (), {"malloc_trim": trims.append})())
    assert helpers.return_freed_memory(above_mib=1e9) is False and trims == []  # far below: no trim, no cost
    assert helpers.return_freed_memory(above_mib=1.0) is True and trims == [0]  # above: malloc_trim(0)
    assert helpers.return_freed_memory() is True and trims == [0, 0]  # no mark: always


def test_fit_records_each_epochs_validation_loss_of_the_weights_that_epoch_trained(tmp_path):
    """Issue 33: history["valid_loss"][k] is the loss of the weights after k + 1 epochs of training, the
    weights early stopping saves for it; a fit that validated before training would lag one epoch."""
    valid = helpers.BucketBatches(*_toy_data(32, seed=1), 16)
    loss_fn, weights_after = torch.nn.BCEWithLogitsLoss(), []
    space = namespace("train_epoch", "evaluate", "fit", time=time)
    train_epoch = space["train_epoch"]

    def train_epoch_and_keep_the_weights(model, *args, **kwargs):
        result = train_epoch(model, *args, **kwargs)
        weights_after.append({k: v.clone() for k, v in model.state_dict().items()})
        return result

    space["train_epoch"] = train_epoch_and_keep_the_weights
    helpers.set_seed(0)
    model = TinyModel(vocab_size=20)
    history, stopper, _ = space["fit"](
        model, torch.optim.Adam(model.parameters(), lr=0.02), helpers.BucketBatches(*_toy_data(), 8, shuffle=True),
        valid, loss_fn, n_epochs=3, patience=3, clip_norm=1.0, device="cpu", checkpoint_dir=tmp_path / "ck",
        vocab=None, checkpoint_config={})
    assert len(weights_after) == len(history["valid_loss"]) == 3
    losses = []
    for weights in weights_after:
        model.load_state_dict(weights)
        losses.append(space["evaluate"](model, valid, loss_fn, "cpu")[0])
    assert history["valid_loss"] == pytest.approx(losses, abs=1e-6)
    assert len(set(losses)) == 3  # each epoch's weights have their own loss: a lag would show
    saved = helpers.read_weights(tmp_path / "ck")
    assert all(torch.equal(saved[k], weights_after[stopper.best_epoch - 1][k]) for k in saved)


def test_the_recorded_best_valid_acc_is_read_at_the_best_epoch_not_the_last():
    """Issue 33: best_valid_acc feeds the sweep summaries and the exercises' answers. The sample run's two
    epochs have the same validation accuracy, so tests/test_notebook.py's check of the saved figure cannot
    tell the epochs apart: this checks helpers.run_metrics, which the metrics cell calls, on a history whose
    best epoch (by validation loss) is neither its last nor its most accurate."""
    history = {"epoch": [1, 2, 3], "valid_loss": [0.5, 0.4, 0.45], "valid_acc": [0.70, 0.75, 0.80]}
    stopper = helpers.EarlyStopping(5, "unused")
    stopper.best_epoch, stopper.best_loss = 2, 0.4
    scores = {"accuracy": 0.9, "loss": 0.3, "precision": 0.9, "recall": 0.9, "f1": 0.9, "confusion_matrix": []}
    metrics = helpers.run_metrics(
        test=scores, valid=scores, history=history, stopper=stopper, interrupted=False, n_train_reviews=10,
        n_valid_reviews=5, model=TinyModel(vocab_size=20), calibration={},
        ngram_baseline=dict(c=1.0, max_n=2, n_features=3, valid_acc=0.8, valid_acc_by_c={1.0: 0.8}, test=scores,
                            seconds=1.0),
        combined=dict(rule="stacked", weights=[1.0, 2.0], bias=0.5, valid_acc=0.85, test=scores),
        ood_sets={}, ood_scores={}, seconds=dict(training=3.0, pretraining=0.0, analysis=1.0),
        peak_memory_before_evaluation={}, params={}, config={}, device=torch.device("cpu"))
    assert (metrics["best_epoch"], metrics["best_valid_loss"], metrics["best_valid_acc"]) == (2, 0.4, 0.75)
    assert (metrics["combined"]["lstm_weight"], metrics["combined"]["ngram_weight"]) == (1.0, 2.0)
    untrained = helpers.run_metrics(**{**dict(
        test=scores, valid=scores, stopper=stopper, interrupted=False, n_train_reviews=10, n_valid_reviews=5,
        model=TinyModel(vocab_size=20), calibration={}, ngram_baseline=dict(
            c=1.0, max_n=2, n_features=3, valid_acc=0.8, valid_acc_by_c={}, test=scores, seconds=1.0),
        combined=dict(rule="stacked", weights=[1.0, 2.0], bias=0.5, valid_acc=0.85, test=scores), ood_sets={},
        ood_scores={}, seconds=dict(training=0.0, pretraining=0.0, analysis=1.0), peak_memory_before_evaluation={},
        params={}, config={}, device=torch.device("cpu")), "history": {"epoch": [], "valid_acc": []}})
    assert untrained["best_epoch"] is None and untrained["best_valid_acc"] is None  # a checkpoint used as it is


def test_the_training_progress_hands_freed_memory_back_after_each_step(monkeypatch):
    """Issue 35: train_epoch reads like the bare loop; the memory trimming it had moved into helpers.progress,
    which trims after each batch's work (when the loop asks for the next), never before the first."""
    calls = []
    monkeypatch.setattr(helpers, "return_freed_memory", lambda above_mib=None: calls.append(("trim", above_mib)))
    for item in helpers.progress(["a", "b"], "training", trim_above_mib=1700):
        calls.append(("step", item))
    assert calls == [("step", "a"), ("trim", 1700), ("step", "b"), ("trim", 1700)]
    assert list(helpers.progress(["a"], "evaluation")) == ["a"] and calls[-1] == ("trim", 1700)  # no trimming asked


def test_finish_saves_a_loaded_model_used_as_it_is_and_refuses_a_run_that_saved_none(tmp_path):
    model = TinyModel(vocab_size=20)
    unused = helpers.EarlyStopping(2, tmp_path / "as-is")
    unused.finish(model, interrupted=False)  # n_epochs 0: no epoch ran, the loaded model is the run's model
    assert (tmp_path / "as-is" / "weights.safetensors").exists()
    diverged = helpers.EarlyStopping(2, tmp_path / "nan")
    for epoch in (1, 2):
        diverged.update(epoch, float("nan"), model)  # NaN is never "better": nothing saved
    with pytest.raises(RuntimeError, match="no epoch of 2 gave a finite validation loss"):
        diverged.finish(model, interrupted=False)
    assert not (tmp_path / "nan").exists()
