"""The GPU path on CPU: the search runs on the trained model's device, chunked passes equal unchunked ones."""

from __future__ import annotations

import functools

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from classwise.builders import build_classifier, build_datamodule
from classwise.lit import ClassifierModule

DATASET = {"name": "synthetic", "image_size": 8, "channels": 1, "num_classes": 3, "num_train": 96, "num_test": 96,
           "seed": 0, "mean": [0.5], "std": [0.25]}
MODEL = {"name": "small_cnn"}
META = torch.device("meta")  # a device that is not the CPU: stands in for the GPU the model trained on


def _module_and_data():
    dm = build_datamodule(DATASET, {"batch_size": 32}, seed=0)
    model = build_classifier(MODEL, DATASET)
    return ClassifierModule(model, optimizer=functools.partial(torch.optim.SGD, lr=0.01), num_classes=3), dm


def _trainer(callbacks):
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks)


def _device(module) -> torch.device:
    return next(module.parameters()).device


class TrainedOnMeta(Callback):
    """From the end of training on, the strategy reports `meta` as its root device (as a GPU run would
    report cuda:0); Lightning's teardown then still moves the module to the CPU before on_fit_end."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.device_at_fit_end: torch.device | None = None

    def on_train_end(self, trainer, pl_module):
        self.monkeypatch.setattr(type(trainer.strategy), "root_device", property(lambda self: META))

    def on_fit_end(self, trainer, pl_module):
        self.device_at_fit_end = _device(pl_module)


def test_search_after_fit_runs_on_the_root_device(monkeypatch, tmp_path):
    from classwise.callbacks import pattern_search

    seen = {}

    def stand_in(model, dm, settings, run_dir, **kw):
        seen["model"] = _device(model)
        seen["root"] = trainer.strategy.root_device
        return {}

    monkeypatch.setattr(pattern_search, "run_pattern_search", stand_in)
    probe = TrainedOnMeta(monkeypatch)
    search = pattern_search.PatternSearch({"steps": 1}, str(tmp_path))
    module, dm = _module_and_data()
    trainer = _trainer([probe, search])  # probe's on_fit_end runs first: what the search callback is handed
    trainer.fit(module, datamodule=dm)
    assert probe.device_at_fit_end == torch.device("cpu")  # Lightning's teardown did move it off the root device
    assert seen["root"] == META and seen["model"] == META


def test_backdoor_and_robust_evaluations_run_on_the_root_device(monkeypatch):
    from classwise.train import evaluate_extras

    module, dm = _module_and_data()
    trainer = _trainer([])
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    assert _device(module) == torch.device("cpu")
    monkeypatch.setattr(type(trainer.strategy), "root_device", property(lambda self: META))

    class Recorder:
        def evaluate(self, model, dm):
            return {"device": str(_device(model))}

    assert evaluate_extras(trainer, module, (None, Recorder()), dm) == {"device": "meta"}
