"""What both entry points build from a composed config: data, classifier, logger, launch checks, Fabric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from classwise.errors import ConfigError
from classwise.models.external import build_classifier  # noqa: F401 - re-exported for the entry points


def destroy_process_group() -> None:
    """Registered at exit: without it gloo runs can abort while exiting (docs/clusters.md)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def plain(cfg: DictConfig | None) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}


def build_datamodule(dataset_cfg: dict[str, Any], data_cfg: dict[str, Any], seed: int, poisoner: Any = None):
    """The datamodule over `dataset_cfg` with the `data.*` settings; `seed` fixes its splits."""
    from classwise.data import ClasswiseDataModule

    return ClasswiseDataModule(dataset=dataset_cfg, seed=seed, poisoner=poisoner, **data_cfg)


def sweep_group() -> str | None:
    """One W&B group per Hydra multirun (its sweep folder's name); None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None


def build_logger(cfg: DictConfig, job_type: str):
    """The configured logger; W&B gets group, job type and tags, and goes offline when unreachable."""
    logger_cfg = cfg.get("logger")
    if not logger_cfg or "_target_" not in logger_cfg:
        return False
    if "WandbLogger" not in logger_cfg["_target_"]:
        return instantiate(logger_cfg)
    from classwise.reporting.wandb_log import CHECK_TIMEOUT, wandb_mode

    setting = cfg.get("setting") or {}
    tags = [f"setting:{setting.get('name', 'search')}", f"dataset:{cfg.dataset.name}", f"model:{cfg.model.name}"]
    if setting.get("poisoner"):
        tags.append(f"trigger:{cfg.trigger._target_.rsplit('.', 1)[-1].lower()}")
    wandb_cfg = plain(logger_cfg)
    from classwise.config import check_wandb

    check_wandb(logger_cfg)
    timeout = wandb_cfg.pop("server_timeout", CHECK_TIMEOUT)  # ours, not WandbLogger's
    logger = instantiate(wandb_cfg, mode=wandb_mode(wandb_cfg.get("mode"), timeout), group=sweep_group(),
                         job_type=job_type, tags=tags)
    # Lightning always passes `anonymous`, which wandb no longer reads and warns about on every run.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger


def check_launch(trainer_cfg: dict[str, Any]) -> None:
    """`ddp` relaunches the script with its argv, which inside --multirun would rerun the whole sweep.

    Allowed where the cluster started one process per device (SLURM tasks, torchrun): Lightning
    then attaches to those processes and relaunches nothing.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from classwise.launch import check_run_folder, cluster_started_processes

    check_run_folder()
    try:
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        multirun = False
    strategy = str(trainer_cfg.get("strategy", "auto"))
    if multirun and strategy.startswith("ddp") and strategy != "ddp_spawn" and not cluster_started_processes():
        raise ConfigError(
            f"trainer.strategy={trainer_cfg.get('strategy')} cannot run inside --multirun (its workers relaunch the "
            "whole sweep); accepted: trainer.strategy=ddp_spawn, or ddp with one SLURM task / torchrun process per device"
        )


def make_fabric(trainer_cfg: dict[str, Any], collective_timeout_min: float | None = None):
    """A Lightning Fabric with the trainer config's accelerator, devices, strategy and nodes.

    Its precision stays fp32: the search's own `search.precision` decides autocast.
    """
    from lightning.fabric import Fabric

    from classwise.launch import strategy_with_timeout

    strategy = strategy_with_timeout(trainer_cfg.get("strategy", "auto"), collective_timeout_min, fabric=True)
    return Fabric(
        accelerator=trainer_cfg.get("accelerator", "auto"), devices=trainer_cfg.get("devices", 1),
        strategy=strategy, num_nodes=trainer_cfg.get("num_nodes", 1),
    )
