"""Speed and memory of the notebook's model: `make bench` (not part of `make test`).

    python tests/benchmark.py [--device auto] [--out figures/benchmark.json]

It measures, in this process, with the notebook's default parameters:

- training throughput (tokens per second) of the notebook's own training step (its
  SentimentLSTM class and train_epoch: forward, loss, backward, clipping, Adam) beside a
  bare torch.nn.LSTM forward and backward on the same batch shapes, and their ratio;
- one forward and backward pass of a bare bidirectional nn.LSTM of the model's sizes over a
  batch of 64 reviews of 256 tokens, padded and packed (pack_padded_sequence), the figure
  the notebook quotes for choosing padding;
- predict_review (the notebook's own function) latency for a 250-word review: median and
  95th percentile, with torch's threads as they are and with one thread; and batch
  prediction throughput in reviews per second;

- the peak resident memory of the notebook's own cells from the start through the word
  vectors (reading, tokenizing, the vocabulary, the ids, counting co-occurrences, PPMI, SVD) on
  the full data, in a fresh kernel: the step that needed the most memory (skipped, with a
  message, when the full data is not at hand: set IMDB_ARCHIVE or run the notebook once);

- the two stacks side by side (`.venv`, the pinned torch 2.3.1, and `.venv-current`, torch
  2.13 without torchtext, where each is installed): the training-step and predict_review figures
  above, measured in a child process of each stack's Python, the stacks taking turns round by
  round so that both see the same machine;

and it reads, from the committed notebook (a complete papermill run) and its metrics.json,
the wall time of each notebook section and the run's peak memory. It prints a table and
writes everything as JSON. The other figures need only the bundled sample: the model's code
comes from the notebook, the reviews from data/sample.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
import helpers  # noqa: E402
from notebook_code import NOTEBOOK, cell_defining, default_parameters, namespace, notebook_cells  # noqa: E402

METRICS = REPO / "figures" / "metrics.json"
KERNEL = "sentiment-lstm"  # registered in .venv by `make install`
SEQ_LENGTHS = (128, 256, 800)  # short, typical (the median training review has 202 tokens) and capped


def sample_vocab(size):
    """A vocabulary of the sample's tokens, filled up to `size` so the model has its full shape."""
    texts, _ = helpers.read_imdb(helpers.SAMPLE_DIR, "train")
    vocab = helpers.build_vocab(helpers.tokenize(t) for t in texts)
    itos = vocab.get_itos()
    itos += [f"<filler{i}>" for i in range(size - len(itos))]
    return helpers.vocab_from_tokens(itos)


def review_of(n_words):
    """A real review from the sample test set, repeated or cut to exactly n_words words."""
    texts, _ = helpers.read_imdb(helpers.SAMPLE_DIR, "test")
    words = " ".join(helpers.clean_text(t) for t in texts[:5]).split()
    return " ".join((words * (n_words // len(words) + 1))[:n_words])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, n_steps, device):
    """Seconds per call of step(), after two warm-up calls."""
    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / n_steps


def build_model(namespace, p, vocab, device):
    """The notebook's SentimentLSTM with the notebook's default sizes."""
    return namespace["SentimentLSTM"](
        vocab_size=len(vocab), embedding_dim=p["embedding_dim"], hidden_dim=p["hidden_dim"],
        n_layers=p["n_layers"], bidirectional=p["bidirectional"], embedding_dropout=p["embedding_dropout"],
        dropout=p["dropout"], pooling=p["pooling"], pad_index=0,
    ).to(device)


def training_throughput(namespace, p, vocab, device, n_steps):
    model = build_model(namespace, p, vocab, device)
    train_epoch = namespace["train_epoch"]
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    loss_fn = nn.BCEWithLogitsLoss()
    bare = nn.LSTM(p["embedding_dim"], p["hidden_dim"], num_layers=p["n_layers"], batch_first=True,
                   bidirectional=p["bidirectional"]).to(device)
    rows = []
    generator = torch.Generator().manual_seed(0)
    for seq_len in SEQ_LENGTHS:
        batch = p["batch_size"]
        tokens = torch.randint(2, len(vocab), (batch, seq_len), generator=generator)
        lengths = torch.full((batch,), seq_len)
        labels = torch.randint(0, 2, (batch,), generator=generator).float()
        batches = [(tokens, lengths, labels, np.arange(batch))]
        inputs = torch.randn(batch, seq_len, p["embedding_dim"], generator=generator).to(device)

        def notebook_step(batches=batches):
            train_epoch(model, batches, optimizer, loss_fn, p["clip_norm"], device)

        def bare_step(inputs=inputs):
            output, _ = bare(inputs)
            output.sum().backward()

        # Interleave the two, so that a change in the machine's load hits both alike.
        notebook_s = bare_s = 0.0
        for _ in range(2):
            notebook_s += time_steps(notebook_step, n_steps, device) / 2
            bare_s += time_steps(bare_step, n_steps, device) / 2
        n_tokens = batch * seq_len
        rows.append({"batch": batch, "seq_len": seq_len, "notebook_tokens_per_s": n_tokens / notebook_s,
                     "bare_lstm_tokens_per_s": n_tokens / bare_s, "ratio": bare_s / notebook_s})
    total_tokens = sum(r["batch"] * r["seq_len"] for r in rows)
    notebook_total = sum(r["batch"] * r["seq_len"] / r["notebook_tokens_per_s"] for r in rows)
    bare_total = sum(r["batch"] * r["seq_len"] / r["bare_lstm_tokens_per_s"] for r in rows)
    return {"shapes": rows, "notebook_tokens_per_s": total_tokens / notebook_total,
            "bare_lstm_tokens_per_s": total_tokens / bare_total, "ratio": bare_total / notebook_total}


def packing_cost(p, device, batch=64, seq_len=256, n_steps=2):
    """Seconds of one forward and backward pass of a bidirectional nn.LSTM, padded against packed."""
    lstm = nn.LSTM(p["embedding_dim"], p["hidden_dim"], batch_first=True, bidirectional=True).to(device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, seq_len, p["embedding_dim"], generator=generator).to(device)
    # Lengths as in a bucketed batch: close to the longest, a few tokens of padding each.
    lengths = torch.randint(seq_len - 8, seq_len + 1, (batch,), generator=generator)
    lengths[0] = seq_len

    def padded_step():
        output, _ = lstm(inputs)
        output.sum().backward()

    def packed_step():
        packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        output, _ = lstm(packed)
        nn.utils.rnn.pad_packed_sequence(output, batch_first=True)[0].sum().backward()

    padded_s, packed_s = time_steps(padded_step, n_steps, device), time_steps(packed_step, n_steps, device)
    return {"batch": batch, "seq_len": seq_len, "padded_s": padded_s, "packed_s": packed_s,
            "slowdown": packed_s / padded_s}


def sample_ngram_model(p):
    """The n-gram model of the sample's training reviews, fitted as the notebook fits it (C = 0.3)."""
    from sklearn.linear_model import LogisticRegression

    texts, labels = helpers.read_imdb(helpers.SAMPLE_DIR, "train")
    tokens = [helpers.tokenize(t) for t in texts]
    features = helpers.NBNgramFeatures((1, p["ngram_max_n"])).fit(tokens, labels)
    regression = LogisticRegression(C=0.3, solver="liblinear").fit(features.transform(tokens), labels)
    return helpers.NgramModel.from_fitted(features, regression)


def combined_model(namespace, p, vocab, device, checkpoint=None):
    """(model, vocab, max_length, n-gram model, combination, what it is): a run's checkpoint, or one of the
    default sizes with random weights and the sample's n-grams (their number changes a lookup's cost little)."""
    if checkpoint:
        state, vocab, config = helpers.load_checkpoint(checkpoint)
        model = namespace["SentimentLSTM"](**config["model"]).to(device)
        helpers.load_weights(model, state)
        return (model, vocab, config["max_length"], helpers.load_ngram_model(checkpoint),
                helpers.load_combiner(checkpoint), f"checkpoint {helpers.shown_path(checkpoint)}")
    return (build_model(namespace, p, vocab, device), vocab, p["max_length"], sample_ngram_model(p),
            ("stacked", np.array([0.4, 0.5]), 0.04), "random weights, the sample's n-grams")


def checkpoint_figures(checkpoint, loads=3):
    """The size of a checkpoint's files and the seconds to load and check all three models (the median)."""
    files = {path.name: path.stat().st_size for path in Path(checkpoint).iterdir() if path.is_file()}
    seconds = []
    for _ in range(loads):
        start = time.perf_counter()
        helpers.load_checkpoint(checkpoint)
        helpers.load_ngram_model(checkpoint)
        helpers.load_combiner(checkpoint)
        seconds.append(time.perf_counter() - start)
    return {"checkpoint": helpers.shown_path(checkpoint), "files_mb": {k: v / 1e6 for k, v in sorted(files.items())},
            "total_mb": sum(files.values()) / 1e6, "load_seconds_median": float(np.median(seconds))}


def prediction_speed(cells, namespace, p, vocab, device, n_calls, checkpoint=None):
    model, vocab, max_length, ngram_model, (rule, weights, bias), source = combined_model(namespace, p, vocab, device,
                                                                                           checkpoint)
    namespace.update(model=model, vocab=vocab, max_length=max_length, device=device, baseline=ngram_model,
                     combination_rule=rule, combination_weights=weights, combination_bias=bias)
    exec(cell_defining("predict_review"), namespace)  # noqa: S102 - the notebook's own function
    predict_review = namespace["predict_review"]
    review = review_of(250)

    def latencies_ms():
        for _ in range(10):
            predict_review(review)
        latencies = []
        for _ in range(n_calls):
            start = time.perf_counter()
            predict_review(review)
            sync(device)
            latencies.append(time.perf_counter() - start)
        return np.array(latencies) * 1000

    latency = latencies_ms()
    # One review is a chain of small matrix products, which more threads do not always speed up:
    # measure with one thread too, the setting of a server that answers many requests in parallel.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        latency_one_thread = latencies_ms()
    finally:
        torch.set_num_threads(threads)

    texts, _ = helpers.read_imdb(helpers.SAMPLE_DIR, "test")
    texts = texts * 5  # 1,000 real reviews of every length
    helpers.predict_proba(model, texts[:256], vocab, max_length, device)
    start = time.perf_counter()
    helpers.predict_proba(model, texts, vocab, max_length, device)
    sync(device)
    seconds = time.perf_counter() - start
    return {"model": source, "n_ngrams": len(ngram_model.effect), "review_words": 250,
            "tokens": len(helpers.tokenize(review)), "calls": n_calls,
            "latency_median_ms": float(np.median(latency)), "latency_p95_ms": float(np.percentile(latency, 95)),
            "latency_1_thread_median_ms": float(np.median(latency_one_thread)),
            "latency_1_thread_p95_ms": float(np.percentile(latency_one_thread, 95)),
            "batch_reviews": len(texts), "batch_reviews_per_s": len(texts) / seconds}


STACKS = {"pinned": REPO / ".venv", "current": REPO / ".venv-current"}  # as `make install [STACK=current]` makes them


def stack_probe(n_steps, n_calls):
    """The training-step and predict_review figures in this interpreter, as `--stack-probe` prints them."""
    helpers.set_seed(0)
    helpers.flush_denormal_floats()
    device = torch.device("cpu")  # one device for both stacks, whatever else the machine has
    cells, params = notebook_cells(), default_parameters()
    definitions = namespace("SentimentLSTM", "train_epoch")
    vocab = sample_vocab(params["max_vocab_size"])
    return {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "torchtext": helpers.torchtext.__version__, "torch_threads": torch.get_num_threads(),
            "training": training_throughput(definitions, params, vocab, device, n_steps),
            "prediction": prediction_speed(cells, definitions, params, vocab, device, n_calls)}


def compare_stacks(n_steps, n_calls, rounds=2):
    """Each installed stack's probe, in a child process of its own Python, the stacks taking turns.

    The machine's load drifts over minutes; alternating pinned, current, pinned, current lets
    the drift hit both alike. Figures are the mean over the rounds.
    """
    pythons = {name: venv / "bin" / "python" for name, venv in STACKS.items()}
    missing = [f"{name} ({venv.name})" for name, venv in STACKS.items() if not pythons[name].exists()]
    if missing:
        return {"skipped": f"not installed: {', '.join(missing)}; `make install` and `make install STACK=current` "
                           "make both"}
    probes = {name: [] for name in STACKS}
    for _ in range(rounds):
        for name, python in pythons.items():
            command = [str(python), str(Path(__file__).resolve()), "--stack-probe", "--steps", str(n_steps),
                       "--calls", str(n_calls)]
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if result.returncode != 0:
                raise RuntimeError(f"the {name} stack's probe failed:\n{result.stderr[-3000:]}")
            probes[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
    summary = {}
    for name, runs in probes.items():
        first = runs[0]
        summary[name] = {key: first[key] for key in ("torch", "numpy", "python", "torchtext", "torch_threads")}
        summary[name]["rounds"] = len(runs)
        summary[name]["training_tokens_per_s"] = float(np.mean([r["training"]["notebook_tokens_per_s"] for r in runs]))
        summary[name]["training_tokens_per_s_by_seq_len"] = {
            str(shape["seq_len"]): float(np.mean([r["training"]["shapes"][i]["notebook_tokens_per_s"] for r in runs]))
            for i, shape in enumerate(first["training"]["shapes"])}
        for key in ("latency_median_ms", "latency_1_thread_median_ms", "batch_reviews_per_s"):
            summary[name][key] = float(np.mean([r["prediction"][key] for r in runs]))
        summary[name]["each_round"] = [{"training_tokens_per_s": r["training"]["notebook_tokens_per_s"],
                                        "latency_median_ms": r["prediction"]["latency_median_ms"]} for r in runs]
    summary["current_over_pinned_training"] = (summary["current"]["training_tokens_per_s"]
                                               / summary["pinned"]["training_tokens_per_s"])
    return summary


PREPROCESSING_LAST_CELL = "helpers.pretrain_word_vectors("  # the memory step runs the notebook up to this cell
MEMORY_PROBE = """import json
print(json.dumps({"peak_memory": helpers.peak_memory_mib(device), "vocab_size": len(vocab),
                  "training_reviews": len(train_idx), "pretraining_seconds": pretraining_seconds}))"""


def preprocessing_memory(archive):
    """Peak memory of the notebook's cells from the start through the word vectors, on the full data.

    The cells run in a fresh kernel through papermill, with the default parameters, exactly as in
    `make run` (a run folder and an empty cache in a temporary directory); a last cell prints the kernel's peak.
    """
    full_data = helpers.DATA_DIR / "aclImdb" / ".complete"
    if not archive and not full_data.exists():
        return {"skipped": "the full data is not here: set IMDB_ARCHIVE=path/to/aclImdb_v1.tar.gz or run the "
                           "notebook once"}
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    sources = ["".join(cell["source"]) for cell in notebook["cells"]]
    last = next(i for i, (cell, source) in enumerate(zip(notebook["cells"], sources, strict=True))
                if cell["cell_type"] == "code" and PREPROCESSING_LAST_CELL in source)
    probe = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": MEMORY_PROBE}
    notebook["cells"] = notebook["cells"][: last + 1] + [probe]
    with tempfile.TemporaryDirectory() as tmp:
        source, executed = Path(tmp, "preprocessing.ipynb"), Path(tmp, "executed.ipynb")
        source.write_text(json.dumps(notebook), encoding="utf-8")
        start = time.perf_counter()
        command = [sys.executable, "-m", "papermill", str(source), str(executed), "-k", KERNEL, "--cwd", str(REPO),
                   "--no-progress-bar", "-p", "imdb_archive", archive, "-p", "run_dir", str(Path(tmp, "run"))]
        # A cache of its own: the figures are those of a first run, which tokenizes and counts everything.
        result = subprocess.run(command, capture_output=True, text=True,
                                env=dict(os.environ, SENTIMENT_CACHE_DIR=str(Path(tmp, "cache"))))
        if result.returncode != 0:
            raise RuntimeError(f"the preprocessing step failed:\n{result.stderr[-3000:]}")
        seconds = time.perf_counter() - start
        outputs = json.loads(executed.read_text(encoding="utf-8"))["cells"][-1]["outputs"]
    measured = json.loads("".join("".join(output.get("text", "")) for output in outputs))
    return {**measured, "wall_seconds": seconds}


def section_times(cells):
    """Wall seconds of each '## ' section of the committed, papermill-executed notebook."""
    sections, current = {}, "(before the first section)"
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and source.startswith("## "):
            current = source.splitlines()[0][3:].strip()
        duration = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if duration is not None:
            sections[current] = sections.get(current, 0.0) + duration
    return {name: round(seconds, 1) for name, seconds in sections.items() if seconds >= 0.05}


def committed_run():
    if not METRICS.exists():
        return {}
    metrics = json.loads(METRICS.read_text(encoding="utf-8"))
    return {key: metrics.get(key) for key in ("peak_memory", "training_seconds", "test_accuracy", "environment")}


def hardware(device):
    info = {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(device)}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), flags=re.MULTILINE)
        info["cpu_model"] = names[0] if names else None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_table(result):
    rows = [("hardware", f"{result['hardware'].get('cpu_model') or result['hardware']['machine']}, "
                         f"{result['hardware']['torch_threads']} torch threads, {result['hardware']['device']}")]
    t = result["training"]
    for shape in t["shapes"]:
        rows.append((f"train step, batch {shape['batch']} x {shape['seq_len']} tokens",
                     f"{shape['notebook_tokens_per_s']:,.0f} tok/s vs bare nn.LSTM "
                     f"{shape['bare_lstm_tokens_per_s']:,.0f} tok/s (ratio {shape['ratio']:.2f})"))
    rows.append(("train step, all shapes", f"{t['notebook_tokens_per_s']:,.0f} tok/s vs bare nn.LSTM "
                                           f"{t['bare_lstm_tokens_per_s']:,.0f} tok/s (ratio {t['ratio']:.2f})"))
    k = result["packing"]
    rows.append((f"bidirectional LSTM step, {k['batch']} x {k['seq_len']} tokens",
                 f"padded {k['padded_s']:.2f} s, packed {k['packed_s']:.2f} s ({k['slowdown']:.0f} times slower)"))
    q = result["prediction"]
    rows.append(("predict_review's model", f"{q['model']}, {q['n_ngrams']:,} n-grams"))
    rows.append((f"predict_review, {q['review_words']} words", f"median {q['latency_median_ms']:.2f} ms, "
                                                              f"p95 {q['latency_p95_ms']:.2f} ms"))
    rows.append((f"predict_review, {q['review_words']} words, 1 thread",
                 f"median {q['latency_1_thread_median_ms']:.2f} ms, p95 {q['latency_1_thread_p95_ms']:.2f} ms"))
    rows.append((f"batch prediction (the LSTM), {q['batch_reviews']} reviews",
                 f"{q['batch_reviews_per_s']:,.0f} reviews/s"))
    if "checkpoint" in result:
        c = result["checkpoint"]
        rows.append(("checkpoint: size", f"{c['total_mb']:.1f} MB ({c['checkpoint']})"))
        rows.append(("checkpoint: loading and checking all three models", f"{c['load_seconds_median']:.2f} s"))
    stacks = result.get("stacks", {})
    if "skipped" in stacks:
        rows.append(("the two stacks", f"skipped: {stacks['skipped']}"))
    elif stacks:
        for name in STACKS:
            s = stacks[name]
            rows.append((f"{name} stack: torch {s['torch']}, numpy {s['numpy']}",
                         f"train step {s['training_tokens_per_s']:,.0f} tok/s, predict_review median "
                         f"{s['latency_median_ms']:.2f} ms (1 thread {s['latency_1_thread_median_ms']:.2f} ms), "
                         f"batch {s['batch_reviews_per_s']:,.0f} reviews/s"))
        rows.append(("current over pinned, train step", f"{stacks['current_over_pinned_training']:.2f}"))
    m = result["preprocessing_memory"]
    if "skipped" in m:
        rows.append(("preprocessing and word vectors, full data", f"skipped: {m['skipped']}"))
    else:
        rows.append(("preprocessing and word vectors, full data",
                     f"peak {m['peak_memory']['cpu_rss_mib']:,.0f} MiB resident, {m['wall_seconds']:.0f} s "
                     f"(fresh kernel; word vectors {m['pretraining_seconds']:.0f} s)"))
    run = result["committed_run"]
    if run.get("peak_memory"):
        rows.append(("default run: peak memory", ", ".join(f"{k} {v:,.0f}" for k, v in run["peak_memory"].items())))
    if run.get("training_seconds"):
        rows.append(("default run: training", f"{run['training_seconds'] / 60:.1f} min"))
    for name, seconds in result["section_seconds"].items():
        rows.append((f"default run: {name}", f"{seconds:,.1f} s"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help='"auto", "cpu" or "cuda"')
    parser.add_argument("--out", default=str(REPO / "figures" / "benchmark.json"), help="where to write the JSON")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per shape and round")
    parser.add_argument("--calls", type=int, default=200, help="timed predict_review calls")
    parser.add_argument("--imdb-archive", default=os.environ.get("IMDB_ARCHIVE", ""),
                        help="aclImdb_v1.tar.gz for the full-data memory step (default: $IMDB_ARCHIVE)")
    parser.add_argument("--stack-probe", action="store_true",
                        help="only print this stack's training and prediction figures as one JSON line (used by "
                             "the side-by-side of the two stacks)")
    parser.add_argument("--no-stacks", action="store_true", help="leave out the side-by-side of the two stacks")
    parser.add_argument("--checkpoint", default="",
                        help="a default run's checkpoint folder: predict_review is timed with its three models, and "
                             "its size and loading time are measured")
    parser.add_argument("--prediction-only", action="store_true",
                        help="only predict_review's latency and, with --checkpoint, the checkpoint's size and loading "
                             "time (a minute), into --out")
    args = parser.parse_args(argv)
    if args.prediction_only:
        helpers.set_seed(0)
        helpers.flush_denormal_floats()
        device = helpers.choose_device(args.device)
        params = default_parameters()
        result = {"hardware": hardware(device),
                  "prediction": prediction_speed(notebook_cells(), namespace("SentimentLSTM"), params,
                                                 sample_vocab(params["max_vocab_size"]), device, args.calls,
                                                 args.checkpoint)}
        if args.checkpoint:
            result["checkpoint"] = checkpoint_figures(args.checkpoint)
        print(json.dumps(result, indent=2))
        helpers.write_json(args.out, result)
        return
    if args.stack_probe:
        print(json.dumps(stack_probe(args.steps, args.calls)))
        return

    helpers.set_seed(0)
    helpers.flush_denormal_floats()  # as the notebook's setup does
    device = helpers.choose_device(args.device)
    cells = notebook_cells()
    params = default_parameters()
    definitions = namespace("SentimentLSTM", "train_epoch")
    vocab = sample_vocab(params["max_vocab_size"])

    result = {"hardware": hardware(device), "parameters": params}
    result["training"] = training_throughput(definitions, params, vocab, device, args.steps)
    result["packing"] = packing_cost(params, device)
    result["prediction"] = prediction_speed(cells, definitions, params, vocab, device, args.calls, args.checkpoint)
    if args.checkpoint:
        result["checkpoint"] = checkpoint_figures(args.checkpoint)
    result["stacks"] = {"skipped": "--no-stacks"} if args.no_stacks else compare_stacks(args.steps, args.calls)
    result["preprocessing_memory"] = preprocessing_memory(args.imdb_archive)
    result["section_seconds"] = section_times(cells)
    result["committed_run"] = committed_run()
    print_table(result)
    helpers.write_json(args.out, result)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
