"""Progress output: whole lines (not carriage-return refreshes) in a log, none when asked, Lightning's too."""

from __future__ import annotations

import io
import sys

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from classwise.callbacks.progress import LogProgressBar, progress_bar
from classwise.errors import ConfigError
from classwise.progress import LogBar, progress_mode, tqdm


def test_log_bar_prints_whole_lines_at_the_interval_and_one_at_the_end():
    out = io.StringIO()
    for _ in LogBar(range(50), desc="pattern search", file=out, interval=3600):
        pass
    assert out.getvalue().count("\n") == 1 and "\r" not in out.getvalue()
    assert out.getvalue().startswith("pattern search: 100% 50/50 [")

    out = io.StringIO()
    bar = LogBar(total=4, desc="every step", file=out, interval=0)
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split("[")[0] for line in lines] == [f"every step: {p:3d}% {n}/4 " for p, n in
                                                     ((25, 1), (50, 2), (75, 3), (100, 4))]


def test_mode_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("CLASSWISE_PROGRESS", "auto")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no terminal
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert progress_mode() == "log"
    monkeypatch.undo()
    monkeypatch.setenv("CLASSWISE_PROGRESS", "none")
    for _ in tqdm(range(10), desc="quiet"):
        pass
    assert "quiet" not in capsys.readouterr().err
    monkeypatch.setenv("CLASSWISE_PROGRESS", "bar")
    assert progress_mode() == "bar"
    monkeypatch.setenv("CLASSWISE_PROGRESS", "sometimes")
    with pytest.raises(ConfigError, match="CLASSWISE_PROGRESS='sometimes'.*accepted: auto, bar, log, none"):
        progress_mode()
    monkeypatch.setenv("CLASSWISE_PROGRESS", "log")
    monkeypatch.setenv("CLASSWISE_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="CLASSWISE_PROGRESS_INTERVAL='soon'"):
        tqdm(range(3))


class ShownValidation(BoringModel):
    def validation_step(self, batch, batch_idx):
        loss = super().validation_step(batch, batch_idx)["x"]
        self.log("val/loss", loss, prog_bar=True)


def test_lightning_progress_in_a_log_is_one_line_per_epoch_with_its_metrics(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CLASSWISE_PROGRESS", "log")
    callback = progress_bar()
    assert isinstance(callback, LogProgressBar)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=5, limit_val_batches=2, limit_test_batches=3,
                        callbacks=[callback], logger=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    model = ShownValidation()
    trainer.fit(model)
    trainer.test(model, verbose=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("epoch", "test", "valid"))]
    assert [line.split(" [")[0] for line in lines] == ["epoch 1/2: 100% 5/5", "epoch 2/2: 100% 5/5", "test: 100% 3/3"]
    assert "val/loss=" in lines[0]  # the epoch's line carries what validation measured

    monkeypatch.setenv("CLASSWISE_PROGRESS", "none")
    assert progress_bar().is_disabled
