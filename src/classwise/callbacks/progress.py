"""Lightning's progress in the package's progress mode: its TQDM bar on a terminal, lines in a log, or none."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from classwise.progress import LogBar, progress_mode


def progress_bar(refresh_rate: int = 20, interval: float | None = None) -> ProgressBar:
    """The progress callback for CLASSWISE_PROGRESS: `bar` -> TQDMProgressBar, `log` -> LogProgressBar, `none` -> off."""
    mode = progress_mode()
    if mode == "log":
        return LogProgressBar(interval)
    # refresh_rate 0 is Lightning's own way to keep a progress callback (so no default bar is added) silent.
    return TQDMProgressBar(refresh_rate=refresh_rate if mode == "bar" else 0)


class LogProgressBar(ProgressBar):
    """Training, validation and test progress as a line every `interval` seconds, and one line per epoch."""

    def __init__(self, interval: float | None = None):
        super().__init__()
        self.interval = interval
        self.enabled = True
        self.bar: LogBar | None = None  # the epoch's (or the test's)
        self.val_bar: LogBar | None = None

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def _new_bar(self, total: Any, desc: str, final_line: bool = True) -> LogBar:
        known = total if isinstance(total, int) else None  # inf or unknown: a count without a percentage
        return LogBar(total=known, desc=desc, disable=not self.enabled, interval=self.interval,
                      final_line=final_line, unit="batch")

    @staticmethod
    def _advance(bar: LogBar | None, n: int, metrics: dict[str, Any] | None = None) -> None:
        if bar is None:
            return
        if metrics:
            bar.set_postfix(metrics, refresh=False)
        bar.n = n
        bar.refresh()

    @staticmethod
    def _close(bar: LogBar | None) -> None:
        if bar is not None:
            bar.close()

    def _metrics(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
        return {k: v for k, v in self.get_metrics(trainer, module).items() if k != "v_num"}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(self.bar)
        self.bar = self._new_bar(self.total_train_batches, f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._advance(self.bar, batch_idx + 1, self._metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation has run inside the epoch by now, so the epoch's last line carries val/* too.
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix(self._metrics(trainer, pl_module), refresh=False)
            self.bar.print_line()
        self.bar = self._close(self.bar)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.has_dataloader_changed(dataloader_idx) and not trainer.sanity_checking:
            # Its own bar beside the epoch's; only a long validation prints (the epoch's line has val/*).
            self._close(self.val_bar)
            self.val_bar = self._new_bar(self.total_val_batches_current_dataloader, "validation", final_line=False)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._advance(self.val_bar, batch_idx + 1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.val_bar = self._close(self.val_bar)
        self.reset_dataloader_idx_tracker()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            self._close(self.bar)
            self.bar = self._new_bar(self.total_test_batches_current_dataloader, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._advance(self.bar, batch_idx + 1)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.bar = self._close(self.bar)
        self.reset_dataloader_idx_tracker()
