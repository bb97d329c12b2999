"""Cleaning, tokenizing (and the cache of token lists), the vocabulary, numericalising, the split and batching."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import helpers
from conftest import REPO


def test_clean_text_removes_breaks_tags_and_entities():
    assert helpers.clean_text("Good<br /><br />film &amp; <i>cast</i>") == "Good  film &  cast "


def test_tokenize_lowercases_and_splits_punctuation():
    assert helpers.tokenize("Great<br />movie, NOT bad!") == ["great", "movie", ",", "not", "bad", "!"]


def test_vocab_has_distinct_pad_and_unk_and_respects_min_freq_and_max_size():
    tokens = [["a", "a", "a", "b", "b", "c"], ["a", "b", "d"]]
    vocab = helpers.build_vocab(tokens, min_freq=2)
    assert vocab.get_itos() == ["<pad>", "<unk>", "a", "b"]
    assert vocab["c"] == vocab["never seen"] == 1
    assert len(helpers.build_vocab(tokens, min_freq=1, max_size=3)) == 3


def test_vocab_round_trips_through_its_token_list():
    vocab = helpers.build_vocab([["x", "y", "y"]])
    rebuilt = helpers.vocab_from_tokens(vocab.get_itos())
    assert rebuilt.get_itos() == vocab.get_itos()
    assert rebuilt["unseen"] == 1


@pytest.mark.parametrize("itos", [["<unk>", "<pad>", "a"], ["<pad>", "<unk>", "a", "a"]])
def test_vocab_from_tokens_refuses_a_malformed_list(itos):
    with pytest.raises(ValueError, match="vocabulary"):
        helpers.vocab_from_tokens(itos)


def test_numericalize_maps_unknown_to_unk_and_truncates():
    vocab = helpers.build_vocab([["good", "film"]])
    ids = helpers.numericalize(["good", "bad", "film", "good"], vocab, max_length=3)
    assert ids.dtype == np.int32  # compact: 4 bytes an id
    assert ids.tolist() == [vocab["good"], 1, vocab["film"]]


def test_tokens_are_interned_so_repeated_words_share_one_string():
    first, second = helpers.tokenize("The film, the FILM."), helpers.tokenize("a film")
    assert first == ["the", "film", ",", "the", "film", "."]
    assert first[0] is first[3] and first[1] is first[4] is second[1]



# --------------------------------------------------------------------------- the cache of token lists

TEXTS = ["A <i>great</i> film!", "Awful, AWFUL plot.", "<br />", "Ünïcödé ＦＵＬＬ\u00a0width\u2003space\x85NEL"]


@pytest.fixture
def counted_tokenize(monkeypatch):
    """helpers.tokenize, counting the texts it tokenizes in .calls."""
    real = helpers.tokenize

    def counting(text):
        counting.calls += 1
        return real(text)

    counting.calls = 0
    monkeypatch.setattr(helpers, "tokenize", counting)
    return counting


def test_token_lists_are_cached_as_text_and_read_back_exactly_and_interned(own_cache_dir, counted_tokenize):
    expected = [helpers.tokenize(text) for text in TEXTS]
    counted_tokenize.calls = 0
    assert helpers.tokenize_all(TEXTS) == expected and counted_tokenize.calls == len(TEXTS)
    (cache,) = own_cache_dir.iterdir()
    assert cache.read_text(encoding="utf-8").split("\n") == [" ".join(tokens) for tokens in expected] + [""]
    again = helpers.tokenize_all(TEXTS)
    assert again == expected and counted_tokenize.calls == len(TEXTS)  # read from the cache: nothing tokenized
    assert again[1][0] is again[1][2] is helpers.tokenize("awful")[0]  # one string for every copy of a token
    assert helpers.tokenize_all([]) == []


@pytest.mark.parametrize("change", ["a text", "the order", "a split between texts", "the tokenizer's version",
                                    "the tokenizer in use"])
def test_a_change_in_the_texts_or_the_tokenizer_tokenizes_anew(own_cache_dir, counted_tokenize, monkeypatch, change):
    helpers.tokenize_all(TEXTS)
    texts = list(TEXTS)
    if change == "a text":
        texts[1] = "Awful, AWFUL plot!"
    elif change == "the order":
        texts.reverse()
    elif change == "a split between texts":
        texts[:2] = ["A <i>great</i> film!Awful, ", "AWFUL plot."]
    elif change == "the tokenizer's version":
        monkeypatch.setattr(helpers, "TOKENIZER_VERSION", helpers.TOKENIZER_VERSION + 1)
    else:
        monkeypatch.setattr(helpers, "USE_TORCHTEXT", not helpers.USE_TORCHTEXT)
    counted_tokenize.calls = 0
    helpers.tokenize_all(texts)
    assert counted_tokenize.calls == len(texts) and len(list(own_cache_dir.iterdir())) == 2


@pytest.mark.parametrize("damage", ["a line short", "cut inside a line", "a line too many", "not UTF-8", "empty"])
def test_a_damaged_cache_file_is_never_trusted(own_cache_dir, counted_tokenize, damage):
    expected = helpers.tokenize_all(TEXTS)
    (cache,) = own_cache_dir.iterdir()
    text = cache.read_bytes()
    damaged = {"a line short": text[: text.rindex(b"\n", 0, -1) + 1], "cut inside a line": text[:-3],
               "a line too many": text + b"extra\n", "not UTF-8": b"\xff" + text, "empty": b""}[damage]
    cache.write_bytes(damaged)
    counted_tokenize.calls = 0
    assert helpers.tokenize_all(TEXTS) == expected and counted_tokenize.calls == len(TEXTS)
    assert cache.read_bytes() == text  # and the file is whole again


def test_without_a_cache_folder_nothing_is_written(own_cache_dir, counted_tokenize, monkeypatch):
    monkeypatch.setattr(helpers, "write_atomic", None)  # any write, anywhere, would fail
    expected = [helpers.tokenize(text) for text in TEXTS]
    counted_tokenize.calls = 0
    for _ in range(2):
        assert helpers.tokenize_all(TEXTS, cache_dir=None) == expected
    assert counted_tokenize.calls == 2 * len(TEXTS) and not list(own_cache_dir.iterdir())


def test_tokens_that_would_not_survive_the_text_format_are_not_cached(own_cache_dir, monkeypatch):
    for tokens in (["two words"], [""], ["tab\tinside"], ["nel\x85inside"]):
        monkeypatch.setattr(helpers, "tokenize", lambda text, tokens=tokens: list(tokens))
        assert helpers.tokenize_all(["x"]) == [tokens]
    assert not list(own_cache_dir.iterdir())



@pytest.mark.slow
def test_sentiment_cache_dir_moves_the_cache(tmp_path):
    code = ("import helpers; print(helpers.CACHE_DIR == helpers.tokenize_all.__defaults__[0] "
            "== helpers.pretrain_word_vectors.__defaults__[-1]); helpers.tokenize_all(['A film.']); "
            "print(sorted(p.suffix for p in helpers.CACHE_DIR.iterdir()))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, SENTIMENT_CACHE_DIR=str(tmp_path / "elsewhere")))
    assert done.stdout.split("\n")[:2] == ["True", "['.txt']"], done.stderr


def test_stratified_split_is_balanced_disjoint_complete_and_seeded():
    labels = [0] * 60 + [1] * 40
    train, valid = helpers.stratified_split(labels, 0.25, seed=3)
    assert sorted(train + valid) == list(range(100))
    assert np.mean([labels[i] for i in valid]) == pytest.approx(0.4)
    assert len(valid) == 25
    assert helpers.stratified_split(labels, 0.25, seed=3) == (train, valid)
    assert helpers.stratified_split(labels, 0.25, seed=4) != (train, valid)


def _check_subset(indices, labels, size, seed=0):
    subset = helpers.stratified_subset(indices, labels, size, seed)
    assert len(subset) == size  # exactly size, whatever the rounding
    assert len(set(subset)) == size and set(subset) <= set(indices) and subset == sorted(subset)
    split_labels = np.asarray(labels)[indices]
    for label in np.unique(split_labels):
        exact_share = size * np.mean(split_labels == label)
        assert abs(sum(labels[i] == label for i in subset) - exact_share) < 1  # within one of its share
    return subset


@pytest.mark.parametrize("size", [1, 2, 3, 99, 100, 101, 177, 199])
def test_stratified_subset_of_a_balanced_split_has_exactly_size_reviews_balanced_within_one(size):
    labels = [0, 1] * 150
    indices = list(range(0, 300, 3)) + list(range(1, 300, 3)) + list(range(2, 200, 3))  # 200 of each label
    _check_subset(sorted(indices), labels, size)


@pytest.mark.parametrize("size", [1, 7, 10, 33, 101, 250, 299, 300])
def test_stratified_subset_of_an_unbalanced_split_keeps_the_shares_within_one(size):
    labels = [1] * 210 + [0] * 90 + [2] * 7  # three labels, 70%, 30% and a handful
    _check_subset(list(range(300)), labels, size)
    _check_subset(list(range(307)), labels, min(size, 307))


def test_stratified_subset_is_seeded():
    labels = [0, 1] * 100
    first = helpers.stratified_subset(range(200), labels, 101, seed=5)
    assert helpers.stratified_subset(range(200), labels, 101, seed=5) == first
    assert helpers.stratified_subset(range(200), labels, 101, seed=6) != first


@pytest.mark.parametrize("size", [201, -1])
def test_stratified_subset_refuses_a_size_it_cannot_give_naming_the_parameter(size):
    with pytest.raises(ValueError, match=rf"train_size={size}\b.*200 reviews available"):
        helpers.stratified_subset(range(200), [0, 1] * 100, size, seed=0)


def test_pad_batch_pads_at_the_end_and_returns_lengths():
    tokens, lengths = helpers.pad_batch([[5, 6, 7], [8]])
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert lengths.tolist() == [3, 1]


def test_bucket_batches_cover_every_example_once_keep_the_last_batch_and_group_lengths():
    rng = np.random.default_rng(0)
    sequences = [[1] * int(n) for n in rng.integers(1, 300, size=1003)]
    batches = helpers.BucketBatches(sequences, [0] * len(sequences), batch_size=32, shuffle=True, seed=1)
    seen = np.concatenate([idx for *_, idx in batches])
    assert sorted(seen.tolist()) == list(range(1003))
    assert len(batches) == 32  # 31 full batches and the last one of 11
    random_batches = helpers.BucketBatches(sequences, [0] * 1003, 32, shuffle=True, pool_batches=1)
    assert batches.padding_fraction() < 0.05 < random_batches.padding_fraction()


def test_bucket_batches_reshuffle_each_epoch_reproducibly():
    sequences = [[1] * (i % 50 + 1) for i in range(500)]
    first = helpers.BucketBatches(sequences, [0] * 500, 16, shuffle=True, seed=7)
    orders = [[idx.tolist() for *_, idx in first] for _ in range(2)]
    assert orders[0] != orders[1]
    again = helpers.BucketBatches(sequences, [0] * 500, 16, shuffle=True, seed=7)
    assert [idx.tolist() for *_, idx in again] == orders[0]


def test_reverse_padded_reverses_within_each_length_and_is_its_own_inverse():
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]).unsqueeze(-1).float()
    lengths = torch.tensor([3, 2])
    reversed_x = helpers.reverse_padded(x, lengths)
    assert reversed_x.squeeze(-1).tolist() == [[3, 2, 1, 0], [5, 4, 0, 0]]
    assert torch.equal(helpers.reverse_padded(reversed_x, lengths), x)


@pytest.mark.parametrize("how, expected", [("last", [[3.0], [-1.0]]), ("max", [[3.0], [2.0]]),
                                           ("mean", [[2.0], [0.5]]), ("max+mean", [[3.0, 2.0], [2.0, 0.5]])])
def test_pool_over_time_ignores_padding(how, expected):
    outputs = torch.tensor([[1.0, 2.0, 3.0, 99.0], [2.0, -1.0, 99.0, 99.0]]).unsqueeze(-1)
    pooled = helpers.pool_over_time(outputs, torch.tensor([3, 2]), how)
    assert pooled.tolist() == expected


def test_pool_over_time_names_the_valid_poolings():
    with pytest.raises(ValueError, match="'last', 'max', 'mean', 'max\\+mean'"):
        helpers.pool_over_time(torch.zeros(1, 2, 1), torch.tensor([2]), "min")


def test_a_model_does_not_read_padding(tiny_model):
    tiny_model.eval()
    review = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 10, 11]])
    alone = tiny_model(review, torch.tensor([3]))
    in_batch = tiny_model(padded, torch.tensor([3, 6]))[:1]
    assert torch.allclose(alone, in_batch, atol=1e-6)
