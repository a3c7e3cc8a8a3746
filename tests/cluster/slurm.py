"""A single-node SLURM cluster (munged + slurmctld + slurmd) in one folder, for the cluster tests.

    python -m tests.cluster.slurm install          # Debian's slurm-wlm and munge, where apt and root allow
    python -m tests.cluster.slurm start FOLDER     # prints the environment that reaches it
    python -m tests.cluster.slurm stop FOLDER      # cancels its jobs, stops its daemons by PID
    python -m tests.cluster.slurm run -- CMD...    # CMD with a cluster started before and stopped after

Runs as root without systemd: munged's socket, the daemons' state, logs and PID files all live in
FOLDER, so nothing outside it is touched and two clusters can run side by side (free ports).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = ("slurm-wlm", "munge")
# A job-state answer for submitit, which polls only `sacct` (no accounting database here).
SHIM_BIN = Path(__file__).resolve().parent / "bin"
NODE = "localhost"

SLURM_CONF = """\
ClusterName=classwise
# slurmctld accepts "localhost" whatever the host's name; slurmd is started with -N localhost.
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket.2
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
# No cgroups without systemd; 22.05 rejects CgroupPlugin=disabled, so no cgroup setting at all.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# Schedule a batch job when it is submitted, not up to 3 s later.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
ReturnToService=2
# squeue (and so the sacct shim) remembers finished jobs for an hour instead of 5 minutes.
MinJobAge=3600
# submitit and Lightning's SLURM handler ignore scancel's SIGTERM: `stop` and the tests' cancels get
# the SIGKILL after slurmd's minimum of about 5 s instead of KillWait=30 s.
KillWait=0
# The node's size as written here, not as probed: the tests' jobs (mostly waiting on Python's start)
# run side by side, and 2 tasks run on a 1-core CI machine too.
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class ClusterError(RuntimeError):
    """The local cluster could not be installed or started (the message says which step and why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable() -> str | None:
    """Why no local cluster can start here (None when it can)."""
    missing = [d for d in DAEMONS if not _which(d)]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): python -m tests.cluster.slurm install (root, apt)"
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons as root (slurmd starts the jobs); not root here"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def install() -> str:
    """Install slurm-wlm and munge with apt where missing; returns what it did, raises ClusterError otherwise."""
    if all(_which(d) for d in DAEMONS):
        return "slurm: already installed"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterError("slurm: not installed, and apt-get as root is not available here")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:  # a fresh image has no package lists yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not all(_which(d) for d in DAEMONS):
        raise ClusterError(f"slurm: apt-get install {' '.join(PACKAGES)} failed: {proc.stderr.strip()[-500:]}")
    return f"slurm: installed {' '.join(PACKAGES)} with apt"


def client_env(folder: Path | str) -> dict[str, str]:
    """The variables that point SLURM's commands (and submitit's sacct calls) at this cluster."""
    folder = Path(folder).resolve()  # the daemons change directory to /: SLURM_CONF must be absolute
    return {"SLURM_CONF": str(folder / "slurm.conf"), "PATH": f"{SHIM_BIN}:{os.environ.get('PATH', '')}"}


def _run(folder: Path, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    env = {**os.environ, **client_env(folder)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie left to a PID 1 that does not reap is gone for us


def _wait_until(check, timeout: float, what: str, folder: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    last = ((folder / f"{what}.out").read_text(errors="replace").strip().splitlines() or ["(no output)"])[-1]
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(folder.glob("*.out")))
    raise ClusterError(f"slurm: {what} not ready after {timeout:.0f} s: {last}\n{logs}")


def _node_idle(folder: Path) -> bool:
    proc = _run(folder, "sinfo", "--noheader", "--Node", "--format=%T")
    return proc.returncode == 0 and proc.stdout.strip().rstrip("*") == "idle"


def start(folder: Path | str) -> dict[str, str]:
    """Start munged, slurmctld and slurmd for a cluster living in `folder`; returns `client_env(folder)`."""
    reason = unavailable()
    if reason:
        raise ClusterError(reason)
    folder = Path(folder).resolve()
    closed = [str(p) for p in folder.parents if p.exists() and not os.stat(p).st_mode & 0o001]
    if closed:  # munged refuses a socket that not everyone can reach
        raise ClusterError(f"slurm: {folder} lies in {closed[0]}, which others cannot enter; accepted: a folder "
                           "whose every parent is world-executable (e.g. under /tmp)")
    if (folder / "pids.json").exists() and any(_alive(p) for p in _pids(folder).values()):
        raise ClusterError(f"slurm: a cluster already runs in {folder} (stop it first)")
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    os.chmod(folder / "munge", 0o755)  # munged refuses a socket folder others can write to
    key = folder / "munge" / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    (folder / "slurm.conf").write_text(SLURM_CONF.format(
        folder=folder, node=NODE, cpus=max(4, os.cpu_count() or 1), memory_mb=memory_mb,
        ctld_port=_free_port(), slurmd_port=_free_port(),
    ))
    conf = str(folder / "slurm.conf")
    commands = {
        "munged": [_which("munged"), "--foreground", f"--socket={folder}/munge/munge.socket.2", f"--key-file={key}",
                   f"--pid-file={folder}/munge/munged.pid", f"--seed-file={folder}/munge/munged.seed"],
        "slurmctld": [_which("slurmctld"), "-D", "-i", "-f", conf],
        "slurmd": [_which("slurmd"), "-D", "-N", NODE, "-f", conf],
    }
    checks = {
        "munged": lambda: (folder / "munge" / "munge.socket.2").exists(),
        "slurmctld": lambda: _run(folder, "scontrol", "ping").stdout.count("UP") > 0,
        "slurmd": lambda: _node_idle(folder),
    }
    pids: dict[str, int] = {}
    try:
        for name in DAEMONS:
            with open(folder / f"{name}.out", "ab") as out:
                proc = subprocess.Popen(commands[name], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=folder, start_new_session=True, env={**os.environ, "SLURM_CONF": conf})
            pids[name] = proc.pid
            (folder / "pids.json").write_text(json.dumps(pids))
            _wait_until(checks[name], 30, name, folder)
    except BaseException:
        stop(folder)
        raise
    return client_env(folder)


def _pids(folder: Path) -> dict[str, int]:
    try:
        return json.loads((folder / "pids.json").read_text())
    except (OSError, ValueError):
        return {}


def stop(folder: Path | str, timeout: float = 20) -> None:
    """Cancel every job of the cluster in `folder`, then stop its daemons by the PIDs `start` recorded."""
    folder = Path(folder).resolve()
    pids = _pids(folder)
    if pids.get("slurmctld") and _alive(pids["slurmctld"]):
        _run(folder, "scancel", "--full", "--user=root")  # this cluster's jobs only: SLURM_CONF is this folder's
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _run(folder, "squeue", "--noheader", "--states=R,CG,PD").stdout.strip():
            time.sleep(0.3)
    for name in reversed(DAEMONS):  # slurmd before slurmctld before munged: each still reaches the next
        pid = pids.get(name)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if pid:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it where this process started it
            except ChildProcessError:
                pass
    (folder / "pids.json").unlink(missing_ok=True)


def run(cmd: list[str]) -> int:
    """Run `cmd` with a cluster in a fresh folder (as $CLASSWISE_SLURM_DIR), stopped however `cmd` ends.

    Where no cluster can start (not installed, not root) `cmd` runs without one and the cluster tests
    skip with that reason; a cluster that should start and does not is an error.
    """
    if unavailable():
        print(f"slurm: {unavailable()}", file=sys.stderr)
        return subprocess.call(cmd)
    folder = Path(tempfile.mkdtemp(prefix="classwise-slurm-", dir="/tmp"))  # munged needs open parents, not $TMPDIR
    # A CI timeout or Ctrl-C ends this process by a signal: stop the daemons then too.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda sig, _frame: sys.exit(128 + sig))
    try:
        env = start(folder)
        return subprocess.call(cmd, env={**os.environ, **env, "CLASSWISE_SLURM_DIR": str(folder)})
    finally:
        stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    usage = "usage: python -m tests.cluster.slurm install | start FOLDER | stop FOLDER | run -- CMD..."
    try:
        if argv == ["install"]:
            print(install())
        elif len(argv) > 2 and argv[:2] == ["run", "--"]:
            return run(argv[2:])
        elif len(argv) == 2 and argv[0] == "start":
            for key, value in start(argv[1]).items():
                print(f"export {key}={value}")
        elif len(argv) == 2 and argv[0] == "stop":
            stop(argv[1])
        else:
            print(usage, file=sys.stderr)
            return 2
    except ClusterError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
