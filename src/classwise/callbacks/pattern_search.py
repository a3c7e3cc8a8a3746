"""The PatternSearch callback: after `fit`, every class's pattern on the trained model, sharded over ranks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from classwise.pipeline.search_step import SearchJob, run_pattern_search
from classwise.ranks import Ranks


class PatternSearch(Callback):
    """After `fit`, find every class's pattern on the trained model (classes sharded over ranks)."""

    def __init__(self, search: dict[str, Any] | DictConfig, output_dir: str, enabled: bool = True,
                 detector: dict[str, Any] | DictConfig | None = None, threat_model: str = "clean_data",
                 model_name: str | None = None):
        super().__init__()
        if isinstance(detector, DictConfig):
            detector = OmegaConf.to_container(detector, resolve=True)
        # Built and validated here: a bad config fails before training, not after it.
        self.job = SearchJob.of(search, detector, threat_model, model_name=model_name)
        self.output_dir = output_dir
        self.enabled = enabled
        self.summary: dict[str, Any] | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        # Lightning calls on_fit_end after its teardown, which moved the module to the CPU
        # (Strategy.teardown: lightning_module.cpu()): search on the device the model trained on.
        # The default layout too: a fit resumed from a finished checkpoint skips on_train_end, which
        # would have undone `module.channels_last`, and a layout changes the search's last bits.
        pl_module.to(trainer.strategy.root_device, memory_format=torch.contiguous_format)
        ranks = Ranks.of(trainer.strategy, trainer.world_size)
        poisoner = getattr(trainer.datamodule, "poisoner", None)
        job = replace(self.job, trigger=getattr(poisoner, "trigger", None), target_class=getattr(poisoner, "target_class", None),
                      progress=trainer.global_rank == 0)
        # Rank 0 alone writes outputs and runs detection: the others wait at the end of this block,
        # under the configured collective timeout, and raise with rank 0 when it fails.
        with ranks.together("pattern search"):
            self.summary = run_pattern_search(pl_module.model, trainer.datamodule, job, self.output_dir, ranks=ranks)
