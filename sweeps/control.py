"""The control (issue 34, item 4): is the LSTM needed for the combined model's gain, or would any second model
with other errors do? A cheap model that is not an LSTM, trained on each run's own training split, combined with
that run's n-grams by the rule the notebook uses for the LSTM, and compared seed by seed.

    python sweeps/control.py RUN_DIR [RUN_DIR ...] [--out figures/control] [--ood-data FOLDER] [--keep FOLDER]

e.g. over the ten default seeds (one torch thread; on the full data about 50 s of CPU a seed, 1.5 to 3 min
of wall time on two cores busy with a sweep; at most 1.2 GiB resident):

    OMP_NUM_THREADS=1 .venv/bin/python sweeps/control.py runs/default-seeds/default_seed-* \\
        --ood-data ../shared/data --keep runs/control-logits

RUN_DIR: a finished default run (metrics.json with its parameters, logits.npz with every review's logits). For
each run it

1. rebuilds the run's data and split with the notebook's own calls, in its order (prepare_imdb or the sample,
   read_imdb, stratified_subset of the test reviews if test_size, tokenize_all, stratified_split with the run's
   seed and valid_fraction, then the stratified_subset of train_size and valid_size), and the out-of-domain sets
   with load_ood_sets (from --ood-data, else the run's ood_data). Each rebuilt set's labels and token counts
   must equal those in logits.npz (and each out-of-domain file's SHA-256 the run's), else it stops, writing
   nothing: a different seed, split, data or tokenizer would compare other reviews;
2. trains the control on the training split only: a bag of uni- and bigram embeddings in the fastText manner
   (Joulin et al. 2017): each review is the mean of the embeddings of its word uni- and bigrams (those in at
   least MIN_DF training reviews), one linear unit on top, Adam, up to MAX_EPOCHS epochs, the epoch of lowest
   validation loss kept (patience PATIENCE), as the LSTM's are;
3. fits the notebook's combination rule (section 4: "stacked", a logistic regression with sklearn's defaults on
   the two models' validation logits) to the control's and the run's n-gram logits, on the validation split
   alone, first checking that the same fit on the run's LSTM logits gives the run's own weights; the test and
   out-of-domain reviews are only scored.

It writes

    OUT_seeds.csv          one row per run: the accuracy of the n-grams, the LSTM, the control, the LSTM + n-grams
                           (the run's combined model) and the control + n-grams on validation (in-sample, and held
                           out by 10-fold cross-validation within the validation split), on the test reviews and
                           on each out-of-domain set; the two combinations' weights; the control's size, epochs
                           and seconds
    OUT_seeds_summary.csv  one row per set: each model's mean and sd over the runs, and three paired differences
                           in points: LSTM + n-grams minus control + n-grams (what the LSTM adds beyond a cheap
                           second model), control + n-grams minus n-grams (the control's gain), LSTM + n-grams
                           minus n-grams (the combined gain, for reference), with control_share_of_gain, the second
                           over the third. On the test and out-of-domain sets, which every run scores the same
                           reviews of, the standard error carries both noises, the seeds' and the set's own
                           sampling (stats.paired_two_noises); on validation (10-fold held-out accuracy) each seed
                           has its own split, so the seeds' spread already holds the split's sampling (stats.paired).
                           Every difference of the table is one family for Holm's rule (stats.holm): p_holm and
                           beyond_noise

--keep FOLDER saves each run's control logits there (<run>.npz, plain arrays) and reuses them when the script is
run again on the same run with the same settings, so that a stopped job or a new summary does not retrain.
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from torch import nn

if __package__:  # imported as sweeps.control
    from .ood_rules import read_run_files
    from .stats import holm, paired, paired_two_noises, write_csv
else:  # run as a script: sweeps/ is on sys.path
    from ood_rules import read_run_files
    from stats import holm, paired, paired_two_noises, write_csv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import helpers  # noqa: E402

SETS = ("valid", "test", "amazon", "yelp", "polarity")  # those a run may have scored, in the table's order
MODELS = ("ngram", "lstm", "control", "lstm_combined", "control_combined")
MODEL_NAMES = {"ngram": "n-grams", "lstm": "LSTM", "control": "control", "lstm_combined": "LSTM + n-grams",
               "control_combined": "control + n-grams"}
COMPARISONS = (("lstm_combined", "control_combined"), ("control_combined", "ngram"), ("lstm_combined", "ngram"))
CV_FOLDS = 10  # the held-out validation accuracy of a combination, as sweeps/compare_baseline.py computes it
RULE = "stacked"  # helpers.COMBINATION_RULES: the notebook's rule

# The control's settings, fixed before any test figure was seen: fastText's way (a small embedding, a few epochs
# of a large step), and of three tried on seed 42's validation split (16 numbers at LR 0.01 or 0.003, 64 at
# 0.01) the one of lowest validation loss (0.245, with 0.245 and 0.250; accuracy 0.908, 0.904 and 0.904).
DIM = 16  # numbers per n-gram embedding
MIN_DF = 2  # an n-gram enters the control's vocabulary if at least this many training reviews hold it
MAX_EPOCHS = 5
PATIENCE = 1  # stop after this many epochs without a lower validation loss
BATCH_SIZE = 64
LR = 0.01  # Adam's (sparse Adam for the embeddings)
SCORE_CHUNK = 2048  # reviews scored at a time
WEIGHT_TOLERANCE = 1e-3  # how far a refitted combination weight may be from the run's (solver tolerance)


class SplitMismatchError(ValueError):
    """The rebuilt data are not the run's: another seed, split, data or tokenizer."""


def _same(tokens):
    return tokens


# --------------------------------------------------------------------------- the run, and its data rebuilt
def load_run(run_dir):
    """(metrics, logits) of a finished run, with what the control needs checked."""
    run_dir = Path(run_dir)
    metrics, logits = read_run_files(run_dir)
    missing = [f"{s}_{k}" for s in ("valid", "test") for k in ("labels", "lstm", "ngram", "combined", "length")
               if f"{s}_{k}" not in logits]
    if missing or "params" not in metrics or metrics.get("combined", {}).get("rule") != RULE:
        raise SystemExit(f"error: {run_dir} lacks {', '.join(missing) or 'params or the stacked combination'}: "
                         "a run of an older notebook?")
    return metrics, logits


def rebuild_data(params, data_root=None, ood_folder=None, ood_names=(), log=print):
    """{set: (token lists, labels)} for train, valid, test and each out-of-domain set in ood_names, made by the
    notebook's calls in its order (sections 1 and 5), from the run's parameters.

    data_root: the aclImdb folder (default: the bundled sample if the run used it, else prepare_imdb of the
    run's archive). ood_folder: where the out-of-domain files are (default: the run's ood_data).
    Also returns {set: SHA-256 of its file} for the out-of-domain sets.
    """
    seed = params["seed"]
    if data_root is None:
        data_root = helpers.SAMPLE_DIR if params["use_sample"] else helpers.prepare_imdb(params["imdb_archive"],
                                                                                         log=log)
    train_texts, train_labels = helpers.read_imdb(data_root, "train")
    test_texts, test_labels = helpers.read_imdb(data_root, "test")
    if params["test_size"]:
        kept = helpers.stratified_subset(range(len(test_labels)), test_labels, params["test_size"], seed,
                                         name="test_size")
        test_texts, test_labels = [test_texts[i] for i in kept], [test_labels[i] for i in kept]
    train_tokens = helpers.tokenize_all(train_texts)
    test_tokens = helpers.tokenize_all(test_texts)
    del train_texts, test_texts
    train_idx, valid_idx = helpers.stratified_split(train_labels, params["valid_fraction"], seed)
    if params["train_size"]:
        train_idx = helpers.stratified_subset(train_idx, train_labels, params["train_size"], seed)
    if params["valid_size"]:
        valid_idx = helpers.stratified_subset(valid_idx, train_labels, params["valid_size"], seed, name="valid_size")
    data = {"train": ([train_tokens[i] for i in train_idx], [train_labels[i] for i in train_idx]),
            "valid": ([train_tokens[i] for i in valid_idx], [train_labels[i] for i in valid_idx]),
            "test": (test_tokens, test_labels)}
    checksums = {}
    if ood_names:
        folder = ood_folder if ood_folder is not None else params.get("ood_data", "")
        loaded = helpers.load_ood_sets(folder, download_missing=False, log=log)
        for name in ood_names:
            if name not in loaded:
                raise SplitMismatchError(f"the run scored the out-of-domain set {name!r}, but it is not in "
                                    f"{folder or helpers.OOD_DIR}: give its folder with --ood-data")
            data[name] = (loaded[name].tokens, loaded[name].labels)
            checksums[name] = loaded[name].sha256
    return data, checksums


def check_data(data, checksums, metrics, logits, where="the run"):
    """Raise SplitMismatchError unless every rebuilt set's labels and token counts (and each out-of-domain file's
    SHA-256) are those the run saved: the same reviews in the same order."""
    for name, (tokens, labels) in data.items():
        if name == "train":
            continue  # not saved by the run: its complement, the validation split, is checked
        saved_labels = logits[f"{name}_labels"]
        lengths = np.array([len(t) for t in tokens])
        problem = None
        if len(labels) != len(saved_labels):
            problem = f"{len(labels):,} reviews, the run has {len(saved_labels):,}"
        elif not np.array_equal(np.asarray(labels), saved_labels):
            problem = f"labels differ at {int(np.sum(np.asarray(labels) != saved_labels)):,} reviews"
        elif f"{name}_length" in logits and not np.array_equal(lengths, logits[f"{name}_length"]):
            problem = f"token counts differ at {int(np.sum(lengths != logits[f'{name}_length'])):,} reviews"
        elif name in checksums and checksums[name] != (saved := metrics["out_of_domain"][name]["sha256"]):
            problem = f"its file's SHA-256 is {checksums[name][:12]}…, the run's {saved[:12]}…"
        if problem:
            raise SplitMismatchError(f"the rebuilt {name} reviews are not those of {where} ({problem}): another seed, "
                                "valid_fraction, data or tokenizer? Nothing is compared on other reviews")


# --------------------------------------------------------------------------- the control
class BagOfNgrams:
    """fastText's classifier (Joulin et al. 2017, with bigrams): logit = b + w . mean of the embeddings of the
    review's word uni- and bigrams (each occurrence counts; those seen in fewer than min_df training reviews are
    left out). Trained on the training split; the epoch of lowest validation loss is kept."""

    def __init__(self, dim=DIM, min_df=MIN_DF, max_epochs=MAX_EPOCHS, patience=PATIENCE, batch_size=BATCH_SIZE,
                 lr=LR, seed=0):
        self.dim, self.min_df, self.max_epochs, self.patience = dim, min_df, max_epochs, patience
        self.batch_size, self.lr, self.seed = batch_size, lr, seed

    def settings(self):
        return {"model": "bag of uni- and bigram embeddings", "dim": self.dim, "min_df": self.min_df,
                "max_epochs": self.max_epochs, "patience": self.patience, "batch_size": self.batch_size,
                "lr": self.lr, "seed": self.seed}

    def _features(self, token_lists):
        """Row-normalised counts: each row sums to 1 over the review's known n-grams (0 where none is known)."""
        return self._normalised(self.vectorizer.transform(token_lists))

    @staticmethod
    def _normalised(counts):
        counts = counts.tocsr()
        totals = np.asarray(counts.sum(axis=1)).ravel()
        counts.data /= np.repeat(np.maximum(totals, 1), np.diff(counts.indptr)).astype(np.float32)
        return counts

    def _forward(self, rows):
        """The logits of a CSR block of rows."""
        inputs = torch.from_numpy(rows.indices.astype(np.int64))
        offsets = torch.from_numpy(rows.indptr[:-1].astype(np.int64))
        weights = torch.from_numpy(rows.data.astype(np.float32))
        return self.output(self.embedding(inputs, offsets, per_sample_weights=weights)).squeeze(1)

    def fit(self, train_tokens, train_labels, valid_tokens, valid_labels, log=print):
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.vectorizer = CountVectorizer(tokenizer=_same, preprocessor=_same, token_pattern=None, lowercase=False,
                                          ngram_range=(1, 2), min_df=self.min_df, dtype=np.float32)
        train = self._normalised(self.vectorizer.fit_transform(train_tokens))  # the training split only
        self.n_ngrams = len(self.vectorizer.vocabulary_)
        valid = self._features(valid_tokens)
        y_train = torch.tensor(np.asarray(train_labels), dtype=torch.float32)
        y_valid = torch.tensor(np.asarray(valid_labels), dtype=torch.float32)
        self.embedding = nn.EmbeddingBag(self.n_ngrams, self.dim, mode="sum", sparse=True)
        nn.init.uniform_(self.embedding.weight, -1 / self.dim, 1 / self.dim)  # fastText's initialisation
        self.output = nn.Linear(self.dim, 1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        sparse = torch.optim.SparseAdam(self.embedding.parameters(), lr=self.lr)
        dense = torch.optim.Adam(self.output.parameters(), lr=self.lr)
        loss_fn = nn.BCEWithLogitsLoss()
        best_loss, best_state, self.history = float("inf"), None, []
        for epoch in range(1, self.max_epochs + 1):
            order = rng.permutation(train.shape[0])
            for start in range(0, len(order), self.batch_size):
                batch = np.sort(order[start:start + self.batch_size])
                sparse.zero_grad()
                dense.zero_grad()
                loss = loss_fn(self._forward(train[batch]), y_train[batch])
                loss.backward()
                sparse.step()
                dense.step()
            with torch.no_grad():
                valid_loss = float(loss_fn(self._forward(valid), y_valid))
            self.history.append(valid_loss)
            log(f"  control epoch {epoch}: validation loss {valid_loss:.4f}")
            if valid_loss < best_loss:
                best_loss, self.best_epoch = valid_loss, epoch
                best_state = (self.embedding.weight.detach().clone(), self.output.weight.detach().clone(),
                              self.output.bias.detach().clone())
            elif epoch - self.best_epoch >= self.patience:
                break
        with torch.no_grad():
            for parameter, value in zip((self.embedding.weight, self.output.weight, self.output.bias), best_state,
                                        strict=True):
                parameter.copy_(value)
        return self

    @torch.no_grad()
    def logits(self, token_lists):
        """The control's logit of each token list (float64)."""
        parts = [self._forward(self._features(token_lists[start:start + SCORE_CHUNK])).double().numpy()
                 for start in range(0, len(token_lists), SCORE_CHUNK)]
        return np.concatenate(parts) if parts else np.zeros(0)


# --------------------------------------------------------------------------- the combination
def fit_stacked(first, ngram, labels):
    """The notebook's rule (section 4): LogisticRegression() on [first model's logit, n-gram logit] of the
    validation reviews; returns (weights, bias) for helpers.combined_logits."""
    combiner = LogisticRegression().fit(np.column_stack([first, ngram]), np.asarray(labels))
    return combiner.coef_[0], float(combiner.intercept_[0])


def combine(weights, bias, first, ngram):
    return helpers.combined_logits(RULE, weights, bias, first, ngram)


def held_out_accuracy(first, ngram, labels):
    """The rule's accuracy on the validation reviews, each scored by a fit on the other nine tenths."""
    labels = np.asarray(labels)
    folds = np.random.default_rng(0).permutation(len(labels)) % CV_FOLDS
    held_out = np.empty(len(labels))
    for fold in range(CV_FOLDS):
        fit, score = folds != fold, folds == fold
        held_out[score] = combine(*fit_stacked(first[fit], ngram[fit], labels[fit]), first[score], ngram[score])
    return float(np.mean((held_out >= 0) == labels.astype(bool)))


def check_rule(metrics, logits, where="the run"):
    """The rule refitted on the run's LSTM and n-gram validation logits must give the run's own weights."""
    weights, bias = fit_stacked(logits["valid_lstm"], logits["valid_ngram"], logits["valid_labels"])
    saved = np.array([*metrics["combined"]["weights"], metrics["combined"]["bias"]])
    if not np.allclose([*weights, bias], saved, rtol=0, atol=WEIGHT_TOLERANCE):
        raise SplitMismatchError(f"the combination rule refitted on {where}'s validation logits gives weights "
                            f"{np.round([*weights, bias], 4).tolist()}, the run's are {np.round(saved, 4).tolist()}: "
                            "not the notebook's rule, or another sklearn")


def evaluate(scores, labels, valid_name="valid"):
    """Fit the rule for the control and report every model's accuracy on every set.

    scores: {set: {"control", "lstm", "ngram", "lstm_combined": logits}}; labels: {set: 0/1 labels}. The control's
    combination is fitted on valid_name alone. Returns (weights, bias, {set: {model: right or wrong per review}},
    held-out validation accuracy of each combination).
    """
    valid, valid_labels = scores[valid_name], np.asarray(labels[valid_name])
    weights, bias = fit_stacked(valid["control"], valid["ngram"], valid_labels)
    rights = {}
    for name, score in scores.items():
        truth = np.asarray(labels[name]).astype(bool)
        logits = {**score, "control_combined": combine(weights, bias, score["control"], score["ngram"])}
        rights[name] = {model: (logits[model] >= 0) == truth for model in MODELS}
    cv = {"lstm_combined": held_out_accuracy(valid["lstm"], valid["ngram"], valid_labels),
          "control_combined": held_out_accuracy(valid["control"], valid["ngram"], valid_labels)}
    return weights, bias, rights, cv


# --------------------------------------------------------------------------- one run
def keep_key(control, logits):
    """What a kept control's logits must match: the run's saved logits and the control's settings."""
    digest = hashlib.sha256(json.dumps(control.settings(), sort_keys=True).encode())
    for name in sorted(logits):
        digest.update(name.encode() + np.ascontiguousarray(logits[name]).tobytes())
    return digest.hexdigest()


def control_logits(run_dir, metrics, logits, sets, control, data_root=None, ood_folder=None, keep=None, log=print):
    """{set: the control's logits} of one run, rebuilt, checked and trained (or read from --keep), and how."""
    key = keep_key(control, logits)
    kept = Path(keep) / f"{Path(run_dir).name}.npz" if keep else None
    if kept is not None and kept.is_file():
        with np.load(kept, allow_pickle=False) as saved:
            if str(saved["key"]) == key and all(f"{s}_control" in saved.files for s in sets):
                log(f"{run_dir}: the control's logits from {kept}")
                return ({s: saved[f"{s}_control"] for s in sets},
                        {name: saved[name].item() for name in ("n_ngrams", "best_epoch", "epochs", "train_seconds")})
    params = metrics["params"]
    data, checksums = rebuild_data(params, data_root, ood_folder, [s for s in sets if s not in ("valid", "test")],
                                   log)
    check_data(data, checksums, metrics, logits, where=str(run_dir))
    start = time.perf_counter()
    control.seed = params["seed"]
    control.fit(*data["train"], *data["valid"], log=log)
    out = {s: control.logits(data[s][0]) for s in sets}
    info = {"n_ngrams": control.n_ngrams, "best_epoch": control.best_epoch, "epochs": len(control.history),
            "train_seconds": time.perf_counter() - start}
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(kept, key=np.array(key), **{f"{s}_control": v for s, v in out.items()},
                            **{k: np.array(v) for k, v in info.items()})
    return out, info


def run_row(run_dir, control=None, data_root=None, ood_folder=None, keep=None, log=print):
    """One run's row of OUT_seeds.csv and its {set: {model: right per review}}."""
    start = time.perf_counter()
    control = control or BagOfNgrams()
    metrics, logits = load_run(run_dir)
    sets = [s for s in SETS if f"{s}_labels" in logits]
    check_rule(metrics, logits, where=str(run_dir))
    controls, info = control_logits(run_dir, metrics, logits, sets, control, data_root, ood_folder, keep, log)
    scores = {s: {"control": controls[s], "lstm": logits[f"{s}_lstm"], "ngram": logits[f"{s}_ngram"],
                  "lstm_combined": logits[f"{s}_combined"]} for s in sets}
    weights, bias, rights, cv = evaluate(scores, {s: logits[f"{s}_labels"] for s in sets})
    params = metrics["params"]
    row = {"run": Path(run_dir).name, "seed": params["seed"], "control": control.settings()["model"],
           "n_train_reviews": metrics["n_train_reviews"], "n_valid_reviews": len(logits["valid_labels"]),
           "control_n_ngrams": info["n_ngrams"], "control_best_epoch": info["best_epoch"],
           "control_epochs": info["epochs"]}
    for s in sets:
        for model in MODELS:
            row[f"{s}_{model}_acc"] = float(rights[s][model].mean())
        if s == "valid":
            row.update({f"valid_cv_{model}_acc": value for model, value in cv.items()})
    row.update({"control_combined_control_weight": float(weights[0]), "control_combined_ngram_weight":
                float(weights[1]), "control_combined_bias": bias,
                "lstm_combined_lstm_weight": metrics["combined"]["weights"][0],
                "lstm_combined_ngram_weight": metrics["combined"]["weights"][1],
                "lstm_combined_bias": metrics["combined"]["bias"],
                "control_train_seconds": round(info["train_seconds"], 1),
                "seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads()})
    return row, rights


# --------------------------------------------------------------------------- the summary
def summary_rows(rows, rights):
    """Per set: each model's mean and sd, and the paired differences (points), judged by Holm over the table."""
    if len(rows) < 2:
        raise SystemExit("error: give at least two runs: one run has no spread")
    sets = [s for s in SETS if all(s in r for r in rights)]
    out, family = [], []
    for s in sets:
        row = {"set": s, "n_runs": len(rows), "n_reviews": len(rights[0][s]["ngram"]),
               "noise": "seeds (each its own split)" if s == "valid" else "seeds and the set's (two noises)",
               "combined_accuracy": "10-fold held out" if s == "valid" else "fitted on validation"}
        for model in MODELS:
            key = f"valid_cv_{model}_acc" if s == "valid" and model.endswith("combined") else f"{s}_{model}_acc"
            values = np.array([r[key] for r in rows])
            row[f"{model}_mean"], row[f"{model}_sd"] = float(values.mean()), float(values.std(ddof=1))
        for a, b in COMPARISONS:
            what = f"{MODEL_NAMES[a]} minus {MODEL_NAMES[b]}, {s}"
            if s == "valid":  # other reviews for each seed: per-seed accuracies, paired by seed
                key = {m: (f"valid_cv_{m}_acc" if m.endswith("combined") else f"valid_{m}_acc") for m in (a, b)}
                comparison = paired([r[key[a]] for r in rows], [r[key[b]] for r in rows], 100, what)
                seed_se, set_se = comparison.se, ""
            else:
                differences = np.array([r[s][a].astype(float) - r[s][b] for r in rights])
                comparison, seed_se, set_se = paired_two_noises(differences, scale=100, what=what)
            family.append((row, f"{a}_minus_{b}", comparison))
            row.update({f"{a}_minus_{b}_points": comparison.mean, f"{a}_minus_{b}_se": comparison.se,
                        f"{a}_minus_{b}_seed_se": seed_se, f"{a}_minus_{b}_set_se": set_se,
                        f"{a}_minus_{b}_df": comparison.df, f"{a}_minus_{b}_low": comparison.low,
                        f"{a}_minus_{b}_high": comparison.high, f"{a}_minus_{b}_p": comparison.p})
        gain = row["lstm_combined_minus_ngram_points"]
        row["control_share_of_gain"] = row["control_combined_minus_ngram_points"] / gain if gain else float("nan")
        out.append(row)
    beyond, adjusted = holm([comparison.p for _, _, comparison in family])
    for (row, key, _), verdict, p_holm in zip(family, beyond, adjusted, strict=True):
        row[f"{key}_p_holm"], row[f"{key}_beyond_noise"] = float(p_holm), bool(verdict)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished default runs, one per seed")
    parser.add_argument("--out", default=str(REPO / "figures" / "control"),
                        help="prefix of the two CSV files (default: figures/control: control_seeds.csv, ...)")
    parser.add_argument("--ood-data", default=None, help="folder of the out-of-domain files (default: each run's)")
    parser.add_argument("--data-root", default=None, help="the extracted aclImdb folder (default: each run's)")
    parser.add_argument("--keep", default=None, help="folder to keep (and reuse) each run's control logits in")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seen = {}
    for run in args.runs:
        seed = load_run(run)[0]["params"]["seed"]
        if seed in seen:
            raise SystemExit(f"error: {run} and {seen[seed]} share seed {seed}; each seed once")
        seen[seed] = run
    rows, rights = [], []
    for run in args.runs:
        try:
            row, right = run_row(run, data_root=args.data_root, ood_folder=args.ood_data, keep=args.keep)
        except SplitMismatchError as err:
            raise SystemExit(f"error: {run}: {err}") from None
        rows.append(row)
        rights.append(right)
        print(f"{row['run']} (seed {row['seed']}): control valid {row['valid_control_acc']:.4f} test "
              f"{row['test_control_acc']:.4f}; test: n-grams {row['test_ngram_acc']:.4f}, control + n-grams "
              f"{row['test_control_combined_acc']:.4f}, LSTM + n-grams {row['test_lstm_combined_acc']:.4f} "
              f"({row['seconds']:.0f} s)", flush=True)
    write_csv(f"{args.out}_seeds.csv", rows)
    if len(rows) < 2:
        print("one run: no summary (a difference needs two seeds)")
        return
    summary = summary_rows(rows, rights)
    write_csv(f"{args.out}_seeds_summary.csv", summary)
    for row in summary:
        print(f"{row['set']:>8}: " + "; ".join(
            f"{MODEL_NAMES[a]} - {MODEL_NAMES[b]} {row[f'{a}_minus_{b}_points']:+.2f} ± {row[f'{a}_minus_{b}_se']:.2f}"
            f" (Holm p {row[f'{a}_minus_{b}_p_holm']:.3f})" for a, b in COMPARISONS)
            + f"; control's share of the gain {row['control_share_of_gain']:.2f}")


if __name__ == "__main__":
    main()
