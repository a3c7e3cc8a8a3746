"""How the processes of a run were started: the shared run folder, cluster launches, collective timeout, reproducibility."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from classwise.errors import ConfigError

RUN_DIR_ENV = "CLASSWISE_RUN_DIR"


def cluster_started_processes() -> bool:
    """True when torchrun / torchelastic or SLURM (several tasks) started one process per device.

    Lightning's `ddp` then attaches to those processes instead of relaunching the script, so it is
    safe inside a Hydra multirun.
    """
    env = os.environ
    return bool(env.get("TORCHELASTIC_RUN_ID")) or int(env.get("SLURM_NTASKS", "1") or 1) > 1 or "LOCAL_RANK" in env


def launch_id() -> str | None:
    """A name every process of one cluster launch computes alike (None outside such a launch)."""
    env = os.environ
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":  # torchrun --rdzv-id (or --standalone's random id)
        return f"torchrun-{run_id}"
    if run_id == "none" and env.get("WORLD_SIZE") == env.get("LOCAL_WORLD_SIZE"):
        return f"torchrun-{os.getppid()}"  # one node: every worker is a child of the same agent
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        step = env.get("SLURM_STEP_ID")
        return f"slurm-{env['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    return None


def run_folder(base: str) -> str:
    """Hydra's run folder: $CLASSWISE_RUN_DIR, else `base`/<launch id> under a cluster launch, else `base`/<time>.

    A `${now:}` folder differs per process (torchrun and SLURM start every rank as its own Hydra
    app), so several processes of one run must agree on a name that does not come from the clock.
    """
    if os.environ.get(RUN_DIR_ENV):
        return os.environ[RUN_DIR_ENV]
    return f"{base}/{launch_id() or datetime.now().strftime('%Y-%m-%d_%H-%M-%S-%f')}"


def rank_log_suffix() -> str:
    """`.rank<N>` in the log file name of every process but rank 0, so ranks never append to one file.

    The rank comes from the launcher's environment (torchrun's RANK, SLURM's task id, or Lightning's
    node and local rank for the processes its `ddp` starts), which Hydra reads before any process group exists.
    """
    env = os.environ
    if env.get("RANK"):
        rank = env["RANK"]
    elif int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_PROCID"):
        rank = env["SLURM_PROCID"]
    elif env.get("LOCAL_RANK"):
        node, local = env.get("NODE_RANK", "0"), env["LOCAL_RANK"]
        rank = local if node == "0" else f"{node}.{local}"
    else:
        return ""
    return "" if rank == "0" else f".rank{rank}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("classwise_run_dir"):
        OmegaConf.register_new_resolver("classwise_run_dir", run_folder, use_cache=True)
    if not OmegaConf.has_resolver("classwise_seed_class"):
        OmegaConf.register_new_resolver("classwise_seed_class", seed_class)
    if not OmegaConf.has_resolver("classwise_member_seed"):
        from classwise.population import member_seed

        OmegaConf.register_new_resolver("classwise_member_seed", member_seed)
    if not OmegaConf.has_resolver("classwise_rank_log"):
        OmegaConf.register_new_resolver("classwise_rank_log", rank_log_suffix)


def seed_class(seed, num_classes) -> int:
    """A backdoor target class that moves with the seed (experiment=paper_claims): 1, 4, 7, ... mod classes.

    Not 0 for seed 0, so a detector biased to the first class cannot look right by accident."""
    return (1 + 3 * int(seed)) % int(num_classes)


def check_run_folder() -> None:
    """torchrun over several nodes without --rdzv-id nor $CLASSWISE_RUN_DIR: the nodes cannot agree on a folder."""
    env = os.environ
    if (env.get("TORCHELASTIC_RUN_ID") == "none" and env.get("WORLD_SIZE") != env.get("LOCAL_WORLD_SIZE")
            and not env.get(RUN_DIR_ENV)):
        raise ConfigError(
            f"torchrun on several nodes without --rdzv-id gives every node its own run folder; accepted: "
            f"torchrun --rdzv-id <unique name>, or {RUN_DIR_ENV}=<one folder> on every node"
        )


def strategy_with_timeout(strategy: Any, timeout_min: float | None, fabric: bool = False) -> Any:
    """A `ddp*` strategy name as a strategy object carrying the collective timeout; other values unchanged.

    After the gather, rank 0 alone writes figures and runs detection while the other ranks wait in
    a collective: NCCL's default 30 minutes can be too short at 1,000 classes.
    """
    if timeout_min is None or not isinstance(strategy, str) or not strategy.startswith("ddp"):
        return strategy
    if timeout_min <= 0:
        raise ConfigError(f"collective_timeout_min={timeout_min} must be positive (minutes) or null")
    if fabric:
        from lightning.fabric.strategies import STRATEGY_REGISTRY as registry
    else:
        from lightning.pytorch.strategies import StrategyRegistry as registry
    if strategy not in registry:
        return strategy
    entry = registry[strategy]
    return entry["strategy"](**entry["init_params"], timeout=timedelta(minutes=timeout_min))


def set_reproducible(on: bool) -> None:
    """`reproducible=true`: deterministic algorithms (warn where none exists), TF32 off, cuDNN autotuning off.

    The class chunk sizes are then fixed numbers (see patterns/chunking.py), not read from the
    device's free memory. Results are then repeatable on one machine and world size; across GPU
    models they still differ in the last bits.
    """
    if not on:
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
