"""`classwise-search`: the class-wise pattern search on any model: a checkpoint of any known layout, a timm or torchvision model."""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from classwise.auditing import clean_accuracy
from classwise.builders import (
    build_datamodule,
    build_logger,
    check_launch,
    destroy_process_group,
    make_fabric,
    plain,
)
from classwise.config import cli_errors, command_line, conf_dir, validate
from classwise.errors import ConfigError
from classwise.launch import set_reproducible
from classwise.models.external import load_model
from classwise.models.factory import architecture_of
from classwise.models.loading import read_checkpoint
from classwise.patterns.references import recipe_of_checkpoint
from classwise.pipeline.search_step import SearchJob, run_pattern_search
from classwise.pipeline.settings import parse_settings
from classwise.ranks import Ranks
from classwise.reporting.results import read_results, update_results

log = logging.getLogger(__name__)
MATCH_KEYS = ("name", "image_size", "channels", "num_classes")


def _user_chose(group: str) -> bool:
    try:
        return any(o.split("=")[0].lstrip("+~") == group for o in HydraConfig.get().overrides.task)
    except ValueError:
        return False


def configs_for(cfg: DictConfig, meta: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(model, dataset, setting) configs: from a classwise checkpoint's `meta` where it carries them, else from cfg."""
    model_cfg, dataset_cfg, setting = plain(cfg.model), plain(cfg.dataset), {"name": "unknown"}
    if meta:
        model_cfg = meta["model"]
        setting = meta.get("setting", setting)
        stored = meta["dataset"]
        if _user_chose("dataset"):
            for key in MATCH_KEYS:
                if stored.get(key) != dataset_cfg.get(key):
                    raise ConfigError(
                        f"dataset.{key}={dataset_cfg.get(key)} does not match the checkpoint's {stored.get(key)}; "
                        "accepted: the dataset the model was trained on (leave dataset= unset to use it)"
                    )
        else:
            local = {k: v for k, v in dataset_cfg.items() if k in ("root", "download")}
            dataset_cfg = {**stored, **(local if stored.get("name") == dataset_cfg.get("name") else {})}
            if "root" in stored and stored.get("name") != dataset_cfg.get("name"):
                dataset_cfg["root"] = plain(cfg.paths)["data_dir"]
    return model_cfg, dataset_cfg, setting


def search(cfg: DictConfig) -> dict[str, Any] | None:
    """Validate, then run the search on every process of the configured strategy (rank 0 writes)."""
    validate(cfg)
    if cfg.get("skip_finished"):
        done = read_results(Path(cfg.paths.output_dir))
        finished = done.get("metrics") is not None and done.get("detectors") is not None  # metrics come last
        if finished and (done.get("run") or {}).get("config", {}).get("detector") == plain(cfg.detector):
            print(f"skipped: {Path(cfg.paths.output_dir) / 'results.json'} holds this detector config")
            return done
    trainer_cfg = plain(cfg.trainer)
    check_launch(trainer_cfg)
    if cfg.get("checkpoint"):
        read_checkpoint(cfg.checkpoint)  # a bad path or layout, or a pickled object, fails before processes start
    set_reproducible(bool(cfg.get("reproducible")))
    atexit.register(destroy_process_group)
    fabric = make_fabric(trainer_cfg, cfg.get("collective_timeout_min"))
    return fabric.launch(_search_worker, cfg, str(Path(cfg.paths.output_dir)))


def _search_worker(fabric, cfg: DictConfig, output_dir: str) -> dict[str, Any] | None:
    output_dir = Path(output_dir)
    rank, world = fabric.global_rank, fabric.world_size
    ckpt = read_checkpoint(cfg.checkpoint) if cfg.get("checkpoint") else None
    meta = ckpt.classwise if ckpt else {}
    model_cfg, dataset_cfg, setting = configs_for(cfg, meta)
    if ckpt is None and not model_cfg.get("pretrained"):
        raise ConfigError("checkpoint is not set; accepted: checkpoint=<run folder or checkpoint file>, or "
                          "model=torchvision|timm model.pretrained=true")
    model = load_model(model_cfg, dataset_cfg, ckpt)
    # The data exactly as the model was trained on it: its seed's splits and, for a backdoored
    # checkpoint, its poisoned training set (so `canvas_source=train` can pick a poisoned canvas).
    data_seed = int(meta.get("seed", cfg.seed))
    poisoner = None
    if (setting.get("poisoner") or {}).get("_target_"):
        from hydra.utils import instantiate

        poisoner = instantiate(setting["poisoner"])
    dm = build_datamodule(dataset_cfg, plain(cfg.data), data_seed, poisoner)
    if fabric.local_rank == 0:  # once per node; setup() never downloads
        dm.prepare_data()
    fabric.barrier()
    dm.setup()
    model.to(fabric.device)
    trigger = getattr(poisoner, "trigger", None)
    target = getattr(poisoner, "target_class", None)
    if cfg.get("patterns_from"):
        if rank != 0:
            return None
        from classwise.pipeline.transfer import run_transfer

        summary = {"transfer": run_transfer(model, dm, cfg.patterns_from, output_dir, parse_settings(cfg.search))}
    else:
        job = SearchJob.of(cfg.search, plain(cfg.get("detector")), cfg.get("threat_model", "clean_data"),
                           trigger=trigger, target_class=target, progress=rank == 0, model_name=model_cfg.get("name"),
                           recipe=recipe_of_checkpoint(ckpt.path if ckpt else None))
        job.check_references(dataset_cfg)
        summary = run_pattern_search(model, dm, job, output_dir, Ranks.of(fabric.strategy, world))
    if rank != 0:
        return None
    run = {"dataset": dataset_cfg["name"], "model": model_cfg["name"], "setting": setting.get("name"), "seed": int(cfg.seed),
           "checkpoint": str(ckpt.path.resolve()) if ckpt else None, "checkpoint_layout": ckpt.layout if ckpt else None,
           "output_dir": str(output_dir), "config": plain(cfg), "job_type": "search"}
    run["architecture"] = architecture_of(model_cfg)
    metrics = {"clean_acc": clean_accuracy(model, dm)}
    if cfg.get("robust_eval"):
        from classwise.attacks.pgd import robust_evaluation

        adv = cfg.dataset.adversarial if "adversarial" not in dataset_cfg else dataset_cfg["adversarial"]
        metrics.update(robust_evaluation(adv, cfg.seed).evaluate(model, dm))
    if poisoner is not None:
        metrics.update(poisoner.evaluate(model, dm))
    update_results(output_dir, run=run, metrics=metrics)
    logger = build_logger(cfg, "search")
    if logger:
        from classwise.reporting.wandb_log import log_run

        logger.log_hyperparams(plain(cfg))
        log_run(logger, output_dir, metrics)
    print(f"clean_acc={metrics['clean_acc']:.4f}  results: {output_dir / 'results.json'}")
    return {"run": run, **(summary or {})}


@hydra.main(config_path=conf_dir(), config_name="search", version_base="1.3")
@cli_errors
def _main(cfg: DictConfig) -> None:
    search(cfg)


def main() -> None:
    command_line("search", _main)


if __name__ == "__main__":
    main()
