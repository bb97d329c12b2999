"""The out-of-domain sets' readers, the n-gram model and the combination as a checkpoint saves and serves them."""

import csv
import dataclasses
import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as scipy_t
from sklearn.linear_model import LogisticRegression

import helpers

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # CI's ../shared beside the clone
REVIEWS = [["not", "bad", "at", "all"], ["great", "film"], ["bad", "film"], ["not", "great"], ["a", "great", "cast"],
           ["dull", "and", "bad"]]
LABELS = [1, 1, 0, 0, 1, 0]


def polarity_archive(path, reviews, extra=()):
    """A tar.gz in the polarity v2.0 layout: reviews is {member name: text}; extra: more TarInfo members."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in {"poldata.README.2.0": "notes", **reviews}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path


# --------------------------------------------------------------------------- the readers
def test_labelled_sentences_take_their_label_from_after_the_last_tab(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes(b"Great phone.\t1\r\nA tab\there, then bad.\t0\n\nWorks fine\t1\n")
    texts, labels = helpers.read_labelled_sentences(path)
    assert texts == ["Great phone.", "A tab\there, then bad.", "Works fine"] and labels == [1, 0, 1]


@pytest.mark.parametrize("content, message", [
    (b"no tab here\n", "line 1: expected a sentence, a tab and 0 or 1"),
    (b"ok\t1\nrated\t5\n", "line 2: expected"),
    (b"\t1\n", "line 1"),
    (b"\n\n", "holds no labelled sentence"),
])
def test_a_malformed_sentences_file_is_refused_naming_the_line(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        helpers.read_labelled_sentences(path)
    assert str(path) in str(error.value)


def test_polarity_labels_come_from_their_folders_and_nothing_else_is_read(tmp_path):
    link = tarfile.TarInfo("txt_sentoken/pos/cv999_link.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    path = polarity_archive(tmp_path / "p.tar.gz", {
        "txt_sentoken/pos/cv001_2.txt": "a fine film .\nloved it .\n", "txt_sentoken/neg/cv000_1.txt": "dull .\n",
        "txt_sentoken/pos/cv000_1.txt": "great .\n", "txt_sentoken/neg/other.md": "not a review",
        "elsewhere/pos/cv5.txt": "outside"}, extra=[link])
    texts, labels = helpers.read_polarity(path)
    assert texts == ["dull .", "great .", "a fine film . loved it ."] and labels == [0, 1, 1]


def test_a_polarity_archive_too_big_or_of_the_wrong_kind_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(helpers, "POLARITY_MAX_BYTES", 100)
    big = polarity_archive(tmp_path / "big.tar.gz", {"txt_sentoken/pos/a.txt": "x" * 80,
                                                     "txt_sentoken/neg/b.txt": "y" * 80})
    with pytest.raises(ValueError, match="expands to more than 100 bytes"):
        helpers.read_polarity(big)
    bz2 = tmp_path / "bz.tar.gz"
    with tarfile.open(bz2, "w:bz2") as tar:
        tar.addfile(tarfile.TarInfo("txt_sentoken/pos/a.txt"), io.BytesIO(b""))
    with pytest.raises(ValueError, match="not a valid tar.gz"):
        helpers.read_polarity(bz2)
    only_pos = polarity_archive(tmp_path / "pos.tar.gz", {"txt_sentoken/pos/a.txt": "fine"})
    with pytest.raises(ValueError, match="lacks txt_sentoken/neg"):
        helpers.read_polarity(only_pos)


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared data folder is not beside this clone")
def test_the_shared_copies_are_the_published_files_and_read_balanced():
    loaded = helpers.load_ood_sets(SHARED, download_missing=False, cache_dir=None)
    assert list(loaded) == ["amazon", "yelp", "polarity"]
    for name, size in (("amazon", 1000), ("yelp", 1000), ("polarity", 2000)):
        data = loaded[name]
        assert data.sha256 == data.spec.sha256, name
        assert len(data.texts) == len(data.tokens) == size and data.labels.count(1) == size // 2, name
    assert loaded["amazon"].spec.role == "development"
    assert {loaded[name].spec.role for name in ("yelp", "polarity")} == {"evaluation only"}
    assert loaded["amazon"].labels[:3] == [0, 1, 1]  # the file's first three lines end in 0, 1, 1
    assert loaded["polarity"].texts[0].startswith("plot : two teen couples go to a church party")  # neg/cv000


def test_a_missing_set_is_noted_and_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(helpers, "OOD_DIR", tmp_path / "ood")
    notes = []
    assert helpers.load_ood_sets(tmp_path, download_missing=False, log=notes.append) == {}
    assert len(notes) == 3 and all("not found" in note and "skipped" in note for note in notes)


def test_a_copy_that_is_not_the_published_file_is_used_and_said_so(tmp_path, monkeypatch):
    monkeypatch.setattr(helpers, "OOD_DIR", tmp_path / "ood")
    (tmp_path / "yelp_labelled.txt").write_text("Tasty.\t1\nCold food.\t0\n")
    notes = []
    loaded = helpers.load_ood_sets(tmp_path, download_missing=False, log=notes.append, cache_dir=None)
    assert list(loaded) == ["yelp"] and loaded["yelp"].labels == [1, 0]
    assert any("is not the published yelp_labelled.txt" in note for note in notes)


def test_a_download_is_checked_against_the_published_checksum(tmp_path, monkeypatch, http_server):
    monkeypatch.setattr(helpers, "OOD_DIR", tmp_path / "ood")
    good = b"Great.\t1\nAwful.\t0\n"
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("sentiment labelled sentences/amazon_cells_labelled.txt", good)
        z.writestr("__MACOSX/sentiment labelled sentences/._amazon_cells_labelled.txt", b"junk")
    http_server.routes["/s.zip"] = (bundle.getvalue(), None)
    import hashlib

    spec = dataclasses.replace(helpers.OOD_SETS[0], url=http_server.url + "/s.zip",
                               sha256=hashlib.sha256(good).hexdigest())
    path = helpers.find_ood_set(spec, "", download_missing=True, log=print)
    assert path == tmp_path / "ood" / "amazon_cells_labelled.txt" and path.read_bytes() == good
    path.unlink()
    with pytest.raises(ValueError, match="not the published"):
        helpers.find_ood_set(dataclasses.replace(spec, sha256="0" * 64), "", download_missing=True)
    assert not path.exists()  # a download that fails its checksum is deleted


def test_offline_a_set_that_cannot_be_downloaded_is_noted(tmp_path, monkeypatch, http_server):
    monkeypatch.setattr(helpers, "OOD_DIR", tmp_path / "ood")
    spec = dataclasses.replace(helpers.OOD_SETS[2], url=http_server.url + "/missing.tar.gz")
    notes = []
    assert helpers.find_ood_set(spec, "", download_missing=True, log=notes.append) is None
    assert "could not be downloaded" in notes[0] and "skipped" in notes[0]


# --------------------------------------------------------------------------- the n-gram model
def fitted_model(c=1.0):
    features = helpers.NBNgramFeatures(ngram_range=(1, 2)).fit(REVIEWS, LABELS)
    regression = LogisticRegression(C=c, solver="liblinear").fit(features.transform(REVIEWS), LABELS)
    return features, regression, helpers.NgramModel.from_fitted(features, regression)


def test_the_ngram_model_scores_as_the_fitted_regression_does():
    features, regression, model = fitted_model()
    tests = [["not", "bad"], ["great", "film", "great"], ["unseen", "words"], ["bad", "film", "at", "all"]]
    assert np.allclose(model.logits(tests), regression.decision_function(features.transform(tests)), atol=1e-12)
    assert model.logits([["unseen"]])[0] == model.bias == regression.intercept_[0]
    assert model.c == 1.0 and model.max_n == 2


def test_coverage_is_the_share_of_distinct_ngrams_seen_in_training():
    _, _, model = fitted_model()
    # "great film great": great, film, "great film", "film great" -> three of four seen
    # "not bad at xyz": not, bad, at, xyz, "not bad", "bad at", "at xyz" -> five of seven
    assert model.coverage([["great", "film", "great"], ["not", "bad", "at", "xyz"], ["xyz"]]).tolist() == [
        3 / 4, 5 / 7, 0.0]


def test_the_saved_ngram_model_reloads_to_the_same_logits_to_the_bit(tmp_path):
    _, _, model = fitted_model(c=0.3)
    helpers.save_ngram_model(tmp_path, model)
    reloaded = helpers.load_ngram_model(tmp_path)
    tests = [tokens + ["great"] for tokens in REVIEWS] + [["film", "not", "great", "at", "all"]]
    assert np.array_equal(reloaded.logits(tests), model.logits(tests))
    assert np.array_equal(reloaded.coverage(tests), model.coverage(tests))
    assert reloaded.ngrams() == model.ngrams() and reloaded.c == 0.3 and reloaded.bias == model.bias
    assert reloaded.weights.dtype == np.float64 and reloaded.ratios.dtype == np.float32
    assert helpers.has_ngram_model(tmp_path) and not helpers.has_ngram_model(tmp_path / "elsewhere")


def _rewrite(folder, name, change):
    path = folder / name
    path.write_bytes(change(path.read_bytes()))


def _json_change(**fields):
    def change(data):
        value = json.loads(data)
        value.update(fields)
        return json.dumps(value).encode()
    return change


def _weights(ratios, weights):
    from safetensors.numpy import save

    return lambda _: save({"ratios": ratios, "weights": weights})


N = 20  # the n-grams of fitted_model (its test checks the count)


@pytest.mark.parametrize("name, change, message", [
    ("ngram_model.json", lambda d: b"{not json", "ngram_model.json is not valid JSON"),
    ("ngram_model.json", lambda d: b"[1, 2]", "must hold a JSON object, not a list"),
    ("ngram_model.json", _json_change(extra=1), "unknown fields \\['extra'\\]"),
    ("ngram_model.json", _json_change(max_n="2"), "field 'max_n' = '2' is not valid"),
    ("ngram_model.json", _json_change(max_n=7), "field 'max_n' = '7' is not valid: expected 1, 2 or 3"),
    ("ngram_model.json", _json_change(n_ngrams=10**9), "field 'n_ngrams'"),
    ("ngram_model.json", _json_change(n_ngrams=5), "does not match n_ngrams = 5 in ngram_model.json"),
    ("ngram_model.json", _json_change(bias=None), "field 'bias'"),
    ("ngram_model.json", _json_change(c=-1), "field 'c'"),
    ("ngram_model.json", _json_change(format=2), "field 'format'"),
    ("ngrams.txt", lambda d: d + b"one more\n", "lines, not the"),
    ("ngrams.txt", lambda d: d.rstrip(b"\n"), "each ended by a newline"),
    ("ngrams.txt", lambda d: d.replace(d.split(b"\n")[1], d.split(b"\n")[0], 1), "repeats line 1"),
    ("ngrams.txt", lambda d: d.replace(d.split(b"\n")[0], b"a b c d", 1), "is not 1 to 2 tokens"),
    ("ngrams.txt", lambda d: b"\xff" + d[1:], "not UTF-8"),
    ("ngram_weights.safetensors", lambda d: d[:-8], "the file holds"),
    ("ngram_weights.safetensors", lambda d: b"\xff" * 8 + d[8:], "header length"),
    ("ngram_weights.safetensors", _weights(np.zeros(N, np.float64), np.zeros(N, np.float64)),
     "does not match n_ngrams = 20 in ngram_model.json: ratios: F64 \\[20\\], which implies F32 \\[20\\]"),
    ("ngram_weights.safetensors", _weights(np.zeros(N, np.float32), np.zeros(N + 1, np.float64)), "weights: F64"),
    ("ngram_weights.safetensors", _weights(np.zeros(N, np.float32), np.full(N, np.nan)), "not finite"),
])
def test_each_malformed_ngram_file_is_refused_naming_the_file(tmp_path, name, change, message):
    _, _, model = fitted_model()
    assert len(model.ngrams()) == N
    helpers.save_ngram_model(tmp_path, model)
    _rewrite(tmp_path, name, change)
    with pytest.raises(ValueError, match=message) as error:
        helpers.load_ngram_model(tmp_path)
    assert name in str(error.value)


def test_ngram_files_must_be_regular_files_of_a_bounded_size(tmp_path):
    _, _, model = fitted_model()
    helpers.save_ngram_model(tmp_path, model)
    (tmp_path / "ngrams.txt").unlink()
    with pytest.raises(FileNotFoundError, match="lacks ngrams.txt"):
        helpers.load_ngram_model(tmp_path)
    os.symlink("/dev/zero", tmp_path / "ngrams.txt")
    with pytest.raises(ValueError, match="ngrams.txt is a link to /dev/zero, outside"):
        helpers.load_ngram_model(tmp_path)
    (tmp_path / "ngrams.txt").unlink()
    os.mkfifo(tmp_path / "ngrams.txt")
    with pytest.raises(ValueError, match="ngrams.txt is a device, FIFO or socket"):  # opened without blocking
        helpers.load_ngram_model(tmp_path)
    (tmp_path / "ngrams.txt").unlink()
    (tmp_path / "ngrams.txt").write_bytes(b"x " * (64 * N * 2))
    with pytest.raises(ValueError, match="ngrams.txt holds .* bytes, more than the"):
        helpers.load_ngram_model(tmp_path)


# --------------------------------------------------------------------------- the combination
def test_the_combination_round_trips_and_refuses_what_it_does_not_know(tmp_path):
    helpers.save_combiner(tmp_path, "stacked", np.array([0.4, 0.5]), 0.04)
    rule, weights, bias = helpers.load_combiner(tmp_path)
    assert rule == "stacked" and weights.tolist() == [0.4, 0.5] and bias == 0.04
    assert helpers.combined_logits(rule, weights, bias, [1.0, -2.0], [2.0, 0.0]).tolist() == pytest.approx(
        [0.4 + 1.0 + 0.04, -0.8 + 0.04])
    for fields, message in (({"rule": "magic"}, "field 'rule'"), ({"weights": [1.0]}, "field 'weights'"),
                            ({"weights": [1.0, float("inf")]}, "field 'weights'"),
                            ({"features": ["ngram", "lstm"]}, "field 'features'"), ({"bias": "0"}, "field 'bias'"),
                            ({"note": ""}, "unknown fields")):
        helpers.save_combiner(tmp_path, "stacked", np.array([0.4, 0.5]), 0.04)
        _rewrite(tmp_path, "combiner.json", _json_change(**fields))
        with pytest.raises(ValueError, match=message) as error:
            helpers.load_combiner(tmp_path)
        assert "combiner.json" in str(error.value)


def test_predictions_csv_holds_the_combined_probability_and_both_parts(tmp_path):
    probabilities = {"fine": (0.75, 0.6, 0.8), 'say "hi"': (0.2, 0.1, 0.55)}  # combined, LSTM, n-grams
    (tmp_path / "reviews.txt").write_text('fine\n\nsay "hi"\n', encoding="utf-8")
    helpers.predict_review_file(tmp_path / "reviews.txt", tmp_path / "p.csv",
                                lambda reviews: [probabilities[review] for review in reviews],
                                columns=("prob_positive", "prob_lstm", "prob_ngram"))
    assert (tmp_path / "p.csv").read_text().splitlines() == [  # the label is the combined model's, not a part's
        "line,label,prob_positive,prob_lstm,prob_ngram,review",
        '1,positive,0.750000,0.600000,0.800000,"fine"', '3,negative,0.200000,0.100000,0.550000,"say ""hi"""']


# --------------------------------------------------------------------------- the statistics of the record
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweeps"))
import stats  # noqa: E402


def test_the_two_noises_of_a_paired_difference_match_a_hand_computation():
    differences = [[1, 0, 0, -1], [1, 1, 0, 0]]  # two seeds, four reviews
    comparison, seed_se, set_se = stats.paired_two_noises(differences)
    # seed means 0 and 0.5: sd 0.3536, over sqrt(2) -> 0.25; review means 1, 0.5, 0, -0.5: sd 0.6455, over 2
    assert seed_se == pytest.approx(0.25) and set_se == pytest.approx(0.6454972 / 2)
    assert comparison.mean == 0.25 and comparison.se == pytest.approx((0.25**2 + 0.3227486**2) ** 0.5)
    # Welch-Satterthwaite: (a + b)^2 / (a^2 / 1 + b^2 / 3), a = 0.0625, b = 0.1041667
    assert comparison.df == pytest.approx(0.1666667**2 / (0.0625**2 + 0.1041667**2 / 3), rel=1e-5)
    assert comparison.t == pytest.approx(scipy_t.ppf(0.975, comparison.df))
    scaled, seed_points, _ = stats.paired_two_noises(differences, scale=100)
    assert scaled.mean == pytest.approx(25) and seed_points == pytest.approx(25)
    with pytest.raises(ValueError, match="runs >= 2"):
        stats.paired_two_noises([[1, 0, 1]])


def test_a_difference_within_the_set_noise_is_not_beyond_noise_however_many_seeds():
    rng = np.random.default_rng(0)
    # ten seeds that agree exactly, on 100 reviews where A and B differ by chance: the seeds' SE is 0
    one_run = rng.choice([-1, 0, 0, 1], size=100).astype(float)
    one_run[:3] = 1  # a small edge for A
    comparison, seed_se, set_se = stats.paired_two_noises(np.tile(one_run, (10, 1)))
    assert seed_se < 1e-12 and set_se > 0.05
    assert not comparison.beyond_noise  # a seeds-only verdict (SE 0) would have called it beyond noise


def fake_run(folder, seed, rng, n=200):
    """A finished run's metrics.json and logits.npz: an LSTM that knows the labels well out of domain, n-grams
    that know them well on IMDB only."""
    folder.mkdir(parents=True)
    arrays, out_of_domain = {}, {}
    for name, (lstm_noise, ngram_noise) in {"valid": (1.0, 0.8), "test": (1.0, 0.8), "amazon": (1.0, 3.0),
                                            "yelp": (1.0, 3.0), "polarity": (1.5, 1.0)}.items():
        labels = rng.integers(0, 2, n)
        signal = 2.0 * labels - 1
        arrays.update({f"{name}_labels": labels, f"{name}_lstm": signal + rng.normal(0, lstm_noise, n),
                       f"{name}_ngram": signal + rng.normal(0, ngram_noise, n),
                       f"{name}_coverage": rng.uniform(0.5, 1.0, n)})
        arrays[f"{name}_combined"] = arrays[f"{name}_lstm"] + arrays[f"{name}_ngram"]
        if name in ("amazon", "yelp", "polarity"):
            out_of_domain[name] = {"role": "development" if name == "amazon" else "evaluation only"}
    np.savez(folder / "logits.npz", **arrays)
    (folder / "metrics.json").write_text(json.dumps({"params": {"seed": seed}, "out_of_domain": out_of_domain}))
    return arrays


def test_the_out_of_domain_record_is_each_runs_accuracies_and_their_paired_differences(tmp_path):
    import ood_rules

    rng = np.random.default_rng(0)
    runs = {seed: fake_run(tmp_path / f"seed-{seed}", seed, rng) for seed in (42, 1, 2)}
    ood_rules.main([str(tmp_path / f"seed-{seed}") for seed in runs] + ["--out", str(tmp_path / "out")])
    rows = list(csv.DictReader(open(tmp_path / "out" / "ood_seeds.csv", encoding="utf-8")))
    assert len(rows) == 12
    for row in rows:
        arrays = runs[int(row["seed"])]
        labels = arrays[f"{row['set']}_labels"].astype(bool)
        for model in ("ngram", "lstm", "combined"):
            assert float(row[f"{model}_acc"]) == np.mean((arrays[f"{row['set']}_{model}"] >= 0) == labels)
    summary = {row["set"]: row for row in csv.DictReader(open(tmp_path / "out" / "ood_seeds_summary.csv"))}
    amazon = [float(r["lstm_acc"]) - float(r["ngram_acc"]) for r in rows if r["set"] == "amazon"]
    assert float(summary["amazon"]["lstm_minus_ngram_points"]) == pytest.approx(100 * np.mean(amazon))
    assert summary["amazon"]["lstm_minus_ngram_beyond_noise"] == "True"  # 1.0 against 3.0 noise: a clear lead
    rules = list(csv.DictReader(open(tmp_path / "out" / "ood_rules_summary.csv", encoding="utf-8")))
    assert sum(r["adopted"] == "True" for r in rules) == 1 and rules[-1]["rule"] == "LSTM alone"


def test_holms_rule_matches_a_worked_example():
    # p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted 0.005, 0.01, 0.03, 0.04 against 0.05/4, 0.05/3, 0.05/2, 0.05/1:
    # the first two pass, 0.03 > 0.025 stops the rest. Adjusted: 0.02, 0.03, 0.06, 0.06 (running maximum).
    beyond, adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert beyond.tolist() == [True, False, False, True]
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    bonferroni = [min(1, 4 * p) <= 0.05 for p in (0.01, 0.04, 0.03, 0.005)]
    assert bonferroni == [True, False, False, True]  # here the same; never more than Holm
    assert stats.holm([0.04, 0.04])[0].tolist() == [False, False] and stats.holm([0.02, 0.04])[0].tolist() == [True,
                                                                                                               True]
