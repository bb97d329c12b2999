"""Predictions land on their own reviews, and a file of reviews is read line by line as written."""

import csv

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import helpers
from notebook_code import cell_containing, namespace

torch.set_num_threads(1)

WORDS = "great awful film plot acting boring superb dull cast story".split()


def notebook_model(vocab_size):
    """The notebook's own SentimentLSTM, small, with dropout off."""
    config = dict(vocab_size=vocab_size, embedding_dim=6, hidden_dim=5, n_layers=1, bidirectional=True,
                  embedding_dropout=0.0, dropout=0.0, pooling="max", pad_index=0)
    torch.manual_seed(0)
    return namespace("SentimentLSTM")["SentimentLSTM"](**config).eval()


def shuffled_reviews(n=13, seed=0):
    """Reviews of 1 to 3n words in an order that is neither sorted by length nor its reverse."""
    rng = np.random.default_rng(seed)
    lengths = rng.permutation(np.arange(1, 3 * n + 1, 3))[:n]
    reviews = [" ".join(rng.choice(WORDS, size=length)) for length in lengths]
    order = np.argsort([len(r.split()) for r in reviews], kind="stable")
    assert not np.array_equal(order, np.arange(n)) and not np.array_equal(order, np.arange(n)[::-1])
    return reviews


@pytest.fixture
def vocab():
    return helpers.build_vocab([WORDS])


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_each_probability_is_the_one_its_review_gets_alone_whatever_the_order(vocab, batch_size):
    model = notebook_model(len(vocab))
    reviews = shuffled_reviews()
    together = helpers.predict_proba(model, reviews, vocab, 50, "cpu", batch_size=batch_size)
    alone = np.array([helpers.predict_proba(model, [review], vocab, 50, "cpu")[0] for review in reviews])
    assert len(np.unique(alone.round(6))) == len(reviews)  # distinct, so a mix-up cannot go unseen
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)


def test_predict_logits_puts_each_batchs_logits_back_in_the_examples_order(vocab):
    model = notebook_model(len(vocab))
    ids = [helpers.numericalize(helpers.tokenize(review), vocab, 50) for review in shuffled_reviews(seed=1)]
    batches = helpers.BucketBatches(ids, [0] * len(ids), batch_size=4)  # evaluation batches, sorted by length
    assert [i for idx in batches.batch_indices() for i in idx] != list(range(len(ids)))
    logits = helpers.predict_logits(model, batches, "cpu")
    with torch.no_grad():
        alone = [model(torch.as_tensor(x, dtype=torch.long)[None], torch.tensor([len(x)])).item() for x in ids]
    np.testing.assert_allclose(logits, alone, rtol=0, atol=1e-6)


def test_predict_logits_refuses_batches_that_leave_an_example_out(vocab):
    class DropsTheFirst(helpers.BucketBatches):
        def batch_indices(self):
            return [idx[idx != 0] for idx in super().batch_indices()]

    batches = DropsTheFirst([[2, 3], [4], [5, 6, 7]], [0, 0, 0], batch_size=2)
    with pytest.raises(RuntimeError, match="1 of 3 examples without a logit"):
        helpers.predict_logits(notebook_model(len(vocab)), batches, "cpu")


# --------------------------------------------------------------------------- the review file


def write_lines(path, text):
    path.write_bytes(text.encode("utf-8"))
    return path


def stand_in(reviews):
    """A model for predict_review_file that gives every review 0.75."""
    return np.full(len(reviews), 0.75)


def predicted(path, **kwargs):
    """predict_review_file's return value and predictions.csv's (line, review) pairs, for a file of reviews."""
    out_path = path.parent / "predictions.csv"
    result = helpers.predict_review_file(path, out_path, stand_in, **kwargs)
    with open(out_path, encoding="utf-8", newline="") as f:
        return result, [(int(row["line"]), row["review"]) for row in csv.DictReader(f)]


def test_nel_and_unicode_line_separators_stay_inside_their_review(tmp_path):
    reviews = ["Loved it\x85 truly\x85 a gem.", "Dull\u2028and long\u2029and loud.",
               "Odd\x0bbreaks\x0cand\x1cseparators", "A lone\rcarriage return stays."]
    path = write_lines(tmp_path / "reviews.txt", "\n".join(reviews) + "\n")
    assert predicted(path) == ((4, 0, []), list(zip([1, 2, 3, 4], reviews, strict=True)))


def test_crlf_line_ends_are_removed_and_a_missing_final_newline_loses_nothing(tmp_path):
    path = write_lines(tmp_path / "reviews.txt", "good one\r\n\r\nbad\x85one\r\nlast one")
    assert predicted(path) == ((3, 1, [2]), [(1, "good one"), (3, "bad\x85one"), (4, "last one")])


def test_a_line_with_no_words_is_skipped_and_listed_and_the_others_are_kept(tmp_path):
    text = "first review\n\x85\nsecond review\n<br /><br />\n\u2028 \t\nthird\x85review\n\n"
    path = write_lines(tmp_path / "reviews.txt", text)
    assert predicted(path, batch_size=2) == ((3, 4, [2, 4, 5, 7]),
                                             [(1, "first review"), (3, "second review"), (6, "third\x85review")])


def test_a_file_of_lines_without_words_holds_no_review_and_leaves_no_predictions(tmp_path):
    path = write_lines(tmp_path / "reviews.txt", "\x85\n<br />\n\u2028\n")
    with pytest.raises(ValueError, match="holds no review"):
        predicted(path)
    assert list(tmp_path.iterdir()) == [path]  # neither predictions.csv nor its temporary file


def test_the_notebooks_predict_cell_writes_one_row_per_review_with_the_files_line_numbers(tmp_path, vocab, capsys):
    reviews = ["great film\x85 superb cast", "awful\u2028boring plot", "dull story"]
    path = write_lines(tmp_path / "reviews.txt", f"{reviews[0]}\n\x85\n{reviews[1]}\n\n{reviews[2]}\n")
    model = notebook_model(len(vocab))
    tokens = [helpers.tokenize(review) for review in reviews]
    features = helpers.NBNgramFeatures((1, 2)).fit(tokens, [1, 0, 0])
    baseline = helpers.NgramModel.from_fitted(features, LogisticRegression().fit(features.transform(tokens), [1, 0, 0]))
    space = namespace("score_all_three", "predict_review", predict_file=str(path), model=model, vocab=vocab,
                      max_length=50, device="cpu", run_dir=tmp_path, baseline=baseline, batch_size=2, pad_index=0,
                      combination_rule="stacked", combination_weights=np.array([0.5, 2.0]), combination_bias=-0.1)
    exec(cell_containing("helpers.predict_review_file("), space)  # noqa: S102 - the notebook's own cell (and probes)
    with open(tmp_path / "predictions.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(row["line"]), row["review"]) for row in rows] == list(zip([1, 3, 5], reviews, strict=True))
    lstm = helpers.predict_proba(model, reviews, vocab, 50, "cpu")
    ngram = baseline.logits(tokens)
    combined = helpers.sigmoid(0.5 * (np.log(lstm) - np.log1p(-lstm)) + 2.0 * ngram - 0.1)
    np.testing.assert_allclose([float(row["prob_lstm"]) for row in rows], lstm, atol=1e-6)
    np.testing.assert_allclose([float(row["prob_ngram"]) for row in rows], helpers.sigmoid(ngram), atol=1e-6)
    np.testing.assert_allclose([float(row["prob_positive"]) for row in rows], combined, atol=1e-6)
    assert [row["label"] for row in rows] == [helpers.LABEL_NAMES[int(p >= 0.5)] for p in combined]
    assert "3 predictions" in capsys.readouterr().out


@pytest.mark.slow
def test_predict_review_file_streams_a_batch_at_a_time_and_writes_an_excerpt_of_each_review(tmp_path):
    """Issue 32: memory bounded by a batch, not the file; predictions.csv holds each review's start only."""
    import tracemalloc

    long_review = "great film " * 2_000  # 22,000 characters
    lines = [long_review if i % 50 == 0 else f"review number {i} was dull" for i in range(20_000)]
    path = write_lines(tmp_path / "reviews.txt", "\n".join(lines) + "\n\n")
    batches = []

    def predict(reviews):
        batches.append(len(reviews))
        return np.full(len(reviews), 0.75)

    tracemalloc.start()
    try:
        n_predicted, n_skipped, skipped = helpers.predict_review_file(path, tmp_path / "predictions.csv", predict,
                                                                      batch_size=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (n_predicted, n_skipped, skipped) == (20_000, 1, [20_001])
    assert max(batches) == 100 and sum(batches) == 20_000
    assert path.stat().st_size > 8_000_000 and peak < 3_000_000  # the file: 9 MB; held at once: a batch of it
    with open(tmp_path / "predictions.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20_000 and rows[1]["review"] == "review number 1 was dull"
    assert rows[0]["review"] == long_review[:helpers.PREDICTION_EXCERPT_CHARS] + "…"
    assert (tmp_path / "predictions.csv").stat().st_size < 2_000_000


def test_predictions_csv_holds_an_excerpt_of_a_long_review(tmp_path):
    path = write_lines(tmp_path / "reviews.txt", "word " * 10_000 + "\n")
    assert predicted(path) == ((1, 0, []), [(1, ("word " * 10_000)[:helpers.PREDICTION_EXCERPT_CHARS] + "…")])


def test_a_review_line_longer_than_the_limit_is_refused_naming_the_line(tmp_path, monkeypatch):
    monkeypatch.setattr(helpers, "MAX_REVIEW_LINE_BYTES", 100)
    path = write_lines(tmp_path / "reviews.txt", "short one\n" + "x" * 200 + "\n")
    with pytest.raises(ValueError, match="line 2 is longer than 100 bytes"):
        predicted(path)
