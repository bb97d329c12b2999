"""The papermill sweep runner: expansion, checks, resuming, failures, and a real run on the sample."""

import csv
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats as scipy_stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sweeps"))

import stats  # noqa: E402
import sweep  # noqa: E402

import helpers  # noqa: E402

# The exercises' size: sweeps/exercises.yaml's base, and the lesson's answers come from its runs.
EXERCISE_SIZE = {"train_size": 1500, "valid_size": 1000, "test_size": 2000, "n_epochs": 3}
EXERCISE_RUNS = REPO / "figures" / "sweep_lesson_exercises_summary.csv"
NAMES = ["use_sample", "n_epochs", "hidden_dim", "pooling", "bidirectional", "lr", "seed", "run_dir"]


def write_spec(tmp_path, spec, name="demo"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_grid_expands_to_every_combination_on_top_of_base():
    runs = sweep.expand({"base": {"n_epochs": 2}, "grid": {"hidden_dim": [8, 16], "pooling": ["max", "last"]}}, NAMES)
    assert list(runs) == ["hidden_dim-8_pooling-max", "hidden_dim-8_pooling-last",
                          "hidden_dim-16_pooling-max", "hidden_dim-16_pooling-last"]
    assert runs["hidden_dim-16_pooling-last"] == {"n_epochs": 2, "hidden_dim": 16, "pooling": "last"}


def test_named_runs_are_crossed_with_the_grid_and_override_base():
    runs = sweep.expand({"base": {"lr": 0.001, "bidirectional": True},
                         "runs": [{"name": "uni", "bidirectional": False}, {"name": "fast", "lr": 0.01}],
                         "grid": {"hidden_dim": [8, 16]}}, NAMES)
    assert list(runs) == ["uni_hidden_dim-8", "uni_hidden_dim-16", "fast_hidden_dim-8", "fast_hidden_dim-16"]
    assert runs["uni_hidden_dim-8"] == {"lr": 0.001, "bidirectional": False, "hidden_dim": 8}
    assert runs["fast_hidden_dim-16"]["lr"] == 0.01
    assert sweep.varied_parameters(runs) == ["bidirectional", "hidden_dim", "lr"]


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"hiden_dim": [8]}}, "unknown parameters: hiden_dim. Valid names: use_sample, n_epochs"),
    ({"base": {"run_dir": "x"}, "grid": {"hidden_dim": [8]}}, "run_dir is set by the sweep"),
    ({"base": {"n_epochs": 1}}, "neither 'runs' nor 'grid'"),
    ({"grid": {"hidden_dim": []}}, "non-empty list"),
    ({"runs": [{"hidden_dim": 8}]}, "needs a name"),
    ({"gird": {"hidden_dim": [8]}}, "unknown keys in the sweep file: gird"),
    ({"runs": [{"name": "e", "edit": {"find": "x"}}]}, "'edit' must map 'find' and 'replace'"),
    ({"grid": {"hidden_dim": [8]}, "seeds": [1, 1]}, "'seeds' must be a non-empty list of different integers"),
    ({"grid": {"hidden_dim": [8]}, "seeds": []}, "'seeds' must be a non-empty list"),
    ({"grid": {"hidden_dim": [8]}, "base": {"seed": 3}, "seeds": [1, 2]}, "seed is set by the sweep"),
])
def test_a_bad_sweep_file_is_refused_before_any_run(tmp_path, spec, message):
    calls = []
    with pytest.raises(sweep.SweepError, match=message):
        sweep.run_sweep(write_spec(tmp_path, spec), tmp_path / "runs", execute=lambda *a: calls.append(a),
                        valid_names=NAMES, log=lambda *a: None)
    assert calls == [] and not (tmp_path / "runs").exists()


def fake_execute(fail=()):
    """An execute function that writes a plausible metrics.json, or fails for the named runs."""
    calls = []

    def execute(run_dir, params, threads):
        calls.append(run_dir.name)
        if run_dir.name in fail:
            raise RuntimeError("ValueError: parameter hidden_dim=-1 is not valid")
        seed = params.get("seed", 0)
        acc = 0.5 + params.get("hidden_dim", 0) / 100 + seed / 1000
        history = {"epoch": [1, 2], "valid_loss": [0.7, 0.6], "valid_acc": [acc - 0.01, acc]}
        # The final model averages epochs 1 and 2: 0.002 (+ seed / 10,000) better than the best epoch alone.
        averaged = {"epochs": [1, 2], "valid_acc": acc + 0.002 + seed / 10_000, "valid_loss": 0.59}
        (run_dir / "metrics.json").write_text(json.dumps({
            "test_accuracy": acc, "best_valid_acc": acc, "best_valid_loss": 0.6, "best_epoch": 2,
            "valid_acc": averaged["valid_acc"], "valid_loss": averaged["valid_loss"],
            "averaging": [{"epochs": [2], "valid_acc": acc, "valid_loss": 0.6}, averaged],
            "training_seconds": 3.0, "history": history}))

    execute.calls = calls
    return execute


def test_resuming_skips_finished_runs_and_keeps_unfinished_ones_aside(tmp_path):
    spec = write_spec(tmp_path, {"grid": {"hidden_dim": [8, 16, 32]}})
    first = fake_execute()
    sweep_dir, failed = sweep.run_sweep(spec, tmp_path / "runs", execute=first, valid_names=NAMES, log=lambda *a: None)
    assert sorted(first.calls) == ["hidden_dim-16", "hidden_dim-32", "hidden_dim-8"] and failed == []
    (sweep_dir / "hidden_dim-16" / "metrics.json").unlink()  # as if that run had been interrupted
    second = fake_execute()
    sweep.run_sweep(spec, tmp_path / "runs", execute=second, valid_names=NAMES, log=lambda *a: None)
    assert second.calls == ["hidden_dim-16"]
    assert len(list(sweep_dir.glob("hidden_dim-16.incomplete-*"))) == 1


def test_a_failing_run_is_recorded_and_the_others_go_on(tmp_path):
    spec = write_spec(tmp_path, {"grid": {"hidden_dim": [8, 16, 32]}})
    execute, lines = fake_execute(fail={"hidden_dim-16"}), []
    sweep_dir, failed = sweep.run_sweep(spec, tmp_path / "runs", jobs=2, execute=execute, valid_names=NAMES,
                                        log=lines.append)
    assert failed == ["hidden_dim-16"] and len(execute.calls) == 3
    assert "hidden_dim=-1 is not valid" in (sweep_dir / "hidden_dim-16" / "error.txt").read_text()
    assert any("FAILED" in line and "hidden_dim-16" in line for line in lines)
    assert any(line.startswith("[3/3 done, 1 failed, 0 left]") for line in lines)
    with open(sweep_dir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["status"]) for r in rows] == [("hidden_dim-32", "ok"), ("hidden_dim-8", "ok"),
                                                       ("hidden_dim-16", "failed")]


def test_the_cli_exits_non_zero_and_names_failed_runs(tmp_path, monkeypatch, capsys):
    spec = write_spec(tmp_path, {"grid": {"hidden_dim": [8, 16]}})
    monkeypatch.setattr(sweep, "papermill_execute", fake_execute(fail={"hidden_dim-8"}))
    monkeypatch.setattr(sweep, "notebook_parameters", lambda: dict.fromkeys(NAMES))
    assert sweep.main([str(spec), "--runs-dir", str(tmp_path / "runs")]) == 1
    assert "1 run(s) failed: hidden_dim-8" in capsys.readouterr().err


@pytest.mark.notebook
def test_the_smoke_sweep_runs_the_real_notebook_on_the_sample(tmp_path):
    assert "pooling" in sweep.notebook_parameters()  # names come from the notebook's parameters cell
    sweep_dir, failed = sweep.run_sweep(REPO / "sweeps" / "smoke.yaml", tmp_path / "runs", jobs=2)
    assert failed == []
    with open(sweep_dir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == ["bi_pooling-last", "bi_pooling-max"]
    assert all(r["status"] == "ok" and 0 <= float(r["best_valid_acc"]) <= 1 for r in rows)
    assert (sweep_dir / "valid_loss_curves.png").exists() and (sweep_dir / "valid_acc_by_parameter.png").exists()
    assert (sweep_dir / "bi_pooling-max" / "checkpoint" / "weights.safetensors").exists()
    metrics = json.loads((sweep_dir / "bi_pooling-max" / "metrics.json").read_text())
    assert metrics["environment"]["torch_threads"] == max(1, os.cpu_count() // 2)  # two workers share the cores
    assert "| run | pooling | status |" in (sweep_dir / "summary.md").read_text()  # what varies, not the constant


def test_seeds_repeat_every_configuration_and_the_summary_gives_mean_sd_and_the_difference(tmp_path):
    spec = write_spec(tmp_path, {"runs": [{"name": "default"}, {"name": "wide", "hidden_dim": 16},
                                          {"name": "narrow", "hidden_dim": -0.5}], "seeds": [1, 5, 9]})
    sweep_dir, failed = sweep.run_sweep(spec, tmp_path / "runs", execute=fake_execute(), valid_names=NAMES,
                                        log=lambda *a: None)
    assert failed == [] and sorted(p.name for p in sweep_dir.glob("wide_seed-*")) == [
        "wide_seed-1", "wide_seed-5", "wide_seed-9"]
    assert json.loads((sweep_dir / "wide_seed-5" / "metrics.json").read_text())["best_valid_acc"] == 0.5 + 0.16 + 0.005
    with open(sweep_dir / "summary_by_config.csv", newline="") as f:
        rows = {row["config"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["wide", "default", "narrow"]  # by mean validation accuracy
    wide = rows["wide"]
    assert wide["seeds"] == "3"
    assert float(wide["best_valid_acc_mean"]) == pytest.approx(0.665)
    assert float(wide["best_valid_acc_sd"]) == pytest.approx(0.004)  # seeds 1, 5, 9 -> +0.001, +0.005, +0.009
    assert float(wide["valid_acc_vs_reference"]) == pytest.approx(0.16)
    # The configurations share seeds 1, 5, 9, so they are paired by seed: every seed moves both alike here, the
    # per-seed differences are all 0.16 (and -0.005), and their standard error is 0 (unpaired, the seeds' spread
    # of 0.0044 would give sqrt(2 x 0.0044² / 3) = 0.0036 and call narrow's -0.005 within noise).
    assert (wide["method"], wide["pairs"], wide["holm_family"]) == ("paired t", "3", "2")
    assert float(wide["vs_reference_se"]) == pytest.approx(0, abs=1e-12) and float(wide["df"]) == 2
    assert wide["beyond_noise"] == "yes"
    assert float(rows["narrow"]["valid_acc_vs_reference"]) == pytest.approx(-0.005)
    assert float(wide["valid_acc_mean"]) == pytest.approx(0.665 + 0.002 + 0.0005)  # the final model's
    assert rows["narrow"]["beyond_noise"] == "yes"  # -0.5 points on every seed, the seeds' own spread paired away
    assert rows["default"]["valid_acc_vs_reference"] == "" and rows["default"]["holm_family"] == ""  # the reference
    text = (sweep_dir / "summary_by_config.md").read_text()
    assert "Reference configuration: default" in text and "family of the 2 comparisons" in text
    assert (sweep_dir / "valid_acc_by_config.png").exists()


def test_the_averaging_summary_pairs_each_window_with_the_same_runs_best_epoch(tmp_path):
    spec = write_spec(tmp_path, {"runs": [{"name": "default"}, {"name": "wide", "hidden_dim": 16}], "seeds": [1, 5, 9]})
    sweep_dir, _ = sweep.run_sweep(spec, tmp_path / "runs", execute=fake_execute(), valid_names=NAMES,
                                   log=lambda *a: None)
    with open(sweep_dir / "averaging_by_config.csv", newline="") as f:
        rows = {(row["config"], row["epochs_averaged"]): row for row in csv.DictReader(f)}
    assert sorted(rows) == [("(all)", "1"), ("(all)", "2"), ("default", "1"), ("default", "2"), ("wide", "1"),
                            ("wide", "2")]
    two = rows[("wide", "2")]
    assert two["runs"] == "3" and float(two["valid_acc_mean"]) == pytest.approx(0.665 + 0.0025)
    # Paired differences 0.0021, 0.0025, 0.0029: mean 0.0025, sd 0.0004; unpaired, the seeds' spread
    # (sd 0.004) would hide them.
    assert float(two["acc_vs_one_epoch"]) == pytest.approx(0.0025)
    assert float(two["acc_vs_one_epoch_se"]) == pytest.approx(0.0004 / 3**0.5)
    # Holm over the table's six differences (window 2 of default, wide and (all); accuracy and loss): by hand,
    # the three losses (0.59 against 0.6 every time, no spread) have p = 0; (all)'s accuracy, six runs, comes
    # next; wide's and default's (the same differences), t = 0.0025 / (0.0004 / sqrt 3) = 10.83 with 2 df,
    # p = 1 - t / sqrt(t² + 2) = 0.0084 each, are multiplied by 2 and 1: both adjusted to 2 p = 0.017.
    t = 0.0025 / (0.0004 / 3**0.5)
    p = 1 - t / (t**2 + 2) ** 0.5
    assert p == pytest.approx(0.00843, abs=1e-5)
    assert float(two["acc_p"]) == pytest.approx(p) and float(two["acc_p_holm"]) == pytest.approx(2 * p)
    assert float(two["loss_p"]) == 0 and two["holm_family"] == "6"
    assert two["acc_beyond_noise"] == "yes" and two["loss_beyond_noise"] == "yes"
    assert rows[("(all)", "2")]["runs"] == "6" and rows[("default", "1")]["acc_vs_one_epoch"] == ""


def test_an_edit_must_find_its_text_exactly_once(tmp_path):
    copy = sweep.edited_notebook({"find": "return helpers.reverse_padded(x, lengths)", "replace": "return x.flip(1)"},
                                 tmp_path / "edited.ipynb")
    sources = ["".join(c["source"]) for c in json.loads(copy.read_text())["cells"] if c["cell_type"] == "code"]
    assert sum("return x.flip(1)" in s for s in sources) == 1
    assert not any("return helpers.reverse_padded(x, lengths)" in s for s in sources)
    for text in ("no such code anywhere", "helpers."):
        with pytest.raises(sweep.SweepError, match="it must occur once"):
            sweep.edited_notebook({"find": text, "replace": "x"}, tmp_path / "bad.ipynb")


@pytest.mark.notebook
def test_every_exercise_runs_on_the_sample(tmp_path):
    """The exercises' sweep file, with its full-data base swapped for tiny settings on the sample.

    Every exercise's change runs, in six runs rather than eleven (a run's fixed cost, the kernel, the imports and
    the figures, is most of a tiny run's): each of exercise 1's five runs (a cell, a pooling) also carries one
    other exercise's change, which sets neither; the baseline runs alone."""
    name, runs = "exercises", ["baseline", "ex1-lstm-last", "ex1-gru-max", "ex1-gru-last", "ex1-rnn-max",
                               "ex1-rnn-last", "ex2-no-pretrained-vectors", "ex3-max-length-400",
                               "ex3-max-length-1200", "ex4-one-direction", "ex6-padding-first"]
    spec = yaml.safe_load((REPO / "sweeps" / f"{name}.yaml").read_text())
    # the exercises' size the lesson's route, its parameters cell and its answers name
    assert spec["base"] == EXERCISE_SIZE and spec.pop("seeds") == [42, 1, 2]
    spec["base"] = {"use_sample": True, "train_size": 100, "valid_size": 12, "test_size": 50, "n_epochs": 1,
                    "embedding_dim": 8, "hidden_dim": 8, "max_vocab_size": 2000, "ig_steps": 8}
    assert [run["name"] for run in spec["runs"]] == runs
    # Exercise 1's run, and the exercise whose change it carries too (exercise 6's edit on a run that reads
    # both ways, since it changes the backward direction's reversal).
    carried = {"ex1-lstm-last": "ex2-no-pretrained-vectors", "ex1-gru-max": "ex3-max-length-400",
               "ex1-gru-last": "ex3-max-length-1200", "ex1-rnn-max": "ex6-padding-first",
               "ex1-rnn-last": "ex4-one-direction"}
    assert sorted(["baseline", *carried, *carried.values()]) == sorted(runs)  # each exercise in one run
    by_name = {run["name"]: run for run in spec["runs"]}
    spec["runs"] = [by_name["baseline"]]
    for carrier, rider in carried.items():
        change = {key: value for key, value in by_name[rider].items() if key != "name"}
        assert change and not set(change) & set(by_name[carrier]), (carrier, rider)
        spec["runs"].append({**by_name[carrier], **change, "name": f"{carrier}.{rider}"})
    # a copy outside sweeps/: its edits (exercise 6) run because the test says so
    sweep_dir, failed = sweep.run_sweep(write_spec(tmp_path, spec, name), tmp_path / "runs", jobs=2,
                                        allow_code_edits=True)
    assert failed == []
    for run in spec["runs"]:
        metrics = json.loads((sweep_dir / run["name"] / "metrics.json").read_text())
        assert metrics["n_train_reviews"] == 100 and metrics["n_valid_reviews"] == 12, run
        assert sum(map(sum, metrics["test_confusion_matrix"])) == 50, run
        carrier = run["name"].split(".")[0]
        assert metrics["config"]["model"]["cell"] == ("gru" if "gru" in carrier else "rnn" if "rnn" in carrier
                                                      else "lstm")
        for key, value in run.items():  # every change the run carries is the one its run used
            if key not in ("name", "edit"):
                assert metrics["params"][key] == value, (run["name"], key)
        if run.get("pretrain_embeddings") is False:
            assert metrics["pretraining_seconds"] == 0, run
    edited = json.loads((sweep_dir / "ex1-rnn-max.ex6-padding-first" / "sentiment_lstm.ipynb").read_text())
    assert any("return x.flip(1)" in "".join(c["source"]) for c in edited["cells"])


def test_the_exercises_size_is_the_same_in_the_lesson_the_makefile_and_the_sweep():
    """`make exercise`, the lesson's route and its parameters cell give sweeps/exercises.yaml's base."""
    make_line = next(line for line in (REPO / "Makefile").read_text().splitlines()
                     if line.startswith("EXERCISE_PARAMS :="))
    words = make_line.split(":=", 1)[1].split()
    assert dict(zip(words[1::3], map(int, words[2::3]), strict=True)) == EXERCISE_SIZE and set(words[::3]) == {"-p"}
    lesson = json.loads((REPO / "notebooks" / "sentiment_lstm.ipynb").read_text())
    sources = {cell.get("id"): "".join(cell["source"]) for cell in lesson["cells"]}
    # the 50-minute route's live run is `make class`'s class_live.ipynb, prepared with EXERCISE_PARAMS (its values:
    # tests/test_notebook.py's test of make class)
    assert "`make class`" in sources["cell-00"] and "class_live.ipynb" in sources["cell-00"]
    assert (REPO / "Makefile").read_text().count("notebooks/class_live.ipynb -k $(KERNEL) $(EXERCISE_PARAMS)") == 1
    for name, value in EXERCISE_SIZE.items():
        assert re.search(rf"^{name} = .*\(exercises: {value}\)$", sources["cell-03"], flags=re.M), name



def test_the_lessons_exercise_answers_are_the_table_of_the_committed_exercise_runs():
    """The answers table in the lesson is what sweeps/exercise_answers.py makes of the committed summary."""
    import exercise_answers

    table = exercise_answers.answers_table(exercise_answers.read_runs(EXERCISE_RUNS))
    lesson = json.loads((REPO / "notebooks" / "sentiment_lstm.ipynb").read_text())
    assert table in "".join(lesson["cells"][-1]["source"])
    assert table.count("\n") >= 4  # a header, its rule and at least three configurations

# --------------------------------------------------------------------------- scheduler address and TLS


@pytest.fixture
def cert_files(tmp_path):
    """Three files standing for the CA, the certificate and its key (only their presence is checked here)."""
    files = {"tls_ca_file": tmp_path / "ca.pem", "tls_cert": tmp_path / "cluster.pem",
             "tls_key": tmp_path / "cluster-key.pem"}
    for path in files.values():
        path.write_text("-----BEGIN PLACEHOLDER-----\n")
    return {name: str(path) for name, path in files.items()}


def test_a_tls_scheduler_gets_a_security_with_the_clusters_certificates(cert_files):
    security = sweep.scheduler_security("tls://10.1.2.3:8786", **cert_files)
    assert security.require_encryption is True
    assert (security.tls_ca_file, security.tls_client_cert, security.tls_client_key) == (
        cert_files["tls_ca_file"], cert_files["tls_cert"], cert_files["tls_key"])
    assert sweep.scheduler_security("tcp://127.0.0.1:8786") is None


@pytest.mark.parametrize("scheduler, given, message", [
    ("tls://host:8786", (), "is tls://, which needs the cluster's certificate files: --tls-ca-file, --tls-cert "
                            "missing"),
    ("tls://host:8786", ("tls_ca_file", "tls_key"), "--tls-cert missing"),
    ("tcp://host:8786", ("tls_ca_file", "tls_cert", "tls_key"),
     "--tls-ca-file, --tls-cert, --tls-key given, but the scheduler address tcp://host:8786 is plain tcp://"),
    ("host:8786", ("tls_cert",), "--tls-cert given, but the scheduler address host:8786 is plain tcp://"),
    ("ws://host:8786", (), "must start with tls://"),
])
def test_scheduler_options_that_do_not_fit_are_refused_by_name(cert_files, scheduler, given, message):
    with pytest.raises(sweep.SweepError, match=re.escape(message)):
        sweep.scheduler_security(scheduler, **{name: cert_files[name] for name in given})


def test_a_missing_certificate_file_is_named(cert_files, tmp_path):
    with pytest.raises(sweep.SweepError, match=re.escape(f"--tls-key {tmp_path / 'nope.pem'}: no such file")):
        sweep.scheduler_security("tls://host:8786", **{**cert_files, "tls_key": str(tmp_path / "nope.pem")})


@pytest.mark.parametrize("scheduler, warns", [
    ("tcp://10.0.0.7:8786", True), ("tcp://node12.cluster:8786", True), ("node12:8786", True),
    ("tcp://127.0.0.1:8786", False), ("tcp://localhost:8786", False), ("tcp://[::1]:8786", False),
    ("tls://10.0.0.7:8786", False),
])
def test_a_plain_tcp_scheduler_on_another_host_gets_a_warning(scheduler, warns):
    warning = sweep.plain_tcp_warning(scheduler)
    assert (warning is not None) == warns
    if warns:
        assert "must stay on a trusted network or on localhost" in warning
        assert "anyone who can reach it can run code on every worker" in warning


def test_the_cli_passes_the_certificates_to_the_dask_client_and_warns_about_plain_tcp(tmp_path, monkeypatch, capsys,
                                                                                      cert_files):
    spec = write_spec(tmp_path, {"grid": {"hidden_dim": [8]}})
    monkeypatch.setattr(sweep, "notebook_parameters", lambda: dict.fromkeys(NAMES))
    calls = []
    monkeypatch.setattr(sweep, "dask_runs", lambda scheduler, *args, security=None, **kwargs:
                        calls.append((scheduler, security)) or [])
    runs = ["--runs-dir", str(tmp_path / "runs")]
    assert sweep.main([str(spec), *runs, "--scheduler", "tls://10.0.0.7:8786", "--tls-ca-file",
                       cert_files["tls_ca_file"], "--tls-cert", cert_files["tls_cert"], "--tls-key",
                       cert_files["tls_key"]]) == 0
    (scheduler, security), = calls
    assert scheduler == "tls://10.0.0.7:8786" and security.tls_client_cert == cert_files["tls_cert"]
    assert "warning" not in capsys.readouterr().out
    calls.clear()
    assert sweep.main([str(spec), *runs, "--scheduler", "tcp://10.0.0.7:8786"]) == 0
    assert calls == [("tcp://10.0.0.7:8786", None)]
    assert "must stay on a trusted network or on localhost" in capsys.readouterr().out
    for arguments, message in [
        (["--scheduler", "tls://10.0.0.7:8786"], "--tls-ca-file, --tls-cert missing"),
        (["--scheduler", "tcp://10.0.0.7:8786", "--tls-cert", cert_files["tls_cert"]], "is plain tcp://"),
        (["--tls-ca-file", cert_files["tls_ca_file"]], "--tls-ca-file need a tls:// --scheduler"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            sweep.main([str(spec), *runs, *arguments])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert len(calls) == 1  # none of the refused ones went on to the cluster


def make_dry_run(*arguments):
    """What `make -n` would run, printed alone: when make itself runs the tests, the make below
    inherits MAKELEVEL and would add "Leaving directory" lines, so the environment drops it."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", "-n", *arguments], cwd=REPO, env=environment,
                          capture_output=True, text=True, check=True).stdout


def test_make_sweep_passes_scheduler_and_certificates_through():
    done = make_dry_run("sweep", "SWEEP=sweeps/smoke.yaml", "SCHEDULER=tls://host:8786",
                        "TLS_CA_FILE=certs/ca.pem", "TLS_CERT=certs/cluster.pem", "TLS_KEY=certs/cluster-key.pem")
    command = " ".join(done.split("sweeps/sweep.py", 1)[1].replace("\\\n", " ").split())
    assert command == ('sweeps/smoke.yaml --jobs 1 --scheduler tls://host:8786 --tls-ca-file "certs/ca.pem" '
                       '--tls-cert "certs/cluster.pem" --tls-key "certs/cluster-key.pem"')
    plain = make_dry_run("sweep", "SWEEP=sweeps/smoke.yaml")
    assert "--tls" not in plain and "--scheduler" not in plain


# --------------------------------------------------------------------------- checkpoints from workers


class CreatesAFile:
    """Unpickling this calls open(marker, "w"): code from the file runs, and leaves a trace."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_run_files(marker, weights_name):
    """What a malicious worker could send for a run: plausible results, and a checkpoint that is a crafted pickle."""
    return {"metrics.json": json.dumps({"test_accuracy": 0.9, "best_valid_acc": 0.9, "best_valid_loss": 0.3,
                                        "best_epoch": 1, "training_seconds": 1.0,
                                        "history": {"epoch": [1], "valid_loss": [0.3], "valid_acc": [0.9]}}).encode(),
            f"checkpoint/{weights_name}": pickle.dumps({"embedding.weight": CreatesAFile(marker)}),
            "checkpoint/vocab.json": b'["<pad>", "<unk>", "good"]', "checkpoint/config.json": b'{"max_length": 20}'}


def test_the_crafted_pickle_runs_code_when_unpickled(tmp_path):
    # Guards the test below: its payload would leave the marker if anything unpickled it.
    pickle.loads(malicious_run_files(tmp_path / "marker", "weights.pt")["checkpoint/weights.pt"])  # noqa: S301
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("weights_name, error, message", [
    ("weights.pt", helpers.UntrustedCheckpointError, "holds weights.pt, torch's pickle format"),
    ("weights.safetensors", ValueError, "weights.safetensors is not a readable safetensors file"),
])
def test_a_pickled_checkpoint_fetched_from_a_worker_is_refused_and_never_unpickled(tmp_path, monkeypatch, weights_name,
                                                                                  error, message):
    """A worker's files land in runs/<sweep>/<run>/ as sent; loading the checkpoint refuses the pickle."""
    marker = tmp_path / "marker"
    files = malicious_run_files(marker, weights_name)
    spec = write_spec(tmp_path, {"runs": [{"name": "evil"}]}, name="fetched")

    def malicious_dask_runs(scheduler, sweep_dir, todo, fetch_checkpoints=False, log=print, **kwargs):
        assert fetch_checkpoints
        for name in todo:  # as dask_runs does with a worker's result
            sweep.land(sweep_dir, name, files)
            yield name, None, 1.0

    monkeypatch.setattr(sweep, "dask_runs", malicious_dask_runs)
    sweep_dir, failed = sweep.run_sweep(spec, tmp_path / "runs", valid_names=NAMES, log=lambda *a: None,
                                        scheduler="tcp://127.0.0.1:8786", fetch_checkpoints=True)
    checkpoint = sweep_dir / "evil" / "checkpoint"
    assert failed == [] and (checkpoint / weights_name).read_bytes() == files[f"checkpoint/{weights_name}"]
    with pytest.raises(error, match=re.escape(message)):
        helpers.load_checkpoint(checkpoint)
    # Summaries read metrics.json only: rewriting them leaves the checkpoint alone too.
    assert sweep.main([str(spec), "--runs-dir", str(tmp_path / "runs"), "--summary-only"]) == 0
    assert not marker.exists()


def test_the_sweep_runner_itself_never_unpickles_anything():
    source = (REPO / "sweeps" / "sweep.py").read_text(encoding="utf-8")
    assert not re.search(r"torch\.load|pickle\.loads?\(|load_checkpoint|read_weights|joblib|numpy\.load", source)


def test_the_lessons_prose_about_the_exercises_is_the_committed_runs():
    """The numbers the lesson's text quotes from the exercise runs (the gates section and the answers)."""
    import exercise_answers
    import stats

    runs = exercise_answers.read_runs(EXERCISE_RUNS)
    acc = {config: {seed: float(row["best_valid_acc"]) for seed, row in by_seed.items()}
           for config, by_seed in runs.items()}

    def paired(config, reference="baseline"):
        """The paired comparison the answers table makes, and whether every seed is behind."""
        diff = stats.paired_by_seed(acc[config], acc[reference], scale=100, what=config)
        return diff, all(acc[config][s] < acc[reference][s] for s in acc[config])

    lesson = json.loads((REPO / "notebooks" / "sentiment_lstm.ipynb").read_text())
    text = " ".join(" ".join("".join(c["source"]) for c in lesson["cells"] if c["cell_type"] == "markdown").split())
    (last, last_every), (pooled, max_every) = paired("ex1-rnn-last", "ex1-lstm-last"), paired("ex1-rnn-max")
    assert last_every and max_every and not last.beyond_noise and not pooled.beyond_noise
    assert "Behind the default on every seed: the plain RNN with either pooling" in text
    lstm_last, every = paired("ex1-lstm-last")
    assert every and f"the LSTM loses {-lstm_last.mean:.1f} points" in text
    no_vectors, every = paired("ex2-no-pretrained-vectors")
    assert every and f"Lower on every seed, by {-no_vectors.mean:.1f} points" in text
    assert not any(paired(config)[0].beyond_noise for config in set(acc) - {"baseline"})  # "nothing beyond noise"
    spread = max(100 * (max(by_seed.values()) - min(by_seed.values())) for by_seed in acc.values())
    assert f"The seeds move a run by up to {spread:.0f} points" in text
    rows = [row for by_seed in runs.values() for row in by_seed.values()]
    assert sum(row["best_epoch"] != row["epochs"] for row in rows) == 3
    assert "in all but three runs the last epoch was the best" in text
    assert f"one seed hardly learned: {min(acc['ex1-rnn-max'].values()):.4f}" in text


# --------------------------------------------------------------------------- files from others (issue 32)
@pytest.mark.parametrize("spec, message", [
    ({"name": "..", "runs": [{"name": "data", "n_epochs": 1}]}, r"name: '\.\.' is no folder name"),
    ({"name": ".", "grid": {"hidden_dim": [8]}}, r"name: '\.' is no folder name"),
    ({"name": "", "grid": {"hidden_dim": [8]}}, r"name: '' is no folder name"),
    ({"name": "a/../..", "grid": {"hidden_dim": [8]}}, "name: 'a/../..' holds a path separator"),
    ({"runs": [{"name": ".", "n_epochs": 1}]}, r"runs\[0\].name: '\.' is no folder name"),
    ({"runs": [{"name": "ok"}, {"name": "..", "n_epochs": 1}]}, r"runs\[1\].name: '\.\.' is no folder name"),
    ({"runs": [{"name": "-.-"}]}, r"runs\[0\].name: '-\.-' is no folder name"),
    ({"runs": [{"name": "..\\evil"}]}, "runs.0..name: .* holds a path separator"),
    ({"grid": {"pooling": ["max", "../x"]}}, r"grid.pooling\[1\]: '\.\./x' holds a path separator"),
    ({"grid": {"pooling": ["x" * 101]}}, r"grid.pooling\[0\]: .* is 101 characters long"),
    ({"grid": {"hidden_dim": list(range(100)), "lr": list(range(100))}}, "would expand to 10,000 runs"),
    ({"grid": {"hidden_dim": list(range(10))}, "runs": [{"name": f"r{i}"} for i in range(30)], "seeds": [1, 2, 3, 4,
                                                                                                             5, 6, 7]},
     "would expand to 2,100 runs"),
])
def test_names_that_would_leave_the_sweeps_folder_and_huge_grids_are_refused(tmp_path, spec, message):
    runs_dir = tmp_path / "repo" / "runs"
    runs_dir.mkdir(parents=True)
    (tmp_path / "repo" / "data").mkdir()
    calls = []
    with pytest.raises(sweep.SweepError, match=message):
        sweep.run_sweep(write_spec(tmp_path, spec), runs_dir, execute=lambda *a: calls.append(a),
                        valid_names=NAMES, log=lambda *a: None)
    assert calls == [] and list(runs_dir.iterdir()) == [] and [p.name for p in (tmp_path / "repo").iterdir()] in (
        ["runs", "data"], ["data", "runs"])


def test_a_sweep_never_moves_or_writes_through_a_link_out_of_its_folder(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    sweep_dir = tmp_path / "runs" / "demo"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "hidden_dim-8").symlink_to(outside)
    spec = write_spec(tmp_path, {"grid": {"hidden_dim": [8]}})
    execute = fake_execute()
    _, failed = sweep.run_sweep(spec, tmp_path / "runs", execute=execute, valid_names=NAMES, log=lambda *a: None)
    assert failed == ["hidden_dim-8"] and execute.calls == []
    assert [p.name for p in outside.iterdir()] == ["keep.txt"] and (sweep_dir / "hidden_dim-8").is_symlink()


def test_a_yaml_alias_is_refused_before_it_expands(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)) + "grid: {pooling: *i}\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    with pytest.raises(sweep.SweepError, match=r"the YAML alias \*a .* is refused"):
        sweep.run_sweep(path, tmp_path / "runs", execute=lambda *a: None, valid_names=NAMES, log=lambda *a: None)
    assert sweep.main([str(path), "--runs-dir", str(tmp_path / "runs"), "--summary-only"]) == 2
    assert not (tmp_path / "runs").exists()


EDIT_SPEC = {"runs": [{"name": "evil", "edit": {"find": "import copy", "replace": "import copy\nimport os"}}]}


def test_a_sweep_file_with_edits_outside_the_checkouts_sweeps_runs_only_when_the_user_allows_code(tmp_path,
                                                                                                  monkeypatch,
                                                                                                  capsys):
    spec = write_spec(tmp_path, EDIT_SPEC, name="from-a-colleague")
    execute = fake_execute()
    with pytest.raises(sweep.SweepError, match=r"run\(s\) evil carry an 'edit'.*--allow-code-edits"):
        sweep.run_sweep(spec, tmp_path / "runs", execute=execute, valid_names=NAMES, log=lambda *a: None)
    assert execute.calls == [] and not (tmp_path / "runs").exists()
    monkeypatch.setattr(sweep, "papermill_execute", execute)
    monkeypatch.setattr(sweep, "notebook_parameters", lambda: dict.fromkeys(NAMES))
    assert sweep.main([str(spec), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "carry an 'edit'" in capsys.readouterr().err and execute.calls == []
    assert sweep.main([str(spec), "--runs-dir", str(tmp_path / "runs"), "--allow-code-edits"]) == 0
    assert execute.calls == ["evil"]


def test_the_committed_sweep_files_with_edits_may_run_them():
    committed = sorted(path.name for path in (REPO / "sweeps").glob("*.yaml")
                       if any("edit" in run for run in yaml.safe_load(path.read_text()).get("runs") or []))
    assert committed == ["adversarial_seeds.yaml", "averaging_seeds.yaml", "ensemble_seeds.yaml", "exercises.yaml"]
    for name in committed:
        path = REPO / "sweeps" / name
        sweep.check_code_edits(sweep.read_sweep_file(path), path)  # raises if refused


def test_the_unpaired_verdict_uses_welchs_degrees_of_freedom_where_the_spreads_differ(tmp_path):
    """Issue 33: with equal spreads no verdict told Welch's degrees of freedom from n - 1's.

    Here the reference's seeds spread by 0.001 and the other's by 0.002: Welch gives 2.94 degrees of freedom
    (t = 3.22), n - 1 would give 2 (t = 4.30), and the difference is 3.87 standard errors: beyond noise only
    with Welch's.
    """
    accuracies = {"default": [0.600, 0.601, 0.602], "wide": [0.604, 0.606, 0.608]}
    seeds = {"default": (1, 2, 3), "wide": (4, 5, 6)}  # no seed shared: the comparison is unpaired (issue 34)
    runs, rows = {}, []
    for config, values in accuracies.items():
        for seed, value in zip(seeds[config], values, strict=True):
            name = f"{config}_seed-{seed}"
            runs[name] = {"seed": seed, **({"hidden_dim": 16} if config == "wide" else {})}
            rows.append({"run": name, "status": "ok", "valid_acc": value})
    summary = {row["config"]: row for row in sweep.summarise_by_configuration(tmp_path, runs, rows, ["hidden_dim"])}
    wide = summary["wide"]
    ratio = wide["valid_acc_vs_reference"] / wide["vs_reference_se"]
    df = stats.welch_degrees_of_freedom(0.002, 3, 0.001, 3)
    assert df == pytest.approx(2.941, abs=1e-3) and ratio == pytest.approx(3.873, abs=1e-3)
    assert stats.t_quantile(df) < ratio < stats.t_quantile(3 - 1)  # the two rules disagree here
    assert (wide["method"], wide["pairs"], wide["df"]) == ("Welch t", "", pytest.approx(df))
    assert wide["beyond_noise"] == "yes" and wide["holm_family"] == 1


# --------------------------------------------------------------------------- pairing and many comparisons (issue 34)
REFERENCE = [0.800, 0.810, 0.820]  # seeds 1, 2, 3
OTHERS = {  # per-seed differences from the reference, and t = mean / (sd / sqrt 3) with 2 df
    "a": [0.806, 0.813, 0.829],  # +0.006, +0.003, +0.009: mean 0.006, sd 0.003, t = 2 sqrt 3
    "b": [0.810, 0.821, 0.832],  # +0.010, +0.011, +0.012: mean 0.011, sd 0.001, t = 11 sqrt 3
    "c": [0.804, 0.816, 0.828],  # +0.004, +0.006, +0.008: mean 0.006, sd 0.002, t = 3 sqrt 3
}


def seeded_rows(accuracies, seeds):
    """(runs, rows) as summarise gives them to summarise_by_configuration, one run per config and seed."""
    runs, rows = {}, []
    for config, values in accuracies.items():
        for seed, value in zip(seeds[config], values, strict=True):
            name = f"{config}_seed-{seed}"
            runs[name] = {"seed": seed, **({"cell": config} if config != "default" else {})}
            rows.append({"run": name, "status": "ok", "valid_acc": value})
    return runs, rows


def test_the_by_configuration_summary_pairs_by_seed_and_judges_its_family_by_holms_rule(tmp_path):
    """A hand computation. With 2 df the t test's two-sided p is 1 - t / sqrt(t² + 2) = 1 - sqrt(t² / (t² + 2)):
    a: t² = 12, p = 1 - sqrt(12/14) = 0.0742; b: t² = 363, p = 1 - sqrt(363/365) = 0.00274; c: t² = 27,
    p = 1 - sqrt(27/29) = 0.0351. Holm over the three: sorted b, c, a, times 3, 2, 1, running maximum:
    b 0.0082 (beyond noise), c 0.0702 (within: beyond alone, at 0.0351), a 0.0742 (within).
    """
    accuracies = {"default": REFERENCE, **OTHERS}
    runs, rows = seeded_rows(accuracies, dict.fromkeys(accuracies, (1, 2, 3)))
    summary = {r["config"]: r for r in sweep.summarise_by_configuration(tmp_path, runs, rows, ["cell"])}
    p = {"a": 1 - (12 / 14) ** 0.5, "b": 1 - (363 / 365) ** 0.5, "c": 1 - (27 / 29) ** 0.5}
    holm = {"b": 3 * p["b"], "c": 2 * p["c"], "a": p["a"]}  # each above the one before: no running maximum needed
    assert holm["b"] < holm["c"] < holm["a"]
    for config, (mean, se) in {"a": (0.006, 0.003), "b": (0.011, 0.001), "c": (0.006, 0.002)}.items():
        row = summary[config]
        assert row["valid_acc_vs_reference"] == pytest.approx(mean) and row["vs_reference_se"] == pytest.approx(
            se / 3**0.5)
        assert (row["method"], row["pairs"], row["df"], row["holm_family"]) == ("paired t", 3, 2, 3)
        assert row["p"] == pytest.approx(p[config]) and row["p_holm"] == pytest.approx(holm[config])
    assert [summary[c]["beyond_noise"] for c in "abc"] == ["no", "yes", "no"]
    assert summary["c"]["p"] < 0.05  # c alone would be beyond noise: the family's size turns it
    with open(tmp_path / "summary_by_config.csv", newline="") as f:
        written = {row["config"]: row for row in csv.DictReader(f)}
    assert float(written["c"]["p_holm"]) == pytest.approx(holm["c"]) and written["c"]["holm_family"] == "3"
    assert written["b"]["method"] == "paired t" and written["default"]["beyond_noise"] == ""


def test_pairing_by_seed_and_welch_give_different_verdicts_on_the_same_accuracies(tmp_path):
    """b's accuracies against the reference's: shared seeds, paired, t = 19.1 (p = 0.0027): beyond noise.
    The same values under seeds the reference never ran: Welch's t, the seeds' spread (sd 0.011 and 0.010)
    in the standard error, sqrt((0.011² + 0.010²) / 3) = 0.0086, and 0.011 / 0.0086 = 1.28 SE: within noise.
    """
    accuracies = {"default": REFERENCE, "b": OTHERS["b"]}
    paired_summary = sweep.summarise_by_configuration(tmp_path, *seeded_rows(accuracies, {"default": (1, 2, 3),
                                                                                         "b": (1, 2, 3)}), ["cell"])
    welch_summary = sweep.summarise_by_configuration(tmp_path, *seeded_rows(accuracies, {"default": (1, 2, 3),
                                                                                        "b": (4, 5, 6)}), ["cell"])
    paired_b, welch_b = (next(r for r in s if r["config"] == "b") for s in (paired_summary, welch_summary))
    assert (paired_b["method"], paired_b["beyond_noise"]) == ("paired t", "yes")
    assert (welch_b["method"], welch_b["pairs"], welch_b["beyond_noise"]) == ("Welch t", "", "no")
    se = ((0.011**2 + 0.010**2) / 3) ** 0.5
    assert welch_b["vs_reference_se"] == pytest.approx(se) and welch_b["valid_acc_vs_reference"] == pytest.approx(
        0.011)
    assert welch_b["df"] == pytest.approx(stats.welch_degrees_of_freedom(0.011, 3, 0.010, 3))
    assert welch_b["p"] == pytest.approx(2 * scipy_stats.t.sf(0.011 / se, welch_b["df"]))
    assert "paired by seed" in (tmp_path / "summary_by_config.md").read_text()


def test_runs_that_share_only_some_seeds_are_paired_over_those(tmp_path):
    """b's seed 3 failed: b ran seeds 1 and 2, the reference 1, 2, 3; paired over 1 and 2 (+0.010, +0.011)."""
    runs, rows = seeded_rows({"default": REFERENCE, "b": OTHERS["b"]}, {"default": (1, 2, 3), "b": (1, 2, 3)})
    rows[-1]["status"] = "failed"
    b = next(r for r in sweep.summarise_by_configuration(tmp_path, runs, rows, ["cell"]) if r["config"] == "b")
    assert (b["method"], b["pairs"], b["df"], b["seeds"]) == ("paired t", 2, 1, 2)
    assert b["valid_acc_vs_reference"] == pytest.approx(0.0105) and b["vs_reference_se"] == pytest.approx(0.0005)


def test_test_accuracy_is_left_out_of_the_summaries_unless_asked_for(tmp_path, monkeypatch):
    spec = write_spec(tmp_path, {"runs": [{"name": "default"}, {"name": "wide", "hidden_dim": 16}], "seeds": [1, 5]})
    sweep_dir, _ = sweep.run_sweep(spec, tmp_path / "runs", execute=fake_execute(), valid_names=NAMES,
                                   log=lambda *a: None)
    files = ("summary.csv", "summary.md", "summary_by_config.csv", "summary_by_config.md")

    def headers():  # each file's header: its first line, or in summary_by_config.md the table's, after a note
        return {name: (sweep_dir / name).read_text().splitlines()[2 if name == "summary_by_config.md" else 0]
                for name in files}

    assert not any("test" in header for header in headers().values())
    assert "test accuracy is shown with --show-test" in (sweep_dir / "summary_by_config.md").read_text()
    monkeypatch.setattr(sweep, "notebook_parameters", lambda: dict.fromkeys(NAMES))
    assert sweep.main([str(spec), "--runs-dir", str(tmp_path / "runs"), "--summary-only", "--show-test"]) == 0
    shown = headers()
    assert "test_accuracy" in shown["summary.csv"].split(",") and "| test_accuracy |" in shown["summary.md"]
    assert {"test_accuracy_mean", "test_accuracy_sd"} <= set(shown["summary_by_config.csv"].split(","))
    assert "test_accuracy_mean" in shown["summary_by_config.md"]
    with open(sweep_dir / "summary.csv", newline="") as f:
        assert {float(r["test_accuracy"]) for r in csv.DictReader(f) if r["run"] == "wide_seed-5"} == {0.665}
    assert sweep.main([str(spec), "--runs-dir", str(tmp_path / "runs"), "--summary-only"]) == 0
    assert not any("test" in header for header in headers().values())  # off again: the default
