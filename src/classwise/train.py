"""`classwise-train`: compose the config, train a classifier in its setting, test it, search its patterns."""

from __future__ import annotations

import atexit
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from classwise.builders import (
    build_classifier,
    build_datamodule,
    build_logger,
    check_launch,
    destroy_process_group,
    plain,
)
from classwise.checkpoints import AtomicCheckpointIO, resume_meta
from classwise.config import cli_errors, command_line, conf_dir, validate
from classwise.errors import ConfigError
from classwise.launch import set_reproducible, strategy_with_timeout
from classwise.lit import ClassifierModule
from classwise.models.factory import architecture_of
from classwise.ranks import Ranks
from classwise.reporting.results import first_difference, read_results, update_results

log = logging.getLogger(__name__)


# Keys that say where and how a run reports, not what it computes: a rerun may change them freely.
NOT_RESULTS = ("paths", "logger", "resume")


def already_done(output_dir: Path, cfg: DictConfig | None = None) -> dict[str, Any] | None:
    """A finished run's results when they were made with this config (so a rerun sweep skips the job), else None.

    A finished folder of another config is refused in one line: reusing its results would report
    the old config under the new one.
    """
    results = read_results(output_dir)
    if not (results.get("metrics") and results.get("run")):
        return None
    recorded = results["run"].get("config")
    diff = first_difference(recorded or {}, plain(cfg), NOT_RESULTS) if cfg is not None else None
    if diff is not None:
        key, have, want = diff
        raise ConfigError(
            f"{output_dir / 'results.json'} holds a finished run of {key}={have}, not {want}; accepted: the same "
            f"config, another run folder (hydra.run.dir=<folder>), or delete {output_dir} to run it again"
        )
    return results


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint to resume from: `resume=` (a run folder or .ckpt), else this run folder's last.ckpt."""
    if cfg.get("resume"):
        path = Path(cfg.resume)
        if path.is_dir():
            path = path / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise ConfigError(f"resume={cfg.resume}: no checkpoint there; accepted: a run folder with checkpoints/last.ckpt, or a .ckpt file")
        return str(path)
    last = output_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def resume_from(cfg: DictConfig, output_dir: Path, meta: dict[str, Any]) -> str | None:
    """The checkpoint this run resumes from, checked readable and of this model and dataset; None: from scratch."""
    ckpt = resume_checkpoint(cfg, output_dir)
    stored = resume_meta(ckpt, explicit=bool(cfg.get("resume"))) if ckpt is not None else None
    if stored is None:
        return None
    check_resume_matches(ckpt, stored, meta)
    return ckpt


def ranks_before_fit(trainer: L.Trainer) -> Ranks:
    """The ranks that must share rank 0's skip and resume decisions before `fit`.

    Where the launcher started every process (torchrun, SLURM, MPI, LSF), each runs this script from
    the top: the process group is set up now, as `fit` would (it then finds it ready), so they can
    agree. Lightning's own `ddp` starts a node's other processes from rank 0's inside `fit`, after
    rank 0 decided, and `ddp_spawn`'s run only `fit`: there rank 0 decides alone.
    """
    from lightning.fabric.plugins.environments import LightningEnvironment

    env = getattr(trainer.strategy, "cluster_environment", None)
    if trainer.world_size < 2 or env is None or not env.creates_processes_externally or isinstance(env, LightningEnvironment):
        return Ranks(1)
    trainer.strategy.setup_environment()
    return Ranks.of(trainer.strategy, trainer.world_size)


def check_resume_matches(path: str, stored: dict[str, Any], meta: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint of another model or dataset (one line, before training)."""
    for group, keys in (("model", ("name",)), ("dataset", ("name", "channels", "num_classes", "image_size"))):
        for key in keys:
            have, want = (stored.get(group) or {}).get(key), meta[group].get(key)
            if have is not None and have != want:
                raise ConfigError(f"resume={path} is a checkpoint of {group}.{key}={have}, not {want}; "
                                  f"accepted: a checkpoint of the same {group}")


def evaluate_extras(trainer: L.Trainer, module: L.LightningModule, extras, dm) -> dict[str, Any]:
    """Backdoor ASR / PGD-20 after `trainer.test`, on rank 0 and the device the model trained on.

    Every rank holds the same model and test set, so any other rank would only repeat rank 0's
    numbers; after `trainer.test` no collective remains, so the other ranks need not wait for them.
    `trainer.test` ends with Lightning's teardown, which left the module on the CPU.
    """
    module.to(trainer.strategy.root_device)
    metrics: dict[str, Any] = {}
    for extra in extras:
        if extra is not None:
            metrics.update(extra.evaluate(module.model, dm))
    return metrics


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test and (through the PatternSearch callback) search; returns the results.json content."""
    validate(cfg)
    check_launch(plain(cfg.trainer))
    output_dir = Path(cfg.paths.output_dir)
    set_reproducible(bool(cfg.get("reproducible")))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    atexit.register(destroy_process_group)

    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c and "_target_" in c]
    from dataclasses import replace

    from classwise.callbacks import PatternSearch
    from classwise.patterns.references import training_recipe

    for cb in callbacks:  # the search after training knows the recipe it trained by (a detector's clean reference)
        if isinstance(cb, PatternSearch):
            cb.job = replace(cb.job, recipe=training_recipe(plain(cfg)))
            cb.job.check_references(plain(cfg.dataset))
    logger = build_logger(cfg, "train")
    extra = {"deterministic": "warn"} if cfg.get("reproducible") else {}
    strategy = strategy_with_timeout(cfg.trainer.get("strategy", "auto"), cfg.get("collective_timeout_min"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, strategy=strategy,
                                     plugins=[AtomicCheckpointIO()], **extra)
    ranks = ranks_before_fit(trainer)
    done = None if cfg.get("resume") else ranks.decide("the rerun check", lambda: already_done(output_dir, cfg))
    if done is not None:
        print(f"skipped: {output_dir / 'results.json'} exists (delete it to run again)")
        return done

    setting = cfg.setting
    poisoner = instantiate(setting.poisoner) if setting.get("poisoner") else None
    adversary = instantiate(setting.adversary) if setting.get("adversary") else None
    dataset_cfg, model_cfg = plain(cfg.dataset), plain(cfg.model)
    dm = build_datamodule(dataset_cfg, plain(cfg.data), cfg.seed, poisoner)
    model = build_classifier(model_cfg, dataset_cfg)
    meta = {"model": model_cfg, "dataset": dataset_cfg, "setting": plain(setting), "seed": int(cfg.seed)}
    ckpt = ranks.decide("the resume check", lambda: resume_from(cfg, output_dir, meta))
    with ranks.together("the resume check"):
        if ckpt is not None and not Path(ckpt).is_file():
            raise ConfigError(f"{ckpt}, rank 0's checkpoint to resume from, is not on this node; accepted: a run "
                              "folder every node can read (shared storage), or resume from scratch")
    module = ClassifierModule(
        model,
        optimizer=instantiate(cfg.module.optimizer),
        scheduler=instantiate(cfg.module.scheduler) if cfg.module.get("scheduler") else None,
        num_classes=dataset_cfg["num_classes"],
        adversary=adversary,
        meta=meta,
        channels_last=bool(cfg.module.get("channels_last", False)),
    )
    if logger:
        logger.log_hyperparams(plain(cfg))

    if trainer.local_rank == 0:
        # Finds or stages the data now, once per node: a missing dataset fails before training
        # starts. The other ranks wait at Lightning's prepare_data barrier inside fit().
        dm.prepare_data()
    if trainer.global_rank == 0:
        dm.setup()
        dm.save_splits(output_dir / "splits.safetensors")
        if poisoner is not None:
            poisoner.save(output_dir)
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    fit_seconds = time.perf_counter() - fit_start
    test_start = time.perf_counter()
    test_metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    metrics = {"clean_acc": float(test_metrics["test/clean_acc"])}
    robust = adversary
    if robust is None and cfg.get("robust_eval"):
        from classwise.attacks.pgd import robust_evaluation

        robust = robust_evaluation(cfg.dataset.adversarial, cfg.seed)
    if trainer.global_rank != 0:
        return {}
    metrics.update(evaluate_extras(trainer, module, (poisoner, robust), dm))
    test_seconds = time.perf_counter() - test_start
    last = output_dir / "checkpoints" / "last.ckpt"
    run = {
        "dataset": dataset_cfg["name"], "model": model_cfg["name"], "architecture": architecture_of(model_cfg),
        "setting": setting.name, "seed": int(cfg.seed),
        "checkpoint": str(last.relative_to(output_dir)) if last.exists() else None,
        "resumed_from": ckpt, "output_dir": str(output_dir), "config": plain(cfg),
    }
    # fit() also ran the PatternSearch callback (its `search_step` seconds): training is the rest.
    timing = read_results(output_dir).get("timing") or {}
    timing = {"train": round(fit_seconds - timing.get("search_step", 0.0), 2), "test": round(test_seconds, 2), **timing}
    path = update_results(output_dir, run=run, metrics=metrics, timing=timing)
    if logger:
        from classwise.reporting.wandb_log import log_run

        log_run(logger, output_dir, metrics)
    log.info("results: %s", path)
    print(f"clean_acc={metrics['clean_acc']:.4f}  results: {path}")
    return {"run": run, "metrics": metrics}


@hydra.main(config_path=conf_dir(), config_name="train", version_base="1.3")
@cli_errors
def _main(cfg: DictConfig) -> None:
    train(cfg)


def main() -> None:
    command_line("train", _main)


if __name__ == "__main__":
    main()
