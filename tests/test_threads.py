"""Runs that share cores (issue 33): a passive OpenMP wait, threads from the cores the process may use, one
thread per run where a sweep runs as many runs as there are cores.

Two runs at once with torch's spinning threads took more than 9 minutes each where one alone took 54 s.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sweeps"))

import sweep  # noqa: E402

# Reports the wait policy at the moment torch starts loading (OpenMP reads it then), then imports helpers.
SPY = """
import os, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("at import torch:", os.environ.get("OMP_WAIT_POLICY"))
            sys.meta_path.remove(self)
sys.meta_path.insert(0, Spy())
import helpers
"""


def python(code, env_changes, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_helpers_sets_a_passive_wait_before_torch_loads_and_keeps_one_already_set():
    assert python(SPY, {}).splitlines() == ["at import torch: PASSIVE"]
    assert python(SPY, {"OMP_WAIT_POLICY": "ACTIVE"}).splitlines() == ["at import torch: ACTIVE"]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_torch_threads_are_lowered_to_the_cores_the_process_may_use():
    one_core = min(os.sched_getaffinity(0))
    code = "import torch; torch.set_num_threads(4); import helpers; print(torch.get_num_threads())"
    pinned = {"preexec_fn": lambda: os.sched_setaffinity(0, {one_core})}  # as taskset or a SLURM allocation
    assert python(code, {}, **pinned).strip() == "1"
    assert python(code, {"OMP_NUM_THREADS": "3"}, **pinned).strip() == "4"  # set by the user: left alone


def test_the_makefile_and_the_test_script_run_everything_with_a_passive_wait():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    shown = subprocess.run(["make", "--no-print-directory", "--eval", "show-wait: ; @echo $$OMP_WAIT_POLICY",
                            "show-wait"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert shown.stdout.strip() == "PASSIVE", shown.stderr
    assert 'export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"' in (REPO / "tests" / "run_tests.sh").read_text()
    # The kernel inherits it from make (JupyterLab, papermill): registered with no setting of its own, so that
    # `OMP_WAIT_POLICY=ACTIVE make run` (a machine to oneself: faster, figures/shared_cores.csv) still works.
    assert "ipykernel install --sys-prefix --name" in (REPO / "Makefile").read_text()
    assert "OMP_WAIT_POLICY=ACTIVE make ... overrides it" in (REPO / "Makefile").read_text()


def test_a_sweeps_runs_get_a_passive_wait_and_their_share_of_the_threads(tmp_path, monkeypatch):
    seen = []

    def run(command, env, **kwargs):
        seen.append(env)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(sweep.subprocess, "run", run)
    sweep.papermill_execute(tmp_path, {"hidden_dim": 8}, 1)
    assert seen[0]["OMP_WAIT_POLICY"] == "PASSIVE" and seen[0]["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    sweep.papermill_execute(tmp_path, {"hidden_dim": 8}, 2)
    assert seen[1]["OMP_WAIT_POLICY"] == "ACTIVE" and seen[1]["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize("cores, jobs, threads", [(2, 1, 2), (2, 2, 1), (2, 4, 1), (16, 2, 8)])
def test_runs_at_once_share_the_cores_one_thread_each_where_there_are_as_many_runs_as_cores(
        tmp_path, monkeypatch, cores, jobs, threads):
    given = []
    monkeypatch.setattr(sweep, "usable_cores", lambda: cores)
    todo = {f"run-{i}": {} for i in range(jobs)}
    list(sweep.local_runs(tmp_path, todo, jobs, lambda run_dir, params, n: given.append(n), log=lambda *a: None))
    assert given == [threads] * jobs
