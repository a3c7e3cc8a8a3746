"""The GPU path on CPU: the search runs on the trained model's device, chunked passes equal unchunked ones."""

from __future__ import annotations

import functools

import lightning as L
import pytest
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


# ---- launches: one run folder per launch, ddp under a cluster launcher, collective timeout -------------
@pytest.mark.parametrize("env, expected", [
    ({"CLASSWISE_RUN_DIR": "/shared/run7"}, "/shared/run7"),
    ({"TORCHELASTIC_RUN_ID": "job42", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, "base/torchrun-job42"),
    ({"SLURM_NTASKS": "16", "SLURM_JOB_ID": "991", "SLURM_STEP_ID": "0"}, "base/slurm-991.0"),
])
def test_every_process_of_a_launch_gets_one_run_folder(monkeypatch, env, expected):
    from classwise.launch import run_folder

    for key in ("CLASSWISE_RUN_DIR", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert run_folder("base") == expected


def test_composed_run_dir_comes_from_the_launch(monkeypatch):
    from hydra import compose, initialize_config_dir

    from classwise.config import conf_dir

    monkeypatch.setenv("CLASSWISE_RUN_DIR", "/shared/run8")
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    assert cfg.hydra.run.dir == "/shared/run8"


def test_torchrun_on_several_nodes_without_an_id_is_refused(monkeypatch):
    from classwise.builders import check_launch
    from classwise.errors import ConfigError

    monkeypatch.delenv("CLASSWISE_RUN_DIR", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(ConfigError, match="rdzv-id"):
        check_launch({"strategy": "ddp"})


def test_ddp_in_a_multirun_is_allowed_when_slurm_started_the_processes(monkeypatch, tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from classwise.builders import check_launch
    from classwise.errors import ConfigError

    for key in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"mode": RunMode.MULTIRUN})))
    with pytest.raises(ConfigError, match="ddp_spawn"):
        check_launch({"strategy": "ddp"})
    monkeypatch.setenv("SLURM_NTASKS", "8")
    check_launch({"strategy": "ddp"})


def test_ddp_strategy_carries_the_collective_timeout():
    from datetime import timedelta

    from classwise.launch import strategy_with_timeout

    for fabric in (False, True):
        strategy = strategy_with_timeout("ddp_spawn", 90, fabric=fabric)
        assert strategy._timeout == timedelta(minutes=90) and strategy._start_method == "spawn"
    assert strategy_with_timeout("auto", 90) == "auto"


def test_trainer_ddp_trains_in_the_precision_of_trainer_gpu():
    from omegaconf import OmegaConf

    from classwise.config import conf_dir

    ddp, gpu = (OmegaConf.load(f"{conf_dir()}/trainer/{n}.yaml") for n in ("ddp", "gpu"))
    assert ddp.precision == gpu.precision == "bf16-mixed"


# ---- chunked == unchunked for every class-batched pass; uint8 == float; precision options ----------------
@pytest.fixture(scope="module")
def small():
    from classwise.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 5, 16, [0.5], [0.25])
    g = torch.Generator().manual_seed(1)
    pool = torch.randint(0, 256, (60, 1, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.arange(60) % 5
    canvases = torch.rand(5, 1, 16, 16, generator=g)
    return model, pool, labels, canvases


def test_search_chunked_equals_unchunked_and_uint8_equals_float(small):
    from classwise.patterns.search import ImageSet, SearchConfig, SearchOptions, search_patterns

    model, pool, labels, canvases = small
    run = lambda images, max_forward: search_patterns(  # noqa: E731
        model, canvases, list(range(5)), ImageSet(images, labels), SearchConfig(steps=15, batch_size=4, max_forward=max_forward),
        SearchOptions(progress=False)).masks
    whole = run(pool, 1000)
    assert torch.equal(run(pool, 8), whole)  # 2 classes a chunk
    assert torch.equal(run(pool.float() / 255, 1000), whole)


def test_evaluation_and_prediction_chunked_equal_unchunked(small):
    from classwise.patterns.evaluate import EvalOptions, attack_success_rates, predict
    from classwise.patterns.search import ImageSet, top_pixels

    model, pool, labels, canvases = small
    pix = top_pixels(torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(2)), 0.2)
    tgt = torch.arange(5)
    whole = attack_success_rates(model, canvases, pix, tgt, ImageSet(pool, labels), EvalOptions(max_forward=10_000))
    assert torch.equal(attack_success_rates(model, canvases, pix, tgt, ImageSet(pool, labels), EvalOptions(max_forward=7)), whole)
    assert torch.equal(attack_success_rates(model, canvases, pix, tgt, ImageSet(pool.float() / 255, labels)), whole)
    assert torch.equal(predict(model, pool, batch_size=7), predict(model, pool.float() / 255, batch_size=1000))


def test_uap_chunked_equals_unchunked(small):
    from classwise.patterns.baselines import UAPConfig, targeted_uaps
    from classwise.patterns.chunking import RunOptions
    from classwise.patterns.search import ImageSet

    model, pool, labels, _ = small
    cfg = UAPConfig(steps=10, batch_size=4)
    whole = targeted_uaps(model, list(range(5)), ImageSet(pool, labels), cfg, RunOptions(1000, progress=False))
    assert torch.equal(targeted_uaps(model, list(range(5)), ImageSet(pool, labels), cfg, RunOptions(8, progress=False)), whole)


def test_neural_cleanse_chunked_equals_unchunked(small):
    from classwise.patterns.chunking import RunOptions
    from classwise.patterns.neural_cleanse import NeuralCleanseConfig, neural_cleanse
    from classwise.patterns.search import ImageSet

    model, pool, labels, _ = small
    cfg = NeuralCleanseConfig(epochs=4, epoch_size=20, batch_size=4, patience=1)
    whole = neural_cleanse(model, list(range(5)), ImageSet(pool, labels), cfg, RunOptions(1000, progress=False))
    chunked = neural_cleanse(model, list(range(5)), ImageSet(pool, labels), cfg, RunOptions(8, progress=False))
    whole.pop("seconds"), chunked.pop("seconds")
    assert_same_detection(chunked, whole)


def assert_same_detection(a: dict, b: dict) -> None:
    """Equal blocks up to float noise: a pass of another batch size may take another kernel (oneDNN picks by
    shape), and Adam carries a last-bit difference on through the epochs; every decision must agree."""
    floats = ("values", "anomaly_index", "median", "score")
    assert {k: v for k, v in a.items() if k not in floats} == {k: v for k, v in b.items() if k not in floats}
    for key in floats:
        assert a[key] == pytest.approx(b[key], rel=0.02, abs=0.05)


def test_neural_cleanse_sharded_over_ranks_equals_one_process(small):
    """Each rank's share of the classes, concatenated in any order, gives the one-process detection block."""
    from classwise.patterns.chunking import RunOptions
    from classwise.patterns.detectors import Detector
    from classwise.patterns.neural_cleanse import (
        NeuralCleanseConfig,
        nc_detection,
        neural_cleanse,
        neural_cleanse_masks,
    )
    from classwise.patterns.search import ImageSet

    model, pool, labels, _ = small
    cfg = NeuralCleanseConfig(epochs=4, epoch_size=20, batch_size=4, patience=1)
    whole = neural_cleanse(model, list(range(5)), ImageSet(pool, labels), cfg, RunOptions(progress=False))
    shares = [neural_cleanse_masks(model, classes, ImageSet(pool, labels), cfg, RunOptions(progress=False))
              for classes in ([1, 3], [0, 2, 4])]
    sharded = nc_detection(Detector().join(shares), cfg)  # the join every sharded detector uses
    whole.pop("seconds"), sharded.pop("seconds")
    assert_same_detection(sharded, whole)
    assert sharded["classes"] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_attribution_maps_chunked_equal_unchunked(small, method):
    from classwise.patterns.baselines import attribution_map

    model, _, _, canvases = small
    tgt = torch.arange(5)
    whole = attribution_map(model, canvases, tgt, method, max_forward=1000)
    assert torch.allclose(attribution_map(model, canvases, tgt, method, max_forward=2), whole, atol=1e-6)


def test_channels_last_equals_and_bf16_stays_close(small):
    from classwise.patterns.evaluate import attack_success_rates
    from classwise.patterns.search import (
        ImageSet,
        SearchConfig,
        SearchOptions,
        search_patterns,
        top_pixels,
    )

    model, pool, labels, canvases = small
    run = lambda **kw: search_patterns(model, canvases, list(range(5)), ImageSet(pool, labels),  # noqa: E731
                                       SearchConfig(steps=30, batch_size=4, **kw), SearchOptions(progress=False)).masks
    fp32 = run()
    assert torch.allclose(run(channels_last=True), fp32, atol=1e-5)
    assert next(model.parameters()).is_contiguous()  # the model's memory format is restored
    bf16 = run(precision="bf16")
    pix32, pix16 = top_pixels(fp32, 0.1), top_pixels(bf16, 0.1)
    assert (pix32 & pix16).sum() >= 0.7 * pix32.sum()  # most chosen pixels agree
    asr = [attack_success_rates(model, canvases, p, torch.arange(5), ImageSet(pool, labels)) for p in (pix32, pix16)]
    assert (asr[0] - asr[1]).abs().max() <= 0.15


def test_cuda_graph_refuses_on_cpu_with_one_line(small):
    from classwise.errors import ConfigError
    from classwise.patterns.search import ImageSet, SearchConfig, SearchOptions, search_patterns

    model, pool, labels, canvases = small
    with pytest.raises(ConfigError, match="search.cuda_graph=true needs a CUDA device") as err:
        search_patterns(model, canvases[:1], [0], ImageSet(pool, labels), SearchConfig(steps=1, cuda_graph=True),
                        SearchOptions(progress=False))
    assert "\n" not in str(err.value)


def test_gpu_check_runs_in_its_cpu_mode(tmp_path, capsys):
    from classwise.gpu_check import main

    report = main(["--cpu", "--out", str(tmp_path / "gpu_check.json")])
    assert "SMALL CPU SIZES" in capsys.readouterr().out
    assert report["callback"]["same"] and report["callback"]["trained on"] == "cpu"
    assert [r["precision"] for r in report["speed"]] == ["32", "bf16", "32", "bf16"]
    assert all(r["search img/s"] > 0 and 0 <= r["mean ASR@5%"] <= 1 for r in report["speed"])
    assert all(r["images per pass"] >= 1 and r["s per step"] > 0 for r in report["many_classes"])
    assert (tmp_path / "gpu_check.json").is_file()
