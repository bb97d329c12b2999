"""The README's numbers and claims, checked against the files they come from.

The headline results against this round's three seeds' records (figures/default_seeds.csv and
figures/default_seeds_summary.csv, figures/ood_seeds_summary.csv out of domain; the memory paragraph also
against the previous round's, figures/best_epoch_seeds.csv), the committed run's table against figures/metrics.json, the
speed and memory figures against figures/benchmark.json; and the rest against the code: the model
and the parameters it names against the lesson's parameters cell, the two stacks against the
requirements and the Makefile, every make target and variable against the Makefile, every link
and every entry of the layout against the repository. The expected strings are computed from the
files, formatted as the README formats them, so a new committed run or a new bench shows up here
as the rows to update.
"""

import csv
import json
import math
import re
import statistics
import subprocess
from pathlib import Path

import pytest

import helpers
from notebook_code import default_parameters

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "figures"
README = (REPO / "README.md").read_text(encoding="utf-8")
FLAT = " ".join(README.split())  # the README with every run of whitespace made one space, as it reads
METRICS = json.loads((FIGURES / "metrics.json").read_text(encoding="utf-8"))
BENCHMARK = json.loads((FIGURES / "benchmark.json").read_text(encoding="utf-8"))
NOTEBOOK = REPO / "notebooks" / "sentiment_lstm.ipynb"
MAKEFILE = (REPO / "Makefile").read_text(encoding="utf-8")
GOAL_MIB = 2048  # the 2 GiB memory goal
RESULTS = "## Results"


def t_quantile_two_degrees_of_freedom(p=0.975):
    """The t distribution's p-quantile with 2 degrees of freedom, in closed form: 4.3027 for 0.975."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


T = t_quantile_two_degrees_of_freedom()


def section(heading):
    """The README text from a heading to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = README.index(heading + "\n")
    rest = README[start + len(heading):]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def tables(text):
    """Every markdown table in text, each as its rows of stripped cells (header and rule left out)."""
    blocks = re.findall(r"(?:^\|.*\n?)+", text, flags=re.MULTILINE)
    return [[[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block.splitlines()[2:]]
            for block in blocks]


def prose(heading):
    """A section's text with every run of whitespace made one space, as the prose reads."""
    return " ".join(section(heading).split())


def csv_list(name):
    """The rows of a CSV of figures/, in order."""
    with open(FIGURES / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def column(rows, key):
    return [float(row[key]) for row in rows]


def mean_sd(values, digits=4):
    """"0.9115 ± 0.0049": the mean and the standard deviation (n - 1) of values."""
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def paired(after, before):
    """The mean of the paired differences after - before, and its standard error."""
    differences = [a - b for a, b in zip(after, before, strict=True)]
    return statistics.fmean(differences), statistics.stdev(differences) / math.sqrt(len(differences))


def signed(value, digits=2):
    """A signed number as the README prints it, with a true minus sign: "+1.01", "−0.60"."""
    return f"{value:+.{digits}f}".replace("-", "−")


def span(values, digits, unit=""):
    return f"{min(values):.{digits}f} to {max(values):.{digits}f}{unit}"


def seeds():
    """This round's three default runs (seeds 42, 1 and 2), as sweeps/compare_baseline.py wrote them."""
    return csv_list("default_seeds.csv")


def versus_baseline(model):
    """The paired difference of a model's test accuracy from the n-gram baseline's, in points, its standard
    error, its 95 % t interval and whether that excludes zero."""
    runs = seeds()
    mean, se = paired(column(runs, f"{model}_test_acc"), column(runs, "ngram_test_acc"))
    mean, se = 100 * mean, 100 * se
    low, high = mean - T * se, mean + T * se
    return mean, se, low, high, low > 0 or high < 0


def test_the_readme_is_a_front_door_of_about_250_lines():
    assert len(README.splitlines()) <= 300  # 255, issue 33's tests section and issue 31's results beyond IMDB


def test_the_t_rule_is_the_t_distribution_with_two_degrees_of_freedom():
    runs = seeds()
    assert len(runs) == 3 and f"{T:.2f}" == "4.30"
    assert f"more than {T:.2f} standard errors (the t distribution with two degrees of freedom)" in prose(RESULTS)


def test_the_headline_table_is_the_three_seed_records():
    rows, runs = tables(section(RESULTS))[0], seeds()
    assert [row[0] for row in rows[:2]] == [
        "teaching notebooks: Udacity's sentiment RNN, Keras' BiLSTM example, a PyTorch BiLSTM with GloVe vectors",
        "TF-IDF + logistic regression on uni- and bigrams: the weak bag of words"]
    assert rows[0][1:] == ["81.1–86.2 %", "", "others' figures"] and rows[1][1:] == ["90.6 %", "", "others' figure"]

    def verdict(model):
        mean, se, low, high, beyond = versus_baseline(model)
        return (f"{signed(mean)} ± {se:.2f} points ({signed(low)} to {signed(high)}): "
                f"{'beyond noise' if beyond else 'within noise'}")

    assert rows[2:] == [
        ["NB-weighted n-gram logistic regression: the strong bag of words, the lesson's number to beat",
         mean_sd(column(runs, "ngram_test_acc")), span(column(runs, "ngram_seconds"), 0, " s"), "—"],
        ["the LSTM alone", mean_sd(column(runs, "lstm_test_acc")),
         span([s / 60 for s in column(runs, "lstm_training_seconds")], 1, " min"), verdict("lstm")],
        ["the LSTM and the n-grams combined", mean_sd(column(runs, "combined_test_acc")), "both",
         verdict("combined")],
    ]


def test_the_seeds_summary_agrees_with_the_seeds_and_the_t_rule():
    """The summary the README links to is the per-seed records', with the same verdicts."""
    runs = seeds()
    summary = {row["what"]: row for row in csv_list("default_seeds_summary.csv") if row["split"] == "test"}
    for name, key in (("n-gram baseline", "ngram"), ("LSTM", "lstm"), ("LSTM + n-grams", "combined")):
        assert float(summary[name]["mean"]) == pytest.approx(statistics.fmean(column(runs, f"{key}_test_acc")))
        assert float(summary[name]["sd"]) == pytest.approx(statistics.stdev(column(runs, f"{key}_test_acc")))
    for name, model in (("LSTM minus n-gram baseline (points)", "lstm"),
                        ("LSTM + n-grams minus n-gram baseline (points)", "combined")):
        mean, se, low, high, beyond = versus_baseline(model)
        row = summary[name]
        assert [float(row[key]) for key in ("mean", "se", "ci_low", "ci_high")] == pytest.approx(
            [mean, se, low, high], abs=1e-3)
        assert row["beyond_noise"] == ("yes" if beyond else "no")


def test_the_prose_of_the_results_says_what_the_seeds_show():
    text, runs = prose(RESULTS), seeds()
    assert "seeds 42, 1 and 2" in text and [r["seed"] for r in runs] == ["42", "1", "2"]
    lstm, _, _, _, lstm_beyond = versus_baseline("lstm")
    every_seed = all(float(r["ngram_test_acc"]) > float(r["lstm_test_acc"]) for r in runs)
    assert ("**On IMDB's own test reviews the one-minute n-gram baseline is ahead of the LSTM alone on every "
            "seed**" in text) == every_seed
    assert lstm < 0 and not lstm_beyond
    assert f"by {-lstm:.2f} points on average: within noise" in text
    combined, _, _, _, combined_beyond = versus_baseline("combined")
    assert combined > 0 and combined_beyond
    assert "**The two combined are ahead of the baseline beyond noise**" in text
    on_valid, valid_se = paired(column(runs, "combined_valid_acc"), column(runs, "ngram_valid_acc"))
    valid_verdict = "beyond noise" if 100 * (abs(on_valid) - T * valid_se) > 0 else "within noise"
    assert (f"on the validation split, where the combination (a logistic regression on the two logits) was "
            f"fitted, by {signed(100 * on_valid)} ± {100 * valid_se:.2f} points, {valid_verdict}") in text
    over_lstm, se = paired(column(runs, "combined_test_acc"), column(runs, "lstm_test_acc"))
    assert 100 * over_lstm - T * 100 * se > 0
    assert f"(and of the LSTM alone: {signed(100 * over_lstm)} ± {100 * se:.2f} points on test)" in text


def test_the_out_of_domain_prose_says_what_the_records_show():
    """Issue 31: where the LSTM wins, and what the rules and the coverage split showed."""
    text = prose(OOD_HEADING)
    ood = {r["set"]: r for r in csv_list("ood_seeds_summary.csv")}
    leads = [float(ood[name]["lstm_minus_ngram_points"]) for name in ("amazon", "yelp")]
    assert all(ood[name]["lstm_minus_ngram_beyond_noise"] == "True" for name in ("amazon", "yelp"))
    assert f"the LSTM leads the n-grams by about {min(leads):.0f} to {max(leads):.0f} points, beyond noise" in text
    assert float(ood["polarity"]["lstm_minus_ngram_points"]) < 0 and ood["polarity"][
        "lstm_minus_ngram_beyond_noise"] == "False"  # "the n-grams lead, within noise"
    best = max(("ngram", "lstm", "combined"), key=lambda m: float(ood["polarity"][f"{m}_mean"]))
    assert best == "combined" and ood["polarity"]["combined_minus_ngram_beyond_noise"] == "False"
    assert (f"the combination is best ({float(ood['polarity']['combined_minus_ngram_points']):.1f} point above the "
            "n-grams, within noise)") in text
    assert round(float(ood["amazon"]["combined_minus_lstm_points"]), 2) == 0  # "it matches the LSTM alone"
    yelp = float(ood["yelp"]["combined_minus_lstm_points"])
    assert round(yelp) == 1 and ood["yelp"]["combined_minus_lstm_beyond_noise"] == "False"  # "a point ahead"
    rules = csv_list("ood_rules_summary.csv")
    adopted = [r["rule"] for r in rules if r["adopted"] == "True"]
    assert adopted == ["stacked (today's)"] and "were not adopted" in text
    moved = max(abs(float(r[f"{name}_vs_stacked_points"])) for r in rules if r["rule"] != "LSTM alone"
                for name in ("amazon", "yelp"))
    assert f"moved Amazon and Yelp by at most {moved:.1f} points, none gaining on Amazon beyond noise" in text
    assert all(float(r["amazon_vs_stacked_points"]) < 1.96 * float(r["amazon_vs_stacked_se"])  # even unadjusted
               for r in rules if r["rule"] not in ("LSTM alone", "stacked (today's)"))
    halves = {(r["set"], r["half"]): r for r in csv_list("ood_coverage.csv")}
    for name in ("amazon", "yelp"):  # "no larger on the half with fewer of its n-grams seen"
        deficit = {half: float(halves[(name, half)]["lstm_acc"]) - float(halves[(name, half)]["ngram_acc"])
                   for half in ("fewer seen", "more seen")}
        assert deficit["fewer seen"] <= deficit["more seen"] + 0.002, name


def test_the_committed_run_table_is_figures_metrics_json():
    """A new committed run changes these rows: each is read from its metrics.json here, to be copied as shown."""
    (table,) = (t for t in tables(section(RESULTS)) if t[0][0] == "the LSTM alone, test accuracy")
    rows, m = dict(table), METRICS
    assert rows == {
        "the LSTM alone, test accuracy": f"{m['test_accuracy']:.4f}",
        "the n-gram baseline, test accuracy": f"{m['ngram_baseline']['test_accuracy']:.4f}",
        "the two combined, test accuracy": f"{m['combined']['test_accuracy']:.4f}",
        "best epoch (lowest validation loss)": f"{m['best_epoch']} of {len(m['history']['epoch'])} run",
        "training": f"{m['training_seconds'] / 60:.1f} min",
        "peak memory (resident, the notebook's kernel)": f"{m['peak_memory']['cpu_rss_mib']:,.0f} MiB",
    }
    environment, params = m["environment"], m["params"]
    assert (f"one complete default `make run`, seed {params['seed']}, full data, {environment['cpu_count']} cores, "
            f"torch {environment['torch']}") in prose(RESULTS)
    assert f"its seed 42 scored the LSTM {m['test_accuracy']:.4f}, the previous " \
           f"{float(csv_list('best_epoch_seeds.csv')[0]['lstm_test_acc']):.4f}" in prose(RESULTS)
    assert params["use_sample"] is False and params["train_size"] == 0  # "full data"


def test_the_committed_run_is_a_default_run_of_the_lesson():
    """"One complete default `make run`": every parameter of the lesson's parameters cell as the run recorded it
    (the data's path and the run folder are given by `make run`). A new default leaves this failing until the
    committed run is made again."""
    recorded = METRICS["params"]
    for name, value in default_parameters().items():
        if name not in ("imdb_archive", "run_dir", "ood_data"):  # where the run reads and writes
            assert recorded.get(name, "(not recorded)") == value, name


def test_the_model_described_is_the_lessons_default_and_the_committed_runs_size():
    text, p = prose(RESULTS), default_parameters()
    assert f"The model: {p['embedding_dim']}-dimensional word vectors" in text
    assert p["pretrain_embeddings"] is True  # "learned from the unlabelled reviews"
    assert f"fine-tuned (dropout {p['embedding_dropout']})" in text
    assert f"one bidirectional LSTM layer of {p['hidden_dim']} units per direction, {p['pooling']} pooling" in text
    assert p["n_layers"] == 1 and p["bidirectional"] is True
    assert f"dropout {p['dropout']}, a fully connected layer" in text
    assert f"Adam at {p['lr']:.0e}".replace("e-0", "e-") in text
    assert f"batches of {p['batch_size']}, the first {p['max_length']} tokens of each review" in text
    assert f"{METRICS['n_parameters']:,} parameters, most of them the " \
           f"{METRICS['config']['model']['vocab_size']:,} word vectors" in text


def test_the_parameters_the_readme_names_are_the_lessons():
    named = set(re.findall(r"-p (\w+)", FLAT)) | set(re.findall(r"`(\w+) = ", FLAT))
    named |= {name for name in ("imdb_archive", "init_checkpoint") if f"`{name}`" in FLAT}
    assert {"seed", "cell", "use_sample", "imdb_archive", "init_checkpoint"} <= named
    defaults = default_parameters()
    assert sorted(named - set(defaults)) == []
    assert defaults["cell"] == "lstm" and set(helpers.CELLS) == {"lstm", "gru", "rnn"}
    assert '`cell = "lstm"`, `"gru"` or `"rnn"`' in FLAT
    assert "n_models" not in defaults and "adversarial_epsilon" not in defaults  # "those left the lesson"


def test_the_speed_figures_are_the_benchmarks():
    text, bench = prose("## Speed and memory"), BENCHMARK
    hardware, training, prediction = bench["hardware"], bench["training"], bench["prediction"]
    assert hardware["device"] == "cpu"
    assert (f"`make bench` measured on an {hardware['cpu_model']}, {hardware['cpu_count']} cores, "
            f"{hardware['torch_threads']} torch threads, torch {hardware['torch']}, no GPU") in text
    shapes = training["shapes"]
    assert {shape["batch"] for shape in shapes} == {64}
    lengths = [str(shape["seq_len"]) for shape in shapes]
    assert (f"the lesson's training step at {training['notebook_tokens_per_s']:,.0f} tokens/s on batches of 64 "
            f"reviews of {', '.join(lengths[:-1])} and {lengths[-1]} tokens, {training['ratio']:.2f} of a bare "
            f"bidirectional `nn.LSTM`'s {training['bare_lstm_tokens_per_s']:,.0f} tokens/s (goal: 0.8)") in text
    assert (f"the current stack's step at {bench['stacks']['current_over_pinned_training']:.2f} times the pinned "
            "stack's") in text
    assert (f"`predict_review` on a {prediction['review_words']}-word review in "
            f"{prediction['latency_median_ms']:.2f} ms (median) with {hardware['torch_threads']} threads, "
            f"{prediction['latency_1_thread_median_ms']:.2f} ms with one; batch prediction at "
            f"{prediction['batch_reviews_per_s']:,.0f} reviews/s") in text


def test_the_bench_measured_the_lessons_model():
    """The bench's figures are the lesson's only while its model and batches have the lesson's shapes."""
    defaults, measured = default_parameters(), BENCHMARK["parameters"]
    for name in ("batch_size", "max_length", "max_vocab_size", "embedding_dim", "hidden_dim", "n_layers",
                 "bidirectional", "pooling"):
        assert measured[name] == defaults[name], name
    assert measured.get("cell", "lstm") == defaults.get("cell", "lstm")


def test_the_memory_paragraph_is_the_runs_records():
    text, runs, previous = prose("## Speed and memory"), seeds(), csv_list("best_epoch_seeds.csv")
    peaks = [int(r["peak_memory_mib"]) for r in runs]
    assert [r["seed"] for r in runs] == [r["seed"] for r in previous] == ["42", "1", "2"]
    # the committed run is this round's seed 42
    first = runs[0]
    assert (float(first["lstm_test_acc"]), float(first["ngram_test_acc"]), float(first["combined_test_acc"])) == (
        METRICS["test_accuracy"], METRICS["ngram_baseline"]["test_accuracy"], METRICS["combined"]["test_accuracy"])
    assert round(METRICS["peak_memory"]["cpu_rss_mib"]) == peaks[0]
    assert METRICS["peak_memory_before_evaluation"] == METRICS["peak_memory"]  # "peaked in training"
    above = [p - GOAL_MIB for p in peaks if p > GOAL_MIB]
    assert len(above) == 2 and f"above 2 GiB in two of this round's three runs, by {above[0]} and {above[1]} MiB" \
        in text
    earlier = [int(r["peak_memory_mib"]) for r in previous]
    assert (f"{peaks[0]:,}, {peaks[1]:,} and {peaks[2]:,} MiB (resident, the kernel; seeds 42, 1 and 2), against "
            f"{earlier[0]:,}, {earlier[1]:,} and {earlier[2]:,} MiB in the previous round") in text
    assert f"above {helpers.TRIM_ABOVE_MIB:,} MiB (`helpers.TRIM_ABOVE_MIB`)" in text


def test_run_it_elsewhere_installs_nothing_that_would_replace_the_kernels_torch():
    text = section("## Run it elsewhere")
    pip_line = next(line for line in text.splitlines() if line.startswith("%pip install"))
    packages = pip_line.split()[2:]
    assert packages and not {"torch", "numpy", "torchtext"} & set(packages)
    current = (REPO / "requirements-current.txt").read_text(encoding="utf-8")
    assert all(re.search(rf"^{re.escape(name)}\b", current, flags=re.MULTILINE) for name in packages)
    # The setup cell's error for a kernel started outside the clone names the same remedy.
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    setup = next("".join(c["source"]) for c in cells if c["cell_type"] == "code" and "import helpers" in "".join(
        c["source"]))
    assert "%cd" in text and "%cd" in setup


def test_the_two_stacks_are_the_requirements_and_the_makefile():
    pinned = (REPO / "requirements.txt").read_text(encoding="utf-8")
    current = (REPO / "requirements-current.txt").read_text(encoding="utf-8")
    text = prose("## Two stacks")
    assert "torch==2.3.1" in pinned and "torchtext==0.18.0" in pinned
    numpy = re.search(r"^numpy==(\d+)\.", pinned, flags=re.MULTILINE)
    assert numpy and int(numpy.group(1)) < 2
    assert "torch 2.3.1 with torchtext 0.18.0, numpy < 2" in text
    assert "torch==2.13.0+cpu" in current and "numpy>=2" in current
    assert not re.search(r"^torchtext", current, flags=re.MULTILINE)
    assert "torch 2.13, numpy 2 and the newest of the rest, no torchtext" in text
    assert "`torch==2.13.0+cpu`" in text
    for name in ("scikit-learn", "safetensors", "dask", "distributed"):
        assert re.search(rf"^{name}==", pinned, flags=re.MULTILINE), name
        assert name in text, name

    pinned_pythons, current_pythons = (line.split() for line in re.findall(r"SUPPORTED_PYTHONS := (.*)", MAKEFILE))
    assert "`make` takes the first of {}, {} and {} it finds".format(*(f"`{p}`" for p in pinned_pythons)) in FLAT
    assert sorted(pinned_pythons) == ["python3.10", "python3.11", "python3.12"]
    assert "Python 3.10, 3.11 or 3.12" in FLAT and "Python 3.10 to 3.12" in text
    assert sorted(current_pythons) == ["python3.10", "python3.11", "python3.12", "python3.13"]
    assert "Python 3.10 to 3.13" in text


def test_every_file_the_readme_links_to_exists():
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [link.split("#")[0] for link in links if "://" not in link]
    assert local
    assert [link for link in local if not (REPO / link).exists()] == []


def layout():
    """The layout block: {the entry it names (its first path component): its description, continuation lines
    included}."""
    block = re.search(r"```\n(.*?)```", section("## Layout"), flags=re.DOTALL).group(1)
    entries, last = {}, None
    for line in block.splitlines():
        if line.startswith(" "):
            entries[last] += " " + line.strip()
            continue
        names, description = re.split(r"\s{2,}", line, maxsplit=1)
        for name in names.split(", "):
            last = name
            entries[name] = description
    return entries


def test_the_layout_names_what_is_there():
    missing = []
    for name, description in layout().items():
        missing += [] if (REPO / name).exists() else [name]
        if name.endswith("/"):  # the files a folder's description names are in it
            missing += [name + file for file in re.findall(r"[\w-]+\.(?:py|ipynb)", description)
                        if not (REPO / name / file).exists()]
    assert missing == []


def test_the_sample_is_what_the_layout_says():
    sample = re.search(r"sample/: (\d+) real reviews \((\d+) labelled, (\d+) unlabelled\)", layout()["data/"])
    reviews = {kind: len(list((REPO / "data" / "sample" / "aclImdb").glob(pattern)))
               for kind, pattern in (("labelled", "t*/[pn]*/*.txt"), ("unlabelled", "train/unsup/*.txt"))}
    assert sample and [int(n) for n in sample.groups()] == [sum(reviews.values()), reviews["labelled"],
                                                           reviews["unlabelled"]]


def test_the_layout_leaves_out_nothing_that_is_committed_at_the_top_level():
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    top = {path.split("/")[0] + ("/" if "/" in path else "") for path in tracked.splitlines()} - {".gitignore"}
    named = {name.split("/")[0] + ("/" if "/" in name else "") for name in layout()}
    assert sorted(top - named) == []


def makefile_targets():
    return set(re.findall(r"^([a-z][\w-]*):", MAKEFILE, flags=re.MULTILINE))


def test_every_make_target_the_readme_names_is_in_the_makefile():
    named = set(re.findall(r"(?:^|`)make ([a-z][\w-]*)", README, flags=re.MULTILINE))
    named |= set(layout()["Makefile"].split(", "))
    assert {"run", "test", "lab", "bench", "sweep", "publish", "clean-cache"} <= named
    assert sorted(named - makefile_targets()) == []


def test_the_cache_section_gives_the_exercise_runs_times():
    """Issue 21: exercise runs of at most 90 s on two cores, as the exercise sweep's records say."""
    runs = [r for r in csv.DictReader((REPO / "figures" / "sweep_lesson_exercises_summary.csv").open(encoding="utf-8"))
            if r["status"] == "ok"]
    seconds = [int(r["run_seconds"]) for r in runs]
    assert len(runs) == 33 and max(seconds) <= 90
    assert f"every exercise run (`make exercise`; the runs of `sweeps/exercises.yaml`, two cores, an AMD EPYC) took " \
           f"{min(seconds)} to {max(seconds)} s" in " ".join(README.split())


def test_make_clean_cache_deletes_the_cache_folder_the_readme_names():
    assert "`make clean-cache` (or `rm -rf data/cache`)" in README
    recipe = re.search(r"^clean-cache:.*\n((?:\t.*\n)+)", MAKEFILE, flags=re.MULTILINE)
    assert recipe and "data/cache" in recipe.group(1)


def test_the_cache_is_never_committed():
    try:
        ignored = subprocess.run(["git", "check-ignore", "-q", "data/cache/probe"], cwd=REPO).returncode == 0
    except OSError:
        pytest.skip("no git")
    assert ignored


def test_every_make_variable_the_readme_sets_is_the_makefiles():
    joined = README.replace("\\\n", " ")  # a command continued on the next line with a backslash
    commands = re.findall(r"^((?:[A-Z_]+=\S+ )*make .*)", joined, flags=re.MULTILINE)  # in code blocks
    commands += re.findall(r"`((?:[A-Z_]+=\S+ )*make [^`]*)`", FLAT)  # in the prose, perhaps across lines
    variables = {name for command in commands for name in re.findall(r"\b([A-Z][A-Z_]+)=", command)}
    assert {"PARAMS", "SWEEP", "JOBS", "SCHEDULER", "TLS_CA_FILE", "TLS_CERT", "TLS_KEY", "PYTHON", "STACK",
            "IMDB_ARCHIVE", "RUN"} <= variables
    for name in variables:  # a make variable, or one make exports to what it runs (OMP_WAIT_POLICY)
        assert f"$({name})" in MAKEFILE or f"export {name} ?=" in MAKEFILE, name


def test_the_checkpoint_conversion_command_is_the_one_its_file_offers():
    command = re.search(r"`\.venv/bin/python (\S+\.py) ([\w-]+) FOLDER (--[\w-]+)`", FLAT)
    assert command
    source = (REPO / command.group(1)).read_text(encoding="utf-8")
    assert f'"{command.group(2)}"' in source and f'"{command.group(3)}"' in source


def test_more_names_every_numbered_section_of_the_research_record():
    """"More" quotes the research record's numbered sections by their headings: all of them, as they are."""
    cells = json.loads((REPO / "notebooks" / "research_record.ipynb").read_text(encoding="utf-8"))["cells"]
    headings = [line[3:].strip() for cell in cells if cell["cell_type"] == "markdown"
                for line in "".join(cell["source"]).splitlines() if line.startswith("## ")]
    numbered = [heading for heading in headings if re.match(r"\d+\. ", heading)]
    assert numbered and re.findall(r'"(\d+\. [^"]+)"', prose("## More")) == numbered


OOD_HEADING = "### Beyond IMDB's test set"
OOD_SET_NAMES = {"test": "IMDB test reviews", "amazon": "Amazon, phones, one sentence (development)",
                 "yelp": "Yelp, restaurants, one sentence (evaluation only)",
                 "polarity": "Usenet, 1990s full-length movie reviews (evaluation only)"}


def test_the_out_of_domain_table_is_the_three_seed_records():
    """Issue 31: each set's three models (mean ± sd over the seeds) and the LSTM's lead over the n-grams with the
    standard error of both noises, as sweeps/ood_rules.py wrote them."""
    rows = tables(section(OOD_HEADING))[0]
    summary = csv_list("ood_seeds_summary.csv")
    assert [row[0] for row in rows] == [OOD_SET_NAMES[r["set"]] for r in summary]
    for row, r in zip(rows, summary, strict=True):
        verdict = "beyond noise" if r["lstm_minus_ngram_beyond_noise"] == "True" else "within noise"
        assert row[1:] == [f"{int(r['n_reviews']):,}",
                           *(f"{float(r[f'{m}_mean']):.4f} ± {float(r[f'{m}_sd']):.4f}" for m in ("ngram", "lstm",
                                                                                                   "combined")),
                           f"{signed(float(r['lstm_minus_ngram_points']))} ± {float(r['lstm_minus_ngram_se']):.2f}: "
                           f"{verdict}"], row[0]
    runs = csv_list("ood_seeds.csv")
    assert sorted({r["seed"] for r in runs}) == ["1", "2", "42"] and len(runs) == 12


def test_the_shared_cores_figures_are_the_records():
    """Issue 33: one run alone and two at once, as tests/shared_cores.sh recorded them."""
    runs = {row["run"]: row for row in csv_list("shared_cores.csv")}
    text = prose("## Tests")
    assert (f"ran the exercise-size lesson alone in {float(runs['alone-passive']['seconds']):.1f} s, and two at once "
            f"in {float(runs['two-passive-both']['seconds']):.1f} s for both") in text
    assert (f"(one thread each: {float(runs['alone-1thread']['seconds']):.1f} s alone, "
            f"{float(runs['two-1thread-both']['seconds']):.1f} s for both)") in text
    assert f"one run took {float(runs['alone-active']['seconds']):.1f} s" in text
    assert runs["two-spin20k-both"]["outcome"] == "stopped unfinished"
    assert f"stopped unfinished after {float(runs['two-spin20k-both']['seconds']):.1f} s" in text
    # the default's promise: two at once take at most about twice as long as one
    assert float(runs["two-passive-both"]["seconds"]) < 2 * float(runs["alone-passive"]["seconds"])


def test_the_combined_models_speed_and_size_are_the_benchmarks():
    """Issue 31: one 250-word review through the combination within 10 ms (p50, two threads); size and loading."""
    bench = json.loads((FIGURES / "benchmark_prediction.json").read_text(encoding="utf-8"))
    p, c = bench["prediction"], bench["checkpoint"]
    text = prose("## Speed and memory")
    assert p["n_ngrams"] == METRICS["ngram_baseline"]["n_features"] and p["review_words"] == 250
    assert p["latency_median_ms"] < 10
    assert (f"`predict_review` on a 250-word review through all three models in {p['latency_median_ms']:.2f} ms "
            f"(median, 2 threads; {p['latency_1_thread_median_ms']:.2f} ms with one)") in text
    ngram_mb = sum(v for k, v in c["files_mb"].items() if k.startswith("ngram"))
    assert (f"the checkpoint takes {c['total_mb']:.1f} MB (the n-gram model {ngram_mb:.1f} MB of it) and loads, every "
            f"file checked, in {c['load_seconds_median']:.2f} s") in text


def test_the_edit_loops_times_are_the_records():
    """Issue 33: `make check` and `make test` timed from a fresh clone (tests/time_loops.sh), the latest of each."""
    latest = {}
    for row in csv_list("test_times.csv"):
        if row["stack"] == "pinned":
            latest[row["target"]] = float(row["seconds"])
    text = prose("## Tests")
    assert latest["check"] < 60  # the fast tier's promise
    assert f"`make check` ({latest['check']:.0f} s on two idle cores)" in text
    assert f"`make test` runs everything ({latest['test']:.0f} s from a fresh clone with `.venv` built" in text
