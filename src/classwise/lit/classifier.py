"""One LightningModule for natural, backdoored and adversarial training: the setting picks data or step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class ClassifierModule(L.LightningModule):
    """Trains `model` with cross-entropy; with an `adversary`, on the adversary's examples instead.

    `optimizer` and `scheduler` are partials (Hydra `_partial_: true`) completed with the
    parameters and the optimiser. `meta` (plain dicts: model and dataset config) is stored in every
    checkpoint so `classwise-search` can rebuild the model from the checkpoint alone.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        scheduler: Callable[..., Any] | None = None,
        adversary: Any = None,
        meta: dict[str, Any] | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.channels_last = channels_last
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.adversary = adversary
        self.meta = meta or {}
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # `channels_last`: NHWC weights and batches while training only, where the layout pays (on a CPU
    # too: docs/speed.md); the model is put back in the default layout when training ends, so what
    # follows (the search, checkpoints reloaded by classwise-search) sees the usual one.
    def setup(self, stage: str) -> None:  # before a strategy wraps the model (DDP buckets follow the layout)
        if self.channels_last and stage == "fit":
            self.model.to(memory_format=torch.channels_last)

    def on_train_end(self) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.adversary is not None:
            x = self.adversary.training_examples(self.model, x, y)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.test_acc(logits, y)
        self.log("test/clean_acc", self.test_acc)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["classwise"] = self.meta
