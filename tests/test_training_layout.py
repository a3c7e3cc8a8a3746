"""NHWC training (`module.channels_last`): weights and batches in channels_last while training, the
default layout again once training ends (what the search and a reloaded checkpoint see)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from classwise.lit import ClassifierModule
from classwise.models.small_cnn import SmallCNN


class LayoutSeen(L.Callback):
    def __init__(self):
        self.during: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        convs = [p for p in pl_module.model.parameters() if p.dim() == 4]
        self.during.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in convs))


@pytest.mark.parametrize("channels_last", [True, False])
def test_training_layout_is_nhwc_only_while_training(channels_last):
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 16, 16), torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    module = ClassifierModule(SmallCNN(1, 3, width=4, hidden=8, image_size=16),
                              optimizer=lambda params: torch.optim.SGD(params, lr=0.1), num_classes=3,
                              channels_last=channels_last)
    seen = LayoutSeen()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[seen])
    trainer.fit(module, loader, loader)
    assert seen.during and all(seen.during) == channels_last
    convs = [p for p in module.model.parameters() if p.dim() == 4]
    assert all(p.is_contiguous() for p in convs)  # back to the default layout for the search
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_a_fit_resumed_after_training_ended_searches_the_default_layout(monkeypatch, tmp_path):
    """Killed during the search and run again: the fit restores a finished checkpoint and trains nothing,
    so Lightning skips on_train_end; the search must still get the default layout (a layout changes its
    last bits, and the signed update turns those into other masks than the uninterrupted run's)."""
    from classwise.callbacks import pattern_search

    seen: list[bool] = []

    def stand_in(model, *args, **kwargs):
        seen.append(all(p.is_contiguous() for p in model.parameters() if p.dim() == 4))
        return {}

    monkeypatch.setattr(pattern_search, "run_pattern_search", stand_in)
    x, y = torch.rand(64, 1, 16, 16), torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    for ckpt_path in (None, tmp_path / "last.ckpt"):
        module = ClassifierModule(SmallCNN(1, 3, width=4, hidden=8, image_size=16),
                                  optimizer=lambda params: torch.optim.SGD(params, lr=0.1), num_classes=3,
                                  channels_last=True)
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path,
                            callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True),
                                       pattern_search.PatternSearch({"steps": 1}, str(tmp_path))])
        trainer.fit(module, loader, loader, ckpt_path=ckpt_path)
    assert trainer.global_step == 4  # the second fit resumed at the end and trained no step
    assert seen == [True, True]
