"""The two stacks: torchtext's tokenizer and vocabulary and helpers.py's own give the same results.

On the pinned stack (torch 2.3.1 with torchtext 0.18.0) both run and are compared directly, on
every review of the bundled sample and on hand-made edge cases. On the current stack (no
torchtext) the built-in ones are compared with digests of what torchtext gave on the sample.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import helpers

REPO = Path(__file__).resolve().parents[1]
SPECIALS = [helpers.PAD_TOKEN, helpers.UNK_TOKEN]
# (min_freq, max_size): with and without a cut, cuts that fall inside a run of equal counts
# (ties are ordered by token), and the smallest vocabulary.
SETTINGS = [(1, None), (2, None), (5, None), (2, 2000), (1, 3000), (3, 500), (1, 3)]
# What torchtext 0.18.0 gave on the sample (tests/test_stacks.py's digest of it, made on the pinned
# stack): the tokens of its 600 reviews, cleaned, and the vocabulary's tokens for each setting.
TORCHTEXT_TOKENS = ("d8e13007ad0fd558", 91806)
TORCHTEXT_VOCABS = {(1, None): (9705, "f491fb4e6e08468f"), (2, None): (4317, "4aeecca8087899e8"),
                    (5, None): (1651, "a890855a01ee7217"), (2, 2000): (2000, "f73077f2149ab062"),
                    (1, 3000): (3000, "649d53aa5c981cff"), (3, 500): (500, "fd7d6e67038958fd"),
                    (1, 3): (3, "c022493726c06a6a")}
EDGE_CASES = [
    "", "   ", "Great<br />movie, NOT bad!", 'He said "wow"... (really?) ;-) 10/10: yes!!', "don't 'quote' it's",
    "<br/>tag<br /><BR />x", "Ünïcödé ÇA İstanbul straße ＦＵＬＬ\u00a0width\u2003space\ttab\nnew",
    "emoji 👍🏽 and \u200bzero-width", "a.b,c(d)e!f?g;h:i'j\"k", "....,,,,!!!!????''''",
]


def digest(obj):
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def sample_texts():
    root = helpers.SAMPLE_DIR
    texts = helpers.read_imdb(root, "train")[0] + helpers.read_imdb(root, "test")[0] + helpers.read_unlabelled(root)
    assert len(texts) == 600
    return texts


@pytest.fixture(scope="module")
def sample_tokens(sample_texts):
    return [helpers._basic_english_normalize(helpers.clean_text(text)) for text in sample_texts]


@pytest.fixture(scope="module")
def torchtext_api():
    """torchtext's tokenizer and vocabulary factories, where this stack can load them."""
    if not helpers.check_stack(no_torchtext=False):
        pytest.skip("torchtext is not part of this stack: the built-in path is checked against its digests instead")
    import torchtext

    torchtext.disable_torchtext_deprecation_warning()
    from torchtext.data.utils import get_tokenizer
    from torchtext.vocab import build_vocab_from_iterator, vocab

    return get_tokenizer("basic_english"), build_vocab_from_iterator, vocab


# --------------------------------------------------------------------------- choosing the path


@pytest.mark.parametrize("versions, no_torchtext, expected", [
    ({"torch": "2.3.1+cu121", "torchtext": "0.18.0+cpu"}, False, True),
    ({"torch": "2.3.1+cu121", "torchtext": "0.18.0+cpu"}, True, False),  # SENTIMENT_NO_TORCHTEXT=1
    ({"torch": "2.13.0+cpu", "torchtext": None}, False, False),
    ({"torch": "2.13.0", "torchtext": None}, True, False),
    ({"torch": "10.0.0", "torchtext": None}, False, False),
])
def test_torchtext_is_used_only_with_the_torch_it_was_built_for(versions, no_torchtext, expected):
    assert helpers.check_stack(versions, no_torchtext=no_torchtext) is expected


@pytest.mark.parametrize("versions, found", [
    ({"torch": "2.5.1", "torchtext": "0.18.0"}, "torchtext 0.18.0 is installed, but it loads only with torch 2.3 and "
                                                "this Python has torch 2.5.1"),
    ({"torch": "2.3.1", "torchtext": "0.17.2"}, "torchtext 0.17.2 is installed, but it loads only with torch 2.3 and "
                                                "this Python has torch 2.3.1"),
])
def test_a_torchtext_that_cannot_load_is_left_alone_with_a_warning_naming_both(versions, found):
    with pytest.warns(UserWarning) as record:
        assert helpers.check_stack(versions, no_torchtext=False) is False
    assert found in str(record[0].message) and helpers.STACK_FIX in str(record[0].message)


@pytest.mark.parametrize("versions, found", [
    ({"torch": None, "torchtext": None}, "this Python has no torch"),
    ({"torch": None, "torchtext": "0.18.0"}, "this Python has no torch"),
    ({"torch": "2.2.2", "torchtext": "0.17.2"}, "this Python has torch 2.2.2"),
    ({"torch": "1.13.1", "torchtext": None}, "this Python has torch 1.13.1"),
])
def test_only_a_missing_or_too_old_torch_stops_the_import_naming_it_and_the_fix(versions, found):
    with pytest.raises(ImportError) as error:
        helpers.check_stack(versions, no_torchtext=False)
    assert found in str(error.value) and helpers.TORCH_FIX in str(error.value)


def test_this_environment_uses_torchtext_exactly_where_it_can():
    assert helpers.USE_TORCHTEXT == helpers.check_stack() == ("torchtext" in sys.modules)
    recorded = helpers.environment_info(torch.device("cpu"))["torchtext"]
    assert (recorded is not None) == helpers.USE_TORCHTEXT
    vocab = helpers.build_vocab([["a"]])
    assert isinstance(vocab, helpers._Vocab) != helpers.USE_TORCHTEXT


@pytest.mark.slow
def test_sentiment_no_torchtext_forces_the_built_in_path():
    code = ("import sys, helpers; v = helpers.build_vocab([['a', 'b', 'a']]); "
            "print(helpers.USE_TORCHTEXT, 'torchtext' in sys.modules, type(v).__name__, v.get_itos())")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, SENTIMENT_NO_TORCHTEXT="1"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "False False _Vocab ['<pad>', '<unk>', 'a', 'b']"


# --------------------------------------------------------------------------- on every stack: torchtext's results


def test_the_tokens_of_every_sample_review_are_torchtexts(sample_texts, sample_tokens):
    assert (digest(sample_tokens), sum(map(len, sample_tokens))) == TORCHTEXT_TOKENS
    assert [helpers.tokenize(text) for text in sample_texts] == sample_tokens  # whichever path this stack uses


@pytest.mark.parametrize("min_freq, max_size", SETTINGS)
def test_the_vocabulary_of_the_sample_is_torchtexts(sample_tokens, min_freq, max_size):
    vocab = helpers.build_vocab(sample_tokens, min_freq=min_freq, max_size=max_size)
    assert (len(vocab), digest(vocab.get_itos())) == TORCHTEXT_VOCABS[(min_freq, max_size)]
    built_in = helpers._build_vocab_from_iterator(sample_tokens, min_freq=min_freq, specials=SPECIALS,
                                                  max_tokens=max_size)
    assert built_in.get_itos() == vocab.get_itos()


def test_the_built_in_vocabulary_behaves_as_torchtexts_documents():
    vocab = helpers._build_vocab_from_iterator([["b", "a", "c", "a"], ["c", "d"]], specials=SPECIALS)
    assert vocab.get_itos() == ["<pad>", "<unk>", "a", "c", "b", "d"]  # by count, ties by token
    assert vocab.get_stoi() == {token: i for i, token in enumerate(vocab.get_itos())}
    assert len(vocab) == 6 and "a" in vocab and "z" not in vocab and vocab.get_default_index() is None
    with pytest.raises(RuntimeError, match="not found and default index is not set"):
        vocab["z"]
    with pytest.raises(RuntimeError):
        vocab.lookup_indices(["a", "z"])
    vocab.set_default_index(1)
    assert vocab["z"] == 1 and vocab.lookup_indices(["a", "z", "d"]) == vocab(["a", "z", "d"]) == [2, 1, 5]
    assert vocab.lookup_tokens(range(2, 6)) == ["a", "c", "b", "d"] and vocab.lookup_token(0) == "<pad>"
    for index in (-1, 6):
        with pytest.raises(RuntimeError, match="out of bounds"):
            vocab.lookup_token(index)
    with pytest.raises(AssertionError):
        helpers._build_vocab_from_iterator([["a"]], specials=SPECIALS, max_tokens=2)


# --------------------------------------------------------------------------- pinned stack: side by side


def test_the_tokenizers_agree_on_every_sample_review_raw_and_cleaned(torchtext_api, sample_texts):
    tokenizer = torchtext_api[0]
    for text in sample_texts + EDGE_CASES:
        assert helpers._basic_english_normalize(text) == tokenizer(text)
        cleaned = helpers.clean_text(text)
        assert helpers._basic_english_normalize(cleaned) == tokenizer(cleaned)


def assert_same_vocab(ours, theirs, probes):
    assert ours.get_itos() == theirs.get_itos() and ours.get_stoi() == theirs.get_stoi()
    assert len(ours) == len(theirs) and ours.get_default_index() == theirs.get_default_index()
    assert ours.lookup_tokens(range(len(theirs))) == theirs.lookup_tokens(range(len(theirs)))
    assert [token in ours for token in probes] == [token in theirs for token in probes]
    if theirs.get_default_index() is not None:
        assert ours.lookup_indices(probes) == theirs.lookup_indices(probes)
        assert [ours[token] for token in probes[:1000]] == [theirs[token] for token in probes[:1000]]


@pytest.mark.parametrize("min_freq, max_size", SETTINGS + [(1, 9705), (1, 20000), (4, 101), (1, 4)])
def test_the_vocabularies_agree_token_by_token_and_id_by_id(torchtext_api, sample_tokens, min_freq, max_size):
    build_vocab_from_iterator = torchtext_api[1]
    theirs = build_vocab_from_iterator(sample_tokens, min_freq=min_freq, specials=SPECIALS, special_first=True,
                                       max_tokens=max_size)
    ours = helpers._build_vocab_from_iterator(sample_tokens, min_freq=min_freq, specials=SPECIALS,
                                              max_tokens=max_size)
    probes = [token for tokens in sample_tokens for token in tokens] + ["never-seen", "", "<PAD>"]
    assert_same_vocab(ours, theirs, probes[::7] + probes[-3:])
    for vocab in (ours, theirs):
        vocab.set_default_index(vocab[helpers.UNK_TOKEN])
    assert_same_vocab(ours, theirs, probes)


@pytest.mark.parametrize("max_size", [None, 3, 4, 5, 6])
def test_the_vocabularies_agree_where_specials_occur_in_the_text_and_counts_tie(torchtext_api, max_size):
    build_vocab_from_iterator = torchtext_api[1]
    token_lists = [["<unk>", "b", "a", "<pad>", "é", "B"], ["a", "b", "<unk>", "e\u0301", "Z"], ["z", "<unk>"]]
    theirs = build_vocab_from_iterator(token_lists, specials=SPECIALS, max_tokens=max_size)
    ours = helpers._build_vocab_from_iterator(token_lists, specials=SPECIALS, max_tokens=max_size)
    assert_same_vocab(ours, theirs, ["a", "<unk>", "q"])


def test_the_rebuilt_vocabularies_agree(torchtext_api, sample_tokens, monkeypatch):
    itos = helpers._build_vocab_from_iterator(sample_tokens, min_freq=2, specials=SPECIALS).get_itos()
    monkeypatch.setattr(helpers, "USE_TORCHTEXT", False)
    ours = helpers.vocab_from_tokens(itos)
    monkeypatch.setattr(helpers, "USE_TORCHTEXT", True)
    theirs = helpers.vocab_from_tokens(itos)
    assert isinstance(ours, helpers._Vocab) and not isinstance(theirs, helpers._Vocab)
    assert_same_vocab(ours, theirs, [t for tokens in sample_tokens[:50] for t in tokens] + ["unseen"])


def test_build_vocab_and_numericalize_agree_on_both_paths(torchtext_api, sample_tokens, monkeypatch):
    ids = {}
    for use_torchtext in (True, False):
        monkeypatch.setattr(helpers, "USE_TORCHTEXT", use_torchtext)
        vocab = helpers.build_vocab(sample_tokens, min_freq=2, max_size=2000)
        assert isinstance(vocab, helpers._Vocab) != use_torchtext
        ids[use_torchtext] = [helpers.numericalize(tokens, vocab, 200).tolist() for tokens in sample_tokens]
    assert ids[True] == ids[False]


@pytest.mark.slow  # two make processes each, 1 to 5 s
@pytest.mark.parametrize("installed, expected", [((), ".venv"), ((".venv",), ".venv"),
                                                 ((".venv-current",), ".venv-current"),
                                                 ((".venv", ".venv-current"), ".venv")])
def test_make_without_stack_uses_the_stack_installed_here(tmp_path, installed, expected):
    """Issue 35's readings: a class on the light install (.venv-current only) typed a plain `make class` and
    started the 5.7 GB pinned install. Unset, STACK is current where only .venv-current is installed."""
    import shutil

    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    for lock in ("requirements.lock", "requirements-current.lock"):
        (tmp_path / lock).write_text("")
    for venv in installed:
        (tmp_path / venv).mkdir()
        (tmp_path / venv / ".installed").write_text("")  # newer than the lock files: nothing to install
    env = {k: v for k, v in os.environ.items() if k not in ("STACK", "MAKEFLAGS", "MAKELEVEL")}
    dry_run = subprocess.run(["make", "--no-print-directory", "-n", "lint"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert f"{expected}/bin/ruff check" in dry_run.stdout, dry_run.stdout + dry_run.stderr
    assert ("STACK=current" in dry_run.stdout) == (expected == ".venv-current")
    explicit = subprocess.run(["make", "--no-print-directory", "-n", "lint", "STACK=pinned"], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
    assert ".venv/bin/ruff check" in explicit.stdout


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-current.lock"])
def test_the_locks_leave_out_rfc3987_syntax_which_builds_a_parser_at_import(lock):
    """Issue 33: jsonschema 4.25 brought rfc3987-syntax into its format-nongpl extra, and importing it (as every
    process that imports nbformat does: papermill, pytest, JupyterLab) took 2.1 of papermill's 2.7 s of imports
    (python -X importtime). requirements*.txt keep jsonschema below 4.25."""
    text = (REPO / lock).read_text(encoding="utf-8")
    assert "\njsonschema==4.24." in text
    assert "\nrfc3987-syntax==" not in text and "\nlark==" not in text
