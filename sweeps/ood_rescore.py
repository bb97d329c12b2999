"""Score the out-of-domain sets afterwards, from a finished run's saved checkpoint, where the run had no sets.

    python sweeps/ood_rescore.py RUN_DIR [RUN_DIR ...] --ood-data FOLDER [--check RUN_DIR]

A default run scores the sets of section 5 itself when `ood_data` (or $OOD_DATA) finds them. Seeds 6 to 9 of
sweeps/default_seeds.yaml ran without them (OOD_DATA unset, offline), so their logits.npz lacks the sets. This
loads each such run's checkpoint (the best epoch's LSTM, the n-gram model and the combination, all three as the
run saved them), scores the sets with the lesson's own `score_all_three` (taken from the notebook, as the
benchmark takes its code), and adds to the run folder exactly what the notebook would have written: the
`<set>_<key>` arrays of logits.npz and metrics.json's "out_of_domain" entry, with a note of how they were made.

--check RUN_DIR rescores a run that scored the sets itself, into memory only, and compares: the arrays must be
the run's own (the same weights, the same code, one torch thread as the sweep used).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import helpers  # noqa: E402
from notebook_code import cell_defining, namespace  # noqa: E402

KEYS = ("lstm", "ngram", "coverage", "combined", "labels", "length")


def rescore(run_dir, ood_folder):
    """{set: {key: array}} for each set found in ood_folder, scored by run_dir's saved checkpoint."""
    checkpoint = Path(run_dir) / "checkpoint"
    state, vocab, config = helpers.load_checkpoint(checkpoint)
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    device = torch.device("cpu")
    space = namespace("SentimentLSTM")
    model = space["SentimentLSTM"](**config["model"]).to(device)
    helpers.load_weights(model, state)
    model.eval()
    rule, weights, bias = helpers.load_combiner(checkpoint)
    space.update(vocab=vocab, max_length=config["max_length"], batch_size=metrics["params"]["batch_size"],
                 pad_index=vocab[helpers.PAD_TOKEN], model=model, device=device,
                 baseline=helpers.load_ngram_model(checkpoint), combination_rule=rule,
                 combination_weights=weights, combination_bias=bias)
    exec(cell_defining("score_all_three"), space)  # noqa: S102 - the lesson's own function
    sets = helpers.load_ood_sets(str(ood_folder), download_missing=False)
    if not sets:
        raise SystemExit(f"error: no out-of-domain set found in {ood_folder}")
    scored = {}
    for name, ood in sets.items():
        scores = space["score_all_three"](ood.tokens)
        scores.update(labels=np.array(ood.labels), length=np.array([len(tokens) for tokens in ood.tokens]))
        scored[name] = scores
    return sets, scored


def add_to_run(run_dir, sets, scored):
    """Write the scores into run_dir's logits.npz and metrics.json, as the notebook's cells would have."""
    run_dir = Path(run_dir)
    with np.load(run_dir / "logits.npz", allow_pickle=False) as saved:
        logits = {name: saved[name] for name in saved.files}
    clash = [f"{name}_{key}" for name in scored for key in KEYS if f"{name}_{key}" in logits]
    if clash:
        raise SystemExit(f"error: {run_dir / 'logits.npz'} already holds {', '.join(clash)}: nothing written")
    logits.update({f"{name}_{key}": scores[key] for name, scores in scored.items() for key in KEYS})
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics["out_of_domain"] = helpers.out_of_domain_record(sets, scored)
    metrics["out_of_domain_note"] = ("scored after the run from its saved checkpoint by sweeps/ood_rescore.py: "
                                     "the run had no out-of-domain sets")
    tmp = run_dir / ".logits.npz.tmp.npz"
    np.savez_compressed(tmp, **logits)
    tmp.replace(run_dir / "logits.npz")
    helpers.write_json(run_dir / "metrics.json", metrics)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--ood-data", type=Path, required=True)
    parser.add_argument("--check", type=Path, help="a run that scored the sets itself: compare, write nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the sweep's runs had
    if args.check:
        _, scored = rescore(args.check, args.ood_data)
        with np.load(args.check / "logits.npz", allow_pickle=False) as saved:
            for name, scores in scored.items():
                for key in KEYS:
                    own = saved[f"{name}_{key}"]
                    largest = float(np.max(np.abs(own.astype(float) - scores[key].astype(float))))
                    print(f"{args.check.name} {name}_{key}: largest difference from the run's own {largest:.3g}")
    for run_dir in args.runs:
        sets, scored = rescore(run_dir, args.ood_data)
        add_to_run(run_dir, sets, scored)
        print(f"{run_dir}: " + ", ".join(f"{name} LSTM {np.mean((s['lstm'] >= 0) == s['labels']):.4f}"
                                         for name, s in scored.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
