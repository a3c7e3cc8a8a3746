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
