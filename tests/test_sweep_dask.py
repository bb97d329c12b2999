"""Sweeps on a real Dask cluster: a scheduler and two workers on localhost, each its own process.

The first test runs sample sweeps through the cluster; the second kills a worker in the middle of
a run and checks that the sweep still finishes whole. Every process is stopped at the end, even
when a test fails.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sweeps"))

import sweep  # noqa: E402

DASK = Path(sys.executable).with_name("dask")
TINY = {"use_sample": True, "n_models": 1, "n_epochs": 1, "embedding_dim": 8, "hidden_dim": 8,
        "max_vocab_size": 2000, "max_length": 200, "ig_steps": 8}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command, log):
    # Its own process group, so that killing it also kills the papermill run and kernel it started.
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process):
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and two one-thread workers on free ports: (address, {worker address: process})."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 (closed below, after the processes)
    processes = [start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                        "--no-dashboard"], log)]
    workers = {}
    try:
        for _ in range(2):
            worker_address = f"tcp://127.0.0.1:{free_port()}"
            workers[worker_address] = start([str(DASK), "worker", address, "--nthreads", "1", "--no-nanny",
                                             "--no-dashboard", "--listen-address", worker_address], log)
            processes.append(workers[worker_address])
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, workers
    finally:
        for process in processes:
            stop(process)
        log.close()


def write_sweep(tmp_path, name, runs):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": TINY, "runs": runs}), encoding="utf-8")
    return path


def test_a_sweep_runs_on_dask_workers_and_lands_like_a_local_one(tmp_path, cluster):
    address, _ = cluster
    spec = write_sweep(tmp_path, "on-dask", [{"name": "bi"}, {"name": "uni", "bidirectional": False},
                                             {"name": "broken", "pooling": "median"}])
    lines = []
    sweep_dir, failed = sweep.run_sweep(spec, tmp_path / "runs", scheduler=address, log=lines.append)
    assert failed == ["broken"]
    error = (sweep_dir / "broken" / "error.txt").read_text()
    assert "pooling='median'" in error  # the notebook's own message, brought back from the worker
    for name in ("bi", "uni"):
        run = sweep_dir / name
        assert sweep.is_complete(run)
        assert (run / "sentiment_lstm.ipynb").is_file() and (run / "figures" / "4_loss_curves.png").is_file()
        assert not (run / "checkpoint").exists()  # only with fetch_checkpoints
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.startswith(".")) == []
    assert {line.split(": ran on ")[1] for line in lines if ": ran on " in line} <= set(cluster[1])
    summary = (sweep_dir / "summary.csv").read_text()
    assert "bi," in summary and "broken" in summary

    # Started again: finished runs are skipped, and a checkpoint comes back when asked for.
    lines.clear()
    spec = write_sweep(tmp_path, "on-dask", [{"name": "bi"}, {"name": "uni", "bidirectional": False},
                                             {"name": "longer", "max_length": 300}])
    sweep_dir, failed = sweep.run_sweep(spec, tmp_path / "runs", scheduler=address, log=lines.append,
                                        fetch_checkpoints=True)
    assert failed == []
    assert "3 runs, 2 already complete, 1 to run" in lines[0]
    assert (sweep_dir / "longer" / "checkpoint").is_dir() and not (sweep_dir / "bi" / "checkpoint").exists()


def test_a_worker_killed_in_the_middle_of_a_run_does_not_lose_the_sweep(tmp_path, cluster):
    from distributed import Client

    address, workers = cluster
    spec = write_sweep(tmp_path, "killed", [{"name": "first"}, {"name": "second", "bidirectional": False}])
    outcome, lines = {}, []
    thread = threading.Thread(target=lambda: outcome.update(result=sweep.run_sweep(
        spec, tmp_path / "runs", scheduler=address, log=lines.append)))
    thread.start()
    killed = None
    with Client(address, timeout="30s") as client:
        deadline = time.monotonic() + 60
        while killed is None and time.monotonic() < deadline:
            busy = [worker for worker, keys in client.processing().items() if keys]
            if busy:
                time.sleep(4)  # well inside the run: papermill and its kernel are working
                killed = busy[0]
                stop(workers[killed])
            time.sleep(0.2)
    assert killed is not None, "no run started on a worker within a minute"
    thread.join(timeout=240)
    assert not thread.is_alive()
    sweep_dir, failed = outcome["result"]
    assert failed == []
    assert all(sweep.is_complete(sweep_dir / name) for name in ("first", "second"))
    # Both runs finished on the surviving worker, and nothing half-written is left in runs/.
    survivor = next(worker for worker in workers if worker != killed)
    assert {line.split(": ran on ")[1] for line in lines if ": ran on " in line} == {survivor}
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["averaging_by_config.csv", "first", "second",
                                                           "summary.csv", "summary.md", "sweep.yaml",
                                                           "valid_acc_by_parameter.png", "valid_loss_curves.png"]
