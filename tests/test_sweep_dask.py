"""Sweeps on a real Dask cluster: a scheduler and workers on localhost, each its own process.

One plain tcp:// scheduler for the module, whose workers the tests share: a test that needs two
workers gets those the test before it left alive, and new ones for those it killed; a test that
needs a worker of its own gets a scheduler with no other (the rest stopped first). On it: a sweep's
results come back from both workers; a worker killed while papermill runs costs only that attempt;
a run whose worker dies twice is failed; a worker whose checkout differs from the sweep's refuses
to run; a hostile worker's result is refused. A TLS cluster (one for the module), with a CA and a
certificate made here by openssl: a sweep runs through it, and a client or worker without a
certificate that CA signed is refused. Every process is stopped at the end, even when a test fails.

Each worker gets its own TMPDIR, so the test sees which worker holds a run's temporary folder, and
waits for the executed notebook papermill writes there (with a cell the kernel has finished)
before it kills that worker: papermill and its kernel are provably working.
"""

import itertools
import json
import os
import shutil
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

# Every test here starts a Dask cluster, and most run the notebook on its workers: make test only.
pytestmark = pytest.mark.notebook

DASK = Path(sys.executable).with_name("dask")
TINY = {"use_sample": True, "n_epochs": 1, "embedding_dim": 8, "hidden_dim": 8,
        "max_vocab_size": 2000, "max_length": 200, "ig_steps": 8}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command, log, env=None):
    # Its own process group, so that killing it also kills the papermill run and kernel it started.
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)


def stop(process):
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


def openssl(folder, *args):
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, text=True)


def make_certificates(folder, ca_name="ca", name="cluster"):
    """A CA (ca.pem) and a certificate signed by it (cluster.pem, cluster-key.pem), as the README makes them."""
    folder.mkdir(parents=True, exist_ok=True)
    openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca_name}",
            "-keyout", f"{ca_name}-key.pem", "-out", f"{ca_name}.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}-key.pem",
            "-out", f"{name}.csr")
    (folder / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca_name}.pem", "-CAkey", f"{ca_name}-key.pem",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {"tls_ca_file": str(folder / f"{ca_name}.pem"), "tls_cert": str(folder / f"{name}.pem"),
            "tls_key": str(folder / f"{name}-key.pem")}


def tls_arguments(tls):
    return ["--tls-ca-file", tls["tls_ca_file"], "--tls-cert", tls["tls_cert"], "--tls-key", tls["tls_key"]]


class Cluster:
    """A scheduler on a free port and workers added one by one; stop() ends every process."""

    def __init__(self, folder, tls=None):
        self.folder, self.tls = Path(folder), tls
        self.protocol = "tls" if tls else "tcp"
        self.address = f"{self.protocol}://127.0.0.1:{free_port()}"
        self.security = None  # the test's own client's, made here rather than by the code under test
        if tls:
            from distributed.security import Security

            self.security = Security(tls_ca_file=tls["tls_ca_file"], tls_client_cert=tls["tls_cert"],
                                     tls_client_key=tls["tls_key"], require_encryption=True)
        self.log = open(self.folder / "dask.log", "a")  # noqa: SIM115 (closed in stop(), after the processes)
        self.processes, self.workers, self.tmpdirs = [], {}, {}
        self.numbers = itertools.count()  # of the workers' TMPDIRs
        self.start_scheduler()

    def start_scheduler(self):
        self.processes.append(start([str(DASK), "scheduler", "--host", "127.0.0.1",
                                     "--port", self.address.rsplit(":", 1)[1], "--no-dashboard",
                                     *(["--protocol", "tls", *tls_arguments(self.tls)] if self.tls else [])],
                                    self.log))

    def add_worker(self, tls="same", wait=True, death_timeout=20, arguments=(), **env):
        """Start a one-thread worker with its own TMPDIR (and any further `dask worker` arguments); returns its
        address."""
        tls = self.tls if tls == "same" else tls
        address = f"{self.protocol}://127.0.0.1:{free_port()}"
        tmpdir = self.folder / f"worker-tmp-{next(self.numbers)}"
        tmpdir.mkdir()
        process = start([str(DASK), "worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                         "--listen-address", address, "--death-timeout", str(death_timeout),
                         *(tls_arguments(tls) if tls else []), *arguments],
                        self.log, env=dict(os.environ, TMPDIR=str(tmpdir), **env))
        self.processes.append(process)
        self.workers[address], self.tmpdirs[address] = process, tmpdir
        if wait:
            self.wait_for_workers(len(self.workers))
        return address

    def client(self, **kwargs):
        from distributed import Client

        return Client(self.address, timeout="60s", security=self.security, **kwargs)

    def wait_for_workers(self, n):
        with self.client() as client:
            client.wait_for_workers(n, timeout=60)

    def kill(self, worker):
        stop(self.workers[worker])

    def keep_workers(self, n, timeout=60):
        """Leave n live workers, and the scheduler knowing exactly those: the dead ones forgotten (their
        TMPDIRs with them), any beyond n stopped, new ones added up to n."""
        for worker, process in list(self.workers.items()):
            if process.poll() is not None or len(self.workers) > n:
                stop(process)
                del self.workers[worker], self.tmpdirs[worker]
        for _ in range(n - len(self.workers)):
            self.add_worker(wait=False)
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while set(client.scheduler_info()["workers"]) != set(self.workers):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the scheduler's workers {sorted(client.scheduler_info()['workers'])} "
                                         f"are not {sorted(self.workers)} after {timeout} s")
                time.sleep(0.1)

    def busy(self, grace=10):
        """Whether the scheduler still holds tasks after `grace` seconds: a sweep that a failed test left running."""
        deadline = time.monotonic() + grace
        with self.client() as client:
            while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
                if time.monotonic() > deadline:
                    return True
                time.sleep(0.2)
        return False

    def restart(self):
        """Every process stopped, and a new scheduler, on a new port, with no worker: a sweep left running by a
        failed test, and its workers, reach no later test."""
        for process in self.processes:
            stop(process)
        self.processes, self.workers, self.tmpdirs = [], {}, {}
        self.address = f"{self.protocol}://127.0.0.1:{free_port()}"
        self.start_scheduler()

    def stop(self):
        for process in self.processes:
            stop(process)
        self.log.close()


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    """The module's plain tcp:// scheduler on localhost; the fixtures below give each test its workers."""
    cluster = Cluster(tmp_path_factory.mktemp("tcp-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(tcp_cluster):
    """The module's scheduler with two live one-thread workers: those the test before left, topped up. A test
    that leaves a sweep running (it failed) leaves the next a new scheduler."""
    tcp_cluster.keep_workers(2)
    yield tcp_cluster
    if tcp_cluster.busy():
        tcp_cluster.restart()


@pytest.fixture
def bare_cluster(tcp_cluster):
    """The module's scheduler with no worker, for a test that adds its own; they are stopped after it."""
    tcp_cluster.keep_workers(0)
    yield tcp_cluster
    if tcp_cluster.busy():
        tcp_cluster.restart()
    tcp_cluster.keep_workers(0)


def write_sweep(tmp_path, name, runs):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": TINY, "runs": runs}), encoding="utf-8")
    return path


def ran_on(lines):
    return {line.split(": ran on ")[1] for line in lines if ": ran on " in line}


def sweep_in_background(*args, **kwargs):
    """run_sweep in a daemon thread (a sweep left hanging by a broken product must not hang pytest)."""
    outcome = {}

    def target():
        try:
            outcome["result"] = sweep.run_sweep(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 (reported by the test)
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def papermill_started(tmpdir):
    """Whether a run's notebook in this worker's temporary folder has a cell the kernel has finished."""
    for path in tmpdir.glob("sweep-*/*/sentiment_lstm.ipynb"):
        try:
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        except (OSError, ValueError):
            continue  # being written
        if any(c.get("metadata", {}).get("papermill", {}).get("status") == "completed" for c in cells):
            return True
    return False


def wait_for_papermill(cluster, exclude=(), timeout=120):
    """The worker on which papermill has begun executing a run's notebook (workers in exclude left out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker, tmpdir in cluster.tmpdirs.items():
            if worker not in exclude and papermill_started(tmpdir):
                return worker
        time.sleep(0.2)
    raise AssertionError(f"papermill did not start a run on any worker but {sorted(exclude)} within {timeout} s")


def test_a_sweep_runs_on_dask_workers_and_lands_like_a_local_one(tmp_path, cluster):
    spec = write_sweep(tmp_path, "on-dask", [{"name": "bi"}, {"name": "uni", "bidirectional": False},
                                             {"name": "broken", "pooling": "median"}])
    lines = []
    sweep_dir, failed = sweep.run_sweep(spec, tmp_path / "runs", scheduler=cluster.address, log=lines.append)
    assert failed == ["broken"]
    error = (sweep_dir / "broken" / "error.txt").read_text()
    assert "pooling='median'" in error  # the notebook's own message, brought back from the worker
    for name in ("bi", "uni"):
        run = sweep_dir / name
        assert sweep.is_complete(run)
        assert (run / "sentiment_lstm.ipynb").is_file() and (run / "figures" / "4_loss_curves.png").is_file()
        assert not (run / "checkpoint").exists()  # only with fetch_checkpoints
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.startswith(".")) == []
    # bi and uni went out together, one to each free worker: both workers ran one.
    assert ran_on(lines) == set(cluster.workers)
    assert not any(line.startswith("warning:") for line in lines)  # tcp to localhost is fine
    summary = (sweep_dir / "summary.csv").read_text()
    assert "bi," in summary and "broken" in summary

    # Started again: finished runs are skipped, and a checkpoint comes back when asked for.
    lines.clear()
    spec = write_sweep(tmp_path, "on-dask", [{"name": "bi"}, {"name": "uni", "bidirectional": False},
                                             {"name": "longer", "max_length": 300}])
    sweep_dir, failed = sweep.run_sweep(spec, tmp_path / "runs", scheduler=cluster.address, log=lines.append,
                                        fetch_checkpoints=True)
    assert failed == []
    assert "3 runs, 2 already complete, 1 to run" in lines[0]
    assert (sweep_dir / "longer" / "checkpoint").is_dir() and not (sweep_dir / "bi" / "checkpoint").exists()


def test_a_worker_killed_in_the_middle_of_a_run_does_not_lose_the_sweep(tmp_path, cluster):
    spec = write_sweep(tmp_path, "killed", [{"name": "first"}, {"name": "second", "bidirectional": False}])
    lines = []
    thread, outcome = sweep_in_background(spec, tmp_path / "runs", scheduler=cluster.address, log=lines.append)
    killed = wait_for_papermill(cluster)  # its kernel has run a cell of the notebook: well inside the run
    cluster.kill(killed)
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in outcome
    sweep_dir, failed = outcome["result"]
    assert failed == []
    assert all(sweep.is_complete(sweep_dir / name) for name in ("first", "second"))
    # Both runs finished on the surviving worker, and nothing half-written is left in runs/.
    survivor = next(worker for worker in cluster.workers if worker != killed)
    assert ran_on(lines) == {survivor}
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["first", "second",
                                                           "summary.csv", "summary.md", "sweep.yaml",
                                                           "valid_acc_by_parameter.png", "valid_loss_curves.png"]


def test_a_run_whose_worker_dies_twice_is_recorded_as_failed(tmp_path, cluster):
    spec = write_sweep(tmp_path, "doomed", [{"name": "doomed"}])
    thread, outcome = sweep_in_background(spec, tmp_path / "runs", scheduler=cluster.address, log=lambda *a: None)
    first = wait_for_papermill(cluster)
    cluster.kill(first)
    second = wait_for_papermill(cluster, exclude={first})  # the retry, on the other worker
    cluster.kill(second)
    # No worker is left: a scheduler allowing more deaths would wait for one, and the sweep would hang.
    thread.join(timeout=60)
    assert not thread.is_alive(), "the run was not failed when its second worker died"
    sweep_dir, failed = outcome["result"]
    assert failed == ["doomed"]
    error = (sweep_dir / "doomed" / "error.txt").read_text()
    assert error.startswith("KilledWorker:") and "on 2 different workers" in error
    assert not sweep.is_complete(sweep_dir / "doomed")


def test_a_worker_whose_checkout_differs_from_the_sweeps_refuses_the_run(tmp_path, bare_cluster):
    other = tmp_path / "other-checkout"
    (other / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "sentiment_lstm.ipynb", other / "notebooks")
    (other / "helpers.py").write_text((REPO / "helpers.py").read_text(encoding="utf-8") + "\n# a local change\n",
                                      encoding="utf-8")
    bare_cluster.add_worker(SENTIMENT_LSTM_REPO=str(other))  # its only worker
    spec = write_sweep(tmp_path, "elsewhere", [{"name": "elsewhere"}])
    start_time = time.monotonic()
    sweep_dir, failed = sweep.run_sweep(spec, tmp_path / "runs", scheduler=bare_cluster.address, log=lambda *a: None)
    assert failed == ["elsewhere"]
    error = (sweep_dir / "elsewhere" / "error.txt").read_text()
    assert f"helpers.py in {other.resolve()} differ from the sweep's; check out the same commit there" in error
    assert "sentiment_lstm.ipynb" not in error  # the notebook is the same: only what differs is named
    assert time.monotonic() - start_time < 20  # refused before papermill, not after a run


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A TLS scheduler and two TLS workers on localhost, all with one certificate signed by a CA made here."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test's certificates")
    folder = tmp_path_factory.mktemp("tls-cluster")
    cluster = Cluster(folder, tls=make_certificates(folder / "certs"))
    try:
        for _ in range(2):
            cluster.add_worker(wait=False)
        cluster.wait_for_workers(2)
        yield cluster
    finally:
        cluster.stop()


def test_a_sweep_runs_through_a_tls_scheduler(tmp_path, tls_cluster, capsys):
    assert tls_cluster.address.startswith("tls://") and all(w.startswith("tls://") for w in tls_cluster.workers)
    spec = write_sweep(tmp_path, "over-tls", [{"name": "bi"}, {"name": "uni", "bidirectional": False}])
    code = sweep.main([str(spec), "--runs-dir", str(tmp_path / "runs"), "--scheduler", tls_cluster.address,
                       *tls_arguments(tls_cluster.tls)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert all(sweep.is_complete(tmp_path / "runs" / "over-tls" / name) for name in ("bi", "uni"))
    assert ran_on(out.splitlines()) == set(tls_cluster.workers)
    assert "warning" not in out


def clients_of(cluster):
    with cluster.client() as client:
        return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.clients))


def test_a_client_or_worker_without_a_certificate_of_the_clusters_ca_is_refused(tmp_path, tls_cluster):
    from distributed import Client
    from distributed.security import Security

    rogue = make_certificates(tmp_path / "rogue", ca_name="rogue-ca", name="rogue")
    clients_before = clients_of(tls_cluster)
    # Plain tcp to the TLS port: no TLS handshake, no connection.
    with pytest.raises(OSError):
        Client(tls_cluster.address.replace("tls://", "tcp://"), timeout="5s")
    # TLS with a certificate another CA signed, while trusting the cluster's CA: the scheduler refuses it.
    impostor = Security(tls_ca_file=tls_cluster.tls["tls_ca_file"], tls_client_cert=rogue["tls_cert"],
                        tls_client_key=rogue["tls_key"], require_encryption=True)
    with pytest.raises(OSError):
        Client(tls_cluster.address, timeout="5s", security=impostor)
    # The sweep, given the rogue certificate, stops with a clear error before anything runs.
    spec = write_sweep(tmp_path, "rogue", [{"name": "never"}])
    with pytest.raises(sweep.SweepError, match="could not reach the Dask scheduler at tls://.*check --tls-ca-file"):
        sweep.run_sweep(spec, tmp_path / "runs", scheduler=tls_cluster.address, log=lambda *a: None,
                        tls={**rogue, "tls_ca_file": tls_cluster.tls["tls_ca_file"]})
    assert not (tmp_path / "runs" / "rogue" / "never").exists()
    # A worker with the rogue certificate never joins, and gives up.
    worker = tls_cluster.add_worker(tls={**rogue, "tls_ca_file": tls_cluster.tls["tls_ca_file"]}, wait=False,
                                    death_timeout=5)
    process = tls_cluster.workers.pop(worker)
    assert process.wait(timeout=60) != 0
    with tls_cluster.client() as client:
        assert sorted(client.scheduler_info()["workers"]) == sorted(tls_cluster.workers)
    assert clients_of(tls_cluster) == clients_before
    # Refused by the scheduler's check of the certificate, not by some other failure.
    tls_cluster.log.flush()
    log = (tls_cluster.folder / "dask.log").read_text()
    assert "TLS handshake failed" in log and "CERTIFICATE_VERIFY_FAILED" in log


HOSTILE_PLUGIN = '''"""A worker that holds the cluster's certificate and turns hostile: its runs "finish" at once, and
each result it sends back holds an object whose unpickling opens (creates) $HOSTILE_MARKER."""
import os
import subprocess

from distributed import WorkerPlugin


class Payload:
    def __reduce__(self):
        return (open, (os.environ["HOSTILE_MARKER"], "w"))


class Hostile(WorkerPlugin):
    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        if finish == "memory" and str(key).startswith("sweep-"):
            self.worker.data[key] = {"files": {"metrics.json": Payload()}, "worker": "hostile", "seconds": 1.0}


async def dask_setup(worker):
    subprocess.run = lambda command, **kwargs: subprocess.CompletedProcess(command, 0, "", "")  # no papermill
    await worker.plugin_add(Hostile(), name="hostile")
'''


def test_a_hostile_worker_runs_code_in_the_sweeps_process_and_its_result_is_refused(tmp_path, bare_cluster):
    """Issue 32. Dask unpickles whatever a worker sends, before the sweep's code sees it: a worker holding the
    cluster's certificate (here plain tcp on localhost) can run code on the machine running sweep.py. The
    README says so; what the sweep can do, it does: the result, not a run's plain data, is refused and
    nothing of it lands in runs/."""
    plugin = tmp_path / "hostile_plugin.py"
    plugin.write_text(HOSTILE_PLUGIN)
    marker = tmp_path / "marker"
    bare_cluster.add_worker(arguments=("--preload", str(plugin)), HOSTILE_MARKER=str(marker))  # its only worker
    spec = write_sweep(tmp_path, "hostile", [{"name": "evil"}])
    lines = []
    sweep_dir, failed = sweep.run_sweep(spec, tmp_path / "runs", scheduler=bare_cluster.address, log=lines.append)
    assert marker.exists()  # the payload ran in this process: the trust model the README states
    assert failed == ["evil"]
    assert "not a run's plain data" in (sweep_dir / "evil" / "error.txt").read_text()
    assert sorted(p.name for p in (sweep_dir / "evil").iterdir()) == ["error.txt"]
