"""Word vectors from co-occurrence counts: counting, PPMI, the SVD and the whole pipeline."""

import collections
import itertools
import random
import time

import numpy as np
import pytest
import torch

import helpers
from conftest import CreatesAFile
from notebook_code import cell_containing


def dense(matrix):
    return matrix.to_dense().tolist()


def test_cooccurrence_weighs_by_distance_and_is_symmetric():
    counts = dense(helpers.cooccurrence_matrix([[2, 3, 4]], vocab_size=5, window=2))
    assert counts[2][3] == counts[3][2] == 1.0
    assert counts[3][4] == counts[4][3] == 1.0
    assert counts[2][4] == counts[4][2] == 0.5  # two tokens apart
    assert counts[2][2] == counts[0][2] == 0.0


def test_cooccurrence_never_crosses_reviews_and_skips_pad_and_unk():
    counts = dense(helpers.cooccurrence_matrix([[2, 3], [4, 1, 2], [0, 3]], vocab_size=5, window=1))
    assert counts[3][4] == 0.0  # the end of one review and the start of the next
    assert counts[4][2] == 0.0  # <unk> (1) between them, and the window is 1
    assert sum(counts[0]) == sum(counts[1]) == 0.0
    counts = dense(helpers.cooccurrence_matrix([[4, 1, 2]], vocab_size=5, window=2))
    assert counts[4][2] == 0.5  # <unk> is skipped, not a wall


def test_cooccurrence_rejects_ids_outside_the_vocabulary_and_a_bad_window():
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\)"):
        helpers.cooccurrence_matrix([[2, 7]], vocab_size=5)
    with pytest.raises(ValueError, match="window=0"):
        helpers.cooccurrence_matrix([[2, 3]], vocab_size=5, window=0)


def test_ppmi_keeps_only_pairs_that_meet_more_often_than_chance():
    # Pairs 2-3 and 4-5 meet often; 2-4 and 3-5 only once, less than their frequencies predict.
    counts = torch.zeros(6, 6, dtype=torch.float64)
    for a, b, n in ((2, 3, 9), (4, 5, 9), (2, 4, 1), (3, 5, 1)):
        counts[a, b] = counts[b, a] = n
    counts = counts.to_sparse()
    weights = dense(helpers.ppmi(counts, context_power=1.0))
    assert weights[2][3] > 0
    assert weights[2][4] == 0.0  # below chance, so clipped to zero
    assert all(value >= 0 for row in weights for value in row)


def test_ppmi_in_parts_is_ppmi_in_one_go_to_the_bit():
    # Parts of 7 entries: rows split between parts, and rows with nothing kept in a part.
    matrix = torch.rand(30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    counts = ((matrix + matrix.T) * 5 * (matrix > 0.6)).round().to_sparse_csr()
    whole, parts = helpers.ppmi(counts, part_size=10**9), helpers.ppmi(counts, part_size=7)
    assert whole.values().numel() < counts.values().numel()  # some entries fell below chance and were dropped
    for a, b in ((whole.crow_indices(), parts.crow_indices()), (whole.col_indices(), parts.col_indices()),
                 (whole.values(), parts.values())):
        assert torch.equal(a, b)


def test_csr_matrix_sorts_each_row_by_column():
    rows, cols = np.array([3, 0, 3, 1, 0], dtype=np.int32), np.array([1, 4, 0, 2, 1], dtype=np.int32)
    matrix = helpers._csr_matrix(rows, cols, np.arange(5.0), 5)
    assert matrix.crow_indices().tolist() == [0, 2, 3, 3, 5, 5]
    assert matrix.col_indices().tolist() == [1, 4, 2, 0, 1]
    assert matrix.values().tolist() == [4.0, 1.0, 3.0, 2.0, 0.0]


def test_svd_vectors_are_reproducible_unit_scale_and_leave_the_global_random_state_alone():
    matrix = torch.rand(40, 40, generator=torch.Generator().manual_seed(0))
    matrix = ((matrix + matrix.T) * (matrix > 0.7)).to_sparse()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = helpers.svd_word_vectors(matrix, dim=6, seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    assert torch.equal(first, helpers.svd_word_vectors(matrix, dim=6, seed=5))
    assert first.shape == (40, 6)
    assert first.std().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="dim=41"):
        helpers.svd_word_vectors(matrix, dim=41)


def test_pretrained_vectors_put_words_used_alike_next_to_each_other():
    # Two families of words, each used in its own contexts; no labels anywhere.
    rng = random.Random(0)
    good, bad = ["great", "superb", "lovely", "brilliant"], ["awful", "dreadful", "lousy", "terrible"]
    good_context, bad_context = ["loved", "joy", "smile", "fun"], ["hated", "waste", "boredom", "pain"]
    texts = []
    for _ in range(300):
        words, context = (good, good_context) if rng.random() < 0.5 else (bad, bad_context)
        texts.append([rng.choice(context), rng.choice(words), rng.choice(context), rng.choice(words)])
    vocab = helpers.build_vocab(texts)
    vectors = helpers.pretrain_word_vectors(texts, vocab, dim=4, window=2, seed=0)
    assert vectors.shape == (len(vocab), 4)
    assert vectors[vocab["<pad>"]].abs().sum() == 0  # padding stays zero for padding_idx
    assert set(helpers.nearest_words(vectors, vocab, "great", k=3)) == {"superb", "lovely", "brilliant"}
    assert set(helpers.nearest_words(vectors, vocab, "awful", k=3)) == {"dreadful", "lousy", "terrible"}
    with pytest.raises(KeyError, match="'unseen' is not in the vocabulary"):
        helpers.nearest_words(vectors, vocab, "unseen")


def test_pretraining_needs_some_words_that_meet():
    vocab = helpers.build_vocab([["lonely"]])
    with pytest.raises(ValueError, match="no two vocabulary words occur near each other"):
        helpers.pretrain_word_vectors([["lonely"], ["unknown"]], vocab, dim=1)


def test_unlabelled_reviews_are_read_and_a_missing_folder_says_how_to_go_on(tmp_path):
    reviews = helpers.read_unlabelled(helpers.SAMPLE_DIR)
    assert len(reviews) == 200 and all(review.strip() for review in reviews)
    with pytest.raises(FileNotFoundError, match=r"train/unsup.*pretrain_embeddings=False"):
        helpers.read_unlabelled(tmp_path)


def test_peak_memory_is_reported_in_mib():
    peak = helpers.peak_memory_mib(torch.device("cpu"))
    assert 10 < peak["cpu_rss_mib"] < 1_000_000


@pytest.mark.slow
def test_counting_in_chunks_gives_exactly_the_counts_of_counting_in_one_go():
    # Real reviews from the sample, so that frequent and rare words, repeats ("very very") and
    # <unk> all occur; every number of chunks must give the same matrix, bit for bit.
    texts, _ = helpers.read_imdb(helpers.SAMPLE_DIR, "train")
    token_lists = [helpers.tokenize(text) for text in texts]
    vocab = helpers.build_vocab(token_lists[:200], min_freq=2)
    id_lists = [helpers.numericalize(tokens, vocab, 10_000) for tokens in token_lists]
    one_go = helpers.cooccurrence_matrix(id_lists, len(vocab), window=5, n_chunks=1)
    assert one_go.values().numel() > 10_000
    for n_chunks in (2, 7, len(vocab) + 3):
        chunked = helpers.cooccurrence_matrix(id_lists, len(vocab), window=5, n_chunks=n_chunks)
        assert torch.equal(chunked.crow_indices(), one_go.crow_indices())
        assert torch.equal(chunked.col_indices(), one_go.col_indices())
        assert torch.equal(chunked.values(), one_go.values())
    # And the counts are those of a plain double loop over the pairs.
    expected = torch.zeros(len(vocab), len(vocab), dtype=torch.float64)
    for ids in id_lists:
        kept = [(position, i) for position, i in enumerate(ids.tolist()) if i > 1]
        for a, (position_a, i) in enumerate(kept):
            for position_b, j in kept[a + 1 :]:
                if position_b - position_a > 5:
                    break
                expected[i, j] += 1 / (position_b - position_a)
                expected[j, i] += 1 / (position_b - position_a)
    assert torch.allclose(one_go.to_dense(), expected, rtol=1e-12, atol=0)



# --------------------------------------------------------------------------- the cache of word vectors

CACHE_TEXTS = [["a", "good", "film", "a", "fine", "cast"], ["a", "bad", "film", "a", "poor", "plot", "zzz"],
               ["good", "cast", "fine", "film"], ["bad", "plot", "poor", "film", "a"]]
SETTINGS = dict(dim=3, window=2, context_power=0.75, seed=0)


@pytest.fixture
def counted_counting(monkeypatch):
    """helpers.cooccurrence_matrix, counting its calls in .calls: one for each set of vectors computed."""
    real = helpers.cooccurrence_matrix

    def counting(*args, **kwargs):
        counting.calls += 1
        return real(*args, **kwargs)

    counting.calls = 0
    monkeypatch.setattr(helpers, "cooccurrence_matrix", counting)
    return counting


@pytest.fixture
def cache_vocab():
    return helpers.build_vocab([["a", "good", "film", "fine", "cast", "bad", "plot"]])  # "poor" and "zzz": <unk>


def test_word_vectors_are_cached_as_npy_and_read_back_exactly(own_cache_dir, counted_counting, cache_vocab):
    first = helpers.pretrain_word_vectors(CACHE_TEXTS, cache_vocab, **SETTINGS)
    (cache,) = own_cache_dir.iterdir()
    assert cache.suffix == ".npy" and np.array_equal(np.load(cache, allow_pickle=False), first.numpy())
    again = helpers.pretrain_word_vectors(iter(CACHE_TEXTS), cache_vocab, **SETTINGS)  # a generator, as the notebook's
    assert torch.equal(again, first) and again.dtype == torch.float32 and counted_counting.calls == 1


@pytest.mark.parametrize("change", [dict(dim=2), dict(window=3), dict(context_power=1.0), dict(seed=1),
                                    "a known word", "a review fewer", "a split between reviews", "the vocabulary",
                                    "the version", "torch's version"])
def test_a_change_in_any_input_or_setting_computes_the_vectors_anew(own_cache_dir, counted_counting, cache_vocab,
                                                                    monkeypatch, change):
    first = helpers.pretrain_word_vectors(CACHE_TEXTS, cache_vocab, **SETTINGS)
    texts, vocab, settings = [list(tokens) for tokens in CACHE_TEXTS], cache_vocab, dict(SETTINGS)
    if isinstance(change, dict):
        settings.update(change)
    elif change == "a known word":
        texts[3][0] = "good"
    elif change == "a review fewer":
        texts.pop()
    elif change == "a split between reviews":
        texts[2:] = [texts[2] + texts[3][:2], texts[3][2:]]
    elif change == "the vocabulary":  # the same ids for every review, but another word at an unused index
        itos = vocab.get_itos()
        itos[itos.index("cast")] = "crew"
        vocab = helpers.vocab_from_tokens(itos)
        texts = [["crew" if token == "cast" else token for token in tokens] for tokens in texts]
    elif change == "the version":
        monkeypatch.setattr(helpers, "WORD_VECTORS_VERSION", helpers.WORD_VECTORS_VERSION + 1)
    else:
        monkeypatch.setattr(torch, "__version__", torch.__version__ + ".other")
    vectors = helpers.pretrain_word_vectors(texts, vocab, **settings)
    assert counted_counting.calls == 2 and len(list(own_cache_dir.iterdir())) == 2
    if change in ("the vocabulary", "the version", "torch's version"):
        assert torch.equal(vectors, first)  # the same numbers, but not read from the other key's file


def test_settings_given_as_numpy_numbers_find_the_same_cache(own_cache_dir, counted_counting, cache_vocab):
    helpers.pretrain_word_vectors(CACHE_TEXTS, cache_vocab, **SETTINGS)
    numpy_settings = {name: np.float64(value) if name == "context_power" else np.int64(value)
                      for name, value in SETTINGS.items()}
    helpers.pretrain_word_vectors(CACHE_TEXTS, cache_vocab, **numpy_settings)
    assert counted_counting.calls == 1


def test_the_key_is_the_tokens_so_another_unknown_word_recomputes_the_same_vectors(own_cache_dir, counted_counting,
                                                                                   cache_vocab):
    # The key hashes tokens, not ids (a cached run then looks none up): two texts that differ only in an unknown
    # word have the same ids and vectors, but two keys. Recomputing is the safe side of that.
    first = helpers.pretrain_word_vectors(CACHE_TEXTS, cache_vocab, **SETTINGS)
    other = [["yyy" if token == "zzz" else token for token in tokens] for tokens in CACHE_TEXTS]
    second = helpers.pretrain_word_vectors(other, cache_vocab, **SETTINGS)  # both <unk>
    assert counted_counting.calls == 2 and torch.equal(first, second)


@pytest.mark.parametrize("damage", ["truncated", "empty", "another shape", "float64", "a pickle"])
def test_a_damaged_or_foreign_vectors_file_is_never_trusted(own_cache_dir, counted_counting, cache_vocab, damage):
    first = helpers.pretrain_word_vectors(CACHE_TEXTS, cache_vocab, **SETTINGS)
    (cache,) = own_cache_dir.iterdir()
    whole = cache.read_bytes()
    if damage == "truncated":
        cache.write_bytes(whole[:-7])
    elif damage == "empty":
        cache.write_bytes(b"")
    elif damage == "another shape":
        np.save(cache, first.numpy()[:-1])
    elif damage == "float64":
        np.save(cache, first.numpy().astype(np.float64))
    else:  # unpickling it would run code: open(marker, "w")
        np.save(cache, np.array([CreatesAFile(own_cache_dir.parent / "marker")], dtype=object), allow_pickle=True)
    assert torch.equal(helpers.pretrain_word_vectors(CACHE_TEXTS, cache_vocab, **SETTINGS), first)
    assert counted_counting.calls == 2 and cache.read_bytes() == whole
    assert not (own_cache_dir.parent / "marker").exists()


def test_without_a_cache_folder_no_vectors_are_written(own_cache_dir, counted_counting, cache_vocab, monkeypatch):
    monkeypatch.setattr(helpers, "write_atomic", None)  # any write, anywhere, would fail
    for _ in range(2):
        helpers.pretrain_word_vectors(CACHE_TEXTS, cache_vocab, **SETTINGS, cache_dir=None)
    assert counted_counting.calls == 2 and not list(own_cache_dir.iterdir())


# --------------------------------------------------------------------------- no leakage, in the notebook's own cells

NOTEBOOK_DATA_CELLS = ('helpers.read_imdb(data_root, "train")', "helpers.tokenize_all(train_texts)",
                       "helpers.stratified_split(", "helpers.build_vocab(", "helpers.pretrain_word_vectors(")


def _marked_imdb(root):
    """An IMDB-like folder: every review carries a word of its own (twice, to pass min_freq) naming where it is.

    Every review also holds words all splits share, in orders of its own, so that counting the
    pairs of a review that should not be counted changes the shared words' counts too.
    """
    shared = ["film", "plot", "cast", "story", "acting", "music", "ending", "script"]  # the notebook shows 12 words
    for split, folder, n in (("train", "pos", 6), ("train", "neg", 6), ("test", "pos", 3), ("test", "neg", 3),
                             ("train", "unsup", 4)):
        (root / split / folder).mkdir(parents=True)
        for i in range(n):
            words = shared[i:] + shared[:i]
            if split == "test" or folder == "unsup":
                words = words[::-1]
            marker = f"{split}{folder}{i}word"
            (root / split / folder / f"{i}_7.txt").write_text(f"{marker} {' '.join(words)} {marker}<br />",
                                                              encoding="utf-8")
    return root


def _run_the_notebooks_data_cells(tmp_path, monkeypatch, **parameters):
    """Execute the notebook's cells that read the data, split it, build the vocabulary and pretrain the vectors.

    Returns their namespace and the id lists the co-occurrence counting was given.
    """
    monkeypatch.setattr(helpers, "SAMPLE_DIR", _marked_imdb(tmp_path / "aclImdb"))
    counted = []
    real_counting = helpers.cooccurrence_matrix

    def recording_counting(id_lists, *args, **kwargs):
        counted.extend(np.asarray(ids).tolist() for ids in id_lists)
        return real_counting(id_lists, *args, **kwargs)

    monkeypatch.setattr(helpers, "cooccurrence_matrix", recording_counting)
    space = {"helpers": helpers, "np": np, "time": time, "itertools": itertools, "display": print, "use_sample": True,
             "imdb_archive": "", "valid_fraction": 1 / 3, "valid_size": 0, "train_size": 0, "test_size": 0,
             "seed": 0,
             "init_checkpoint": "",
             "min_freq": 2, "max_vocab_size": 1000, "pretrain_embeddings": True, "embedding_dim": 3,
             "word_vector_window": 2, "ppmi_context_power": 0.75, "max_length": 50, **parameters}
    for source in dict.fromkeys(cell_containing(text) for text in NOTEBOOK_DATA_CELLS):  # each cell once, in order
        exec(source, space)  # noqa: S102 - the notebook's own cells
    return space, counted


def test_the_notebooks_vocabulary_holds_the_training_splits_words_only(tmp_path, monkeypatch):
    space, _ = _run_the_notebooks_data_cells(tmp_path, monkeypatch)
    train_idx, valid_idx = space["train_idx"], space["valid_idx"]
    assert len(train_idx) == 8 and len(valid_idx) == 4 and not set(train_idx) & set(valid_idx)
    in_training = collections.Counter(token for i in train_idx for token in space["train_tokens"][i])
    expected = {token for token, count in in_training.items() if count >= 2} | {"<pad>", "<unk>"}
    vocabulary = set(space["vocab"].get_itos())
    assert vocabulary == expected
    marked = {token for tokens in space["train_tokens"] + space["test_tokens"] for token in tokens
              if token.endswith("word")}
    assert len(marked) == 18 and sum(token.startswith("trainneg") or token.startswith("trainpos")
                                     for token in vocabulary) == 8  # each training review's own word, no other


def test_the_notebooks_word_vectors_count_training_and_unlabelled_reviews_only(tmp_path, monkeypatch):
    space, counted = _run_the_notebooks_data_cells(tmp_path, monkeypatch)
    vocab = space["vocab"]
    unlabelled = [helpers.tokenize(text) for text in helpers.read_unlabelled(space["data_root"])]
    expected = [vocab.lookup_indices(space["train_tokens"][i]) for i in space["train_idx"]]
    expected += [vocab.lookup_indices(tokens) for tokens in unlabelled]
    assert counted == expected  # the training split's reviews, then the unlabelled ones: no validation or test review
    assert space["word_vectors"].shape == (len(vocab), 3)


def test_the_notebooks_training_subset_has_exactly_train_size_reviews(tmp_path, monkeypatch):
    space, counted = _run_the_notebooks_data_cells(tmp_path, monkeypatch, train_size=5)
    assert len(space["train_idx"]) == 5 and set(space["train_idx"]) <= set(range(12)) - set(space["valid_idx"])
    assert abs(sum(space["train_labels"][i] for i in space["train_idx"]) - 2.5) < 1
    assert len(counted) == 5 + 4


def test_the_notebooks_validation_subset_has_valid_size_reviews_of_the_held_out_split_only(tmp_path, monkeypatch):
    whole, _ = _run_the_notebooks_data_cells(tmp_path / "whole", monkeypatch)
    space, _ = _run_the_notebooks_data_cells(tmp_path / "subset", monkeypatch, valid_size=2)
    assert len(space["valid_idx"]) == 2 and set(space["valid_idx"]) <= set(whole["valid_idx"])
    assert space["train_idx"] == whole["train_idx"]  # the training split is the same, reviews and all
    assert sorted(space["train_labels"][i] for i in space["valid_idx"]) == [0, 1]  # stratified
    assert space["valid_labels"] == [space["train_labels"][i] for i in space["valid_idx"]]
