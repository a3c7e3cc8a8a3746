"""The cluster engines for real: submitit sweeps, srun tasks and scancel on a local SLURM cluster, and torchrun.

The SLURM tests start a single-node cluster (tests/cluster/slurm.py) for this module, or use the one
`.ci/run` started ($CLASSWISE_SLURM_DIR), and skip with the reason where none can start.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cluster import slurm
from tests.conftest import REPO, read_json, run_cli

pytestmark = pytest.mark.cluster

DDP = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true")
LAUNCHER = ("hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10")
DDP_JOB = ("hydra.launcher.tasks_per_node=2", *DDP)
# Long enough (1-5 s) that the test sees the search running and stops the job inside it.
LONG_SEARCH = "search.steps=300"
# One thread a process: jobs and tasks share the two cores of a small machine; progress lines every
# tenth of a second, so a test sees the search start in the job's log.
JOB_ENV = {"OMP_NUM_THREADS": "1", "CLASSWISE_PROGRESS": "log", "CLASSWISE_PROGRESS_INTERVAL": "0.1"}


@pytest.fixture(scope="module")
def cluster():
    """The environment reaching a running local SLURM cluster (started here and stopped after the module)."""
    shared = os.environ.get("CLASSWISE_SLURM_DIR")
    if shared:  # .ci/run started it: a cluster that does not answer is a failure there, not a skip
        env = slurm.client_env(shared)
        proc = subprocess.run(["sinfo", "--noheader"], env={**os.environ, **env}, capture_output=True, text=True)
        assert proc.returncode == 0, f"CLASSWISE_SLURM_DIR={shared}: sinfo failed: {proc.stderr}"
        yield env
        return
    reason = slurm.unavailable()
    if reason:
        pytest.skip(reason)
    # Not under pytest's basetemp: munged needs every parent folder world-executable, and another
    # pytest run on the machine prunes old basetemps.
    folder = Path(tempfile.mkdtemp(prefix="classwise-slurm-", dir="/tmp"))
    try:
        try:
            env = slurm.start(folder)
        except slurm.ClusterError as exc:
            pytest.skip(f"the local SLURM cluster did not start: {str(exc).splitlines()[0]}")
        yield env
    finally:
        slurm.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _cli(module: str, *args: str, root: Path, env: dict) -> tuple[list[str], dict]:
    """`python -m classwise.<module> args` and its environment, as run_cli runs it, for Popen and sbatch."""
    full = {**os.environ, "CLASSWISE_ROOT": str(root), "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", **env}
    return [sys.executable, "-m", f"classwise.{module}", *args], full


@pytest.fixture(scope="module")
def slurm_sweep(cluster, tmp_path_factory, request):
    """A submitit sweep of a natural and a backdoored job, a sweep whose one job raises, and a report over both.

    The local runs go on meanwhile: the launchers mostly wait on their jobs.
    """
    root = tmp_path_factory.mktemp("slurm_sweep")
    good, bad = root / "sweeps" / "settings", root / "sweeps" / "raising"
    env = {**JOB_ENV, **cluster}
    sweeps = {}
    # Each good job is one SLURM job of 2 tasks: submitit's srun starts them, Lightning's ddp attaches.
    # The raising job fails when its Trainer is built (max_epochs=-5).
    for name, overrides in (("good", ("setting=natural,backdoor", *DDP_JOB, f"hydra.sweep.dir={good}")),
                            ("bad", ("trainer.max_epochs=-5", f"hydra.sweep.dir={bad}"))):
        args, full_env = _cli("train", "--multirun", "debug=fast", *LAUNCHER, *overrides, root=root, env=env)
        sweeps[name] = subprocess.Popen(args, cwd=REPO, env=full_env, text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
    try:
        request.getfixturevalue("local_runs")
        outputs = {name: p.communicate(timeout=300) for name, p in sweeps.items()}
    finally:
        for p in sweeps.values():
            p.kill()
    done = {name: subprocess.CompletedProcess(p.args, p.returncode, *outputs[name]) for name, p in sweeps.items()}
    assert done["good"].returncode == 0, done["good"].stderr[-5000:]
    report = run_cli("report", str(root / "sweeps"), "--out", str(root / "report"), root=root)
    return root, good, bad, done["bad"], report


def test_submitit_sweep_runs_both_jobs_and_the_report_reads_them(slurm_sweep):
    root, good, _, _, report = slurm_sweep
    runs = [read_json(p) for p in sorted(good.glob("*/results.json"))]
    assert [r["run"]["setting"] for r in runs] == ["natural", "backdoor"]
    assert "backdoor_asr" in runs[1]["metrics"]
    # Both ranks of each job searched (classes sharded over them), rank 0 wrote every class once.
    assert all(r["search"]["world_size"] == 2 and [c["class_index"] for c in r["classes"]] == [0, 1, 2, 3] for r in runs)
    # Each job ran as a SLURM array task of its own (submitit's result file per task and rank).
    assert len(list((good / ".submitit").glob("*_*/*_result.pkl"))) == 2 * 2
    summary = (root / "report" / "summary.md").read_text()
    assert "setting=natural" in summary and "setting=backdoor" in summary


def test_a_raising_slurm_job_fails_the_sweep_and_the_report_lists_it(slurm_sweep):
    root, _, bad, raising, report = slurm_sweep
    assert raising.returncode == 1, raising.stderr[-3000:]
    (failed,) = bad.rglob("FAILED")
    assert "1 job(s) of this multirun failed" in raising.stderr and failed.parent.name in raising.stderr
    error = failed.read_text().splitlines()[0]
    assert "max_epochs" in error
    assert "FAILED: 1 job(s)" in report.stdout and error in report.stdout


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """A natural run (train + search) and a classwise-search of its model, each in one local process.

    What every launch below must reproduce: the cancelled and resumed SLURM job ends where the first
    ends, the sharded searches where the second does.
    """
    root = tmp_path_factory.mktemp("local")
    run_cli("train", "debug=fast", LONG_SEARCH, root=root, run_dir=root / "train", env=JOB_ENV)
    run_cli("search", "debug=fast", f"checkpoint={root / 'train'}", root=root, run_dir=root / "search", env=JOB_ENV)
    return root / "train", root / "search"


def _assert_same_search(one: Path, many: Path, world_size: int) -> None:
    """Run `many` searched every class once and found what run `one` found: canvases, ASR, masks."""
    a, b = read_json(one / "results.json"), read_json(many / "results.json")
    assert b["search"]["world_size"] == world_size
    assert [c["class_index"] for c in b["classes"]] == [c["class_index"] for c in a["classes"]] == [0, 1, 2, 3]
    for x, y in zip(a["classes"], b["classes"], strict=True):
        assert x["canvas_index"] == y["canvas_index"]
        assert x["by_ratio"][0]["asr"] == pytest.approx(y["by_ratio"][0]["asr"], abs=1e-6)
    m1 = load_file(str(one / "patterns" / "masks.safetensors"))
    m2 = load_file(str(many / "patterns" / "masks.safetensors"))
    assert m1.keys() == m2.keys() and all(torch.allclose(m1[k], m2[k], atol=1e-5) for k in m1)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _final_state(job: str, env: dict) -> str | None:
    """The job's state once it has ended (COMPLETED, FAILED, CANCELLED, ...), else None.

    Polled here: `sbatch --wait` checks at doubling intervals and can return 15 s after the job ended.
    """
    state = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%T", f"--jobs={job}"], env=env,
                           capture_output=True, text=True).stdout.strip()
    return state if state and state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING") else None


def test_search_as_one_slurm_job_of_two_tasks(cluster, local_runs, tmp_path):
    checkpoint, single = local_runs
    search, env = _cli("search", "debug=fast", *DDP, f"checkpoint={checkpoint}", root=tmp_path, env={**JOB_ENV, **cluster})
    # docs/clusters.md's job: one task per device (--ntasks-per-node: Lightning reads
    # SLURM_NTASKS_PER_NODE), srun starts them, Lightning's ddp attaches to them.
    sbatch = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", f"--output={tmp_path}/slurm-%j.out",
              "--wrap", f"srun {shlex.join(search)}"]
    job = subprocess.run(sbatch, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.strip()
    state = _wait_for(lambda: _final_state(job, env), 300, f"job {job} to end")
    logs = (tmp_path / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", f"job {job}: {state}\n{logs[-5000:]}"
    runs = [p.name for p in (tmp_path / "outputs" / "search" / "runs").iterdir()]
    assert runs == [f"slurm-{job}.0"], logs  # one folder for both ranks, named after the job step
    _assert_same_search(single, tmp_path / "outputs" / "search" / "runs" / runs[0], world_size=2)


def test_a_job_cancelled_mid_search_resumes_when_submitted_again(cluster, local_runs, tmp_path):
    uninterrupted, _ = local_runs
    sweep = tmp_path / "sweep"
    args, env = _cli("train", "--multirun", "debug=fast", *LAUNCHER, LONG_SEARCH, f"hydra.sweep.dir={sweep}",
                     root=tmp_path, env={**JOB_ENV, **cluster})
    first = subprocess.Popen(args, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # A "pattern search" line a tenth of a second into the search (CLASSWISE_PROGRESS_INTERVAL).
        log = _wait_for(lambda: next((p for p in sweep.glob(".submitit/*/*_0_log.err")
                                      if "pattern search" in p.read_text()), None), 240, "the search to start")
        job = log.name.split("_0_log")[0]
        # Suspended first, so the cancel kills it here: a running job gets scancel's SIGTERM, which
        # submitit and Lightning ignore, and SIGKILL at least 5 s later (slurmd), when a short
        # search may be over; a suspended job is killed at once.
        subprocess.run(["scontrol", "suspend", job], env=env, check=True)
        subprocess.run(["scancel", job], env=env, check=True)
        assert _wait_for(lambda: _final_state(job, env), 60, "the cancel to end the job") == "CANCELLED"
        (run,) = [p for p in sweep.iterdir() if not p.name.startswith(".") and p.is_dir()]
        searched = [line for line in log.read_text().splitlines() if line.startswith("pattern search")]
        assert "100%" not in searched[-1] and not (run / "results.json").exists(), \
            f"the search ended before the cancel took effect ({searched[-1]}): nothing was cancelled mid-search"
        checkpoint = run / "checkpoints" / "last.ckpt"
        trained = checkpoint.stat().st_mtime_ns
        # Submitted again (the same command) while the first launcher may still wait on the cancelled job.
        again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "skipped:" not in again.stdout, again.stderr[-5000:]
        # submitit polls only sacct: without a job state the first sweep would wait forever.
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode != 0 and "CANCELLED" in err, err[-3000:]
    res = read_json(run / "results.json")
    assert res["run"]["resumed_from"] == str(checkpoint)
    assert checkpoint.stat().st_mtime_ns == trained  # training was not repeated
    # The resumed job ends where the uninterrupted run of the same config ends.
    _assert_same_search(uninterrupted, run, world_size=1)


def test_torchrun_two_processes_of_search(local_runs, tmp_path):
    checkpoint, single = local_runs
    search, env = _cli("search", "debug=fast", *DDP, f"checkpoint={checkpoint}", root=tmp_path, env=JOB_ENV)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *search[1:]]
    proc = subprocess.run(torchrun, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    runs = list((tmp_path / "outputs" / "search" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("torchrun-"), [p.name for p in runs]
    _assert_same_search(single, runs[0], world_size=2)
