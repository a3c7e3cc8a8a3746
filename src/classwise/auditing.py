"""`classwise.audit(model, dataset)`: every class's pattern of any model and the backdoor verdict, from a notebook or the CLI."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from classwise.errors import ConfigError
from classwise.models.convention import InputAdapter, InputConvention
from classwise.patterns.settings import SearchSettings


@dataclass
class Audit:
    """What an audit found: per-class patterns and attack success, the detection verdict; `figure()`, `to_json()`."""

    results: dict[str, Any]  # the run's results.json
    masks: dict[int, torch.Tensor]  # class index -> continuous mask [1, H, W]
    canvases: dict[int, torch.Tensor]  # class index -> canvas [C, H, W]
    output_dir: Path
    scores: dict[int, torch.Tensor] | None = None  # class index -> tie-break score [1, H, W] (older runs: none)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> Audit:
        """The audit of a run folder written by `audit()`, `classwise-search` or `classwise-train`."""
        from safetensors.torch import load_file

        run_dir = Path(run_dir)
        results = json.loads((run_dir / "results.json").read_text())
        tensors = load_file(str(run_dir / results["search"]["masks_file"]))
        idx = [c["class_index"] for c in results["classes"]]
        scores = {i: tensors[f"score_{i}"] for i in idx if f"score_{i}" in tensors}
        return cls(results, {i: tensors[f"class_{i}"] for i in idx}, {i: tensors[f"canvas_{i}"] for i in idx}, run_dir,
                   scores)

    @property
    def classes(self) -> list[dict[str, Any]]:
        """Per searched class: class_index, class_name, mask_l1, by_ratio (asr, base_rate, baselines per pattern ratio)."""
        return self.results["classes"]

    @property
    def detection(self) -> dict[str, Any] | None:
        """The run's verdict block (its first detector's): verdict, reason, score, predicted_target, threat_model."""
        return self.results.get("detection")

    @property
    def detectors(self) -> dict[str, dict[str, Any]]:
        """Every detector's block by name (results.json `detectors`)."""
        from classwise.reporting.results import detector_blocks

        return detector_blocks(self.results)

    @property
    def flagged(self) -> list[str]:
        """Names of the classes the run's detector names as a backdoor's target (empty: none)."""
        det = self.detection or {}
        return [det["predicted_name"]] if det.get("verdict") == "backdoored" and det.get("predicted_name") else []

    @property
    def verdict(self) -> str:
        """`backdoored: ...`, `clean: ...` or `abstained: ...` with the reason and the threat model; never
        `clean` for a detector that could not judge."""
        det = self.detection
        if not det or det.get("detector") is None:
            return "abstained: no detector ran (detector=none)"
        if "verdict" not in det:  # results.json before schema 3: the patterns' MAD block alone
            flagged = ", ".join(f"class {c}" for c in det.get("flagged") or []) or "no class"
            return f"no verdict recorded (results.json schema < 3); the anomaly index flagged {flagged}"
        target = det.get("predicted_target")
        named = f" class {target} ({det.get('predicted_name')})," if target is not None else ""
        return f"{det['verdict']}:{named} {det['reason']} [{det['detector']}, threat model {det['threat_model']}]"

    def asr(self, ratio: float | None = None) -> dict[str, float]:
        """Class name -> held-out attack success rate of its pattern at `ratio` (default: the first searched)."""
        return {c["class_name"]: _at_ratio(c, ratio)["asr"] for c in self.classes}

    def table(self) -> str:
        """The per-class table `classwise-search` prints."""
        from classwise.pipeline.outputs import format_table

        return format_table(self.classes, self.results["search"]["pattern_ratios"])

    def figure(self, ratio: float | None = None):
        """A matplotlib Figure, one row per class named by the dataset: canvas, mask, pattern with its ASR."""
        from matplotlib.figure import Figure

        from classwise.patterns.search import mask_pixels
        from classwise.reporting.figures import _show, pattern_on_gray

        fig = Figure(figsize=(5.0, 1.6 * len(self.classes) + 0.4))
        axes = fig.subplots(len(self.classes), 3, squeeze=False)
        for row, c in zip(axes, self.classes, strict=True):
            i, entry = c["class_index"], _at_ratio(c, ratio)
            _show(row[0], self.canvases[i], f"{c['class_name']}: canvas")
            _show(row[1], self.masks[i], f"mask (L1 {c['mask_l1']:.0f})", cmap="magma")
            pixels = mask_pixels(self.masks[i], entry["pattern_ratio"], (self.scores or {}).get(i))
            _show(row[2], pattern_on_gray(self.canvases[i], pixels), f"{entry['pattern_ratio']:.0%}: ASR {entry['asr']:.2f}")
        fig.suptitle(self.verdict, fontsize=8)
        fig.tight_layout()
        return fig

    def to_json(self) -> str:
        return json.dumps(self.results, indent=2)

    def __repr__(self) -> str:
        return f"Audit({len(self.classes)} classes, {self.verdict}; {self.output_dir})"


def _at_ratio(cls_entry: dict[str, Any], ratio: float | None) -> dict[str, Any]:
    if ratio is None:
        return cls_entry["by_ratio"][0]
    return min(cls_entry["by_ratio"], key=lambda b: abs(b["pattern_ratio"] - ratio))


def clean_accuracy(model: nn.Module, dm) -> float:
    """Accuracy on the search pool and eval images together (the test set's share the audit sees)."""
    from classwise.patterns.evaluate import predict

    test_x, test_y = dm.split_tensors("search")
    eval_x, eval_y = dm.split_tensors("eval")
    preds = predict(model, torch.cat([test_x, eval_x]))
    return float((preds == torch.cat([test_y, eval_y])).float().mean())


def _compose(overrides: list[str]):
    """The search app's config composed with `overrides` (a preset, a dataset) from conf/."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from classwise.config import conf_dir

    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app
        return compose("search", overrides=overrides)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("search", overrides=overrides)


def search_settings(search: str | Mapping[str, Any] | SearchSettings, seed: int, **overrides: Any) -> SearchSettings:
    """A preset of conf/search (`paper`, `fast`), a dict of its shape or a SearchSettings, with any of its keys
    overridden (a block by a dict: `evaluation={"ci": 0.05}`); validated."""
    from omegaconf import OmegaConf

    from classwise.pipeline.settings import check_moved_keys, parse_settings

    check_moved_keys(overrides)  # before the merge, which would fail on an old key's value with its own message
    if isinstance(search, SearchSettings):
        base = OmegaConf.to_container(OmegaConf.structured(search))
    elif isinstance(search, Mapping):
        base = dict(search)
    else:
        base = OmegaConf.to_container(_compose([f"search={search}", f"seed={seed}"]).search, resolve=True)
    return parse_settings(OmegaConf.to_container(OmegaConf.merge(base, overrides)))


def detector_settings(detector: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """An option of conf/detector (its blocks by name) or the group's dict as given; validated."""
    from omegaconf import OmegaConf

    from classwise.pipeline.detection_step import build_detectors

    if detector is None:
        return {}
    if isinstance(detector, Mapping):
        blocks = {k: dict(v) for k, v in detector.items()}
    else:
        from classwise.config import group_options

        options = group_options("detector")
        if detector not in options:
            raise ConfigError(f"detector={detector!r} is unknown; accepted: {', '.join(options)}")
        blocks = OmegaConf.to_container(_compose([f"detector={detector}"]).detector, resolve=True) or {}
    build_detectors(blocks)
    return blocks


def _datamodule(dataset: Any, test: Dataset | None, seed: int, search_fraction: float):
    """A ClasswiseDataModule from a Dataset (class names from its `.classes`), a dataset config or name, or as given."""
    from omegaconf import OmegaConf

    from classwise.builders import build_datamodule
    from classwise.data import ClasswiseDataModule
    from classwise.data.sources import DatasetImages, ImageSource

    data_cfg = {"search_fraction": search_fraction}
    if isinstance(dataset, ClasswiseDataModule):
        return dataset
    if isinstance(dataset, str | Mapping):
        cfg = dict(dataset) if isinstance(dataset, Mapping) else {"name": dataset}
        from classwise.data.sources import SOURCES

        if cfg.get("name") not in SOURCES:
            raise ConfigError(f"dataset.name={cfg.get('name')!r} is unknown; accepted: {', '.join(sorted(SOURCES))}")
        composed = _compose([f"dataset={cfg['name']}", f"seed={seed}"])
        OmegaConf.set_struct(composed, False)
        composed.dataset = OmegaConf.merge(composed.dataset, cfg)  # attached, so ${paths.data_dir} resolves
        return build_datamodule(OmegaConf.to_container(composed.dataset, resolve=True), data_cfg, seed)
    if not isinstance(dataset, Dataset):
        raise ConfigError(f"dataset is a {type(dataset).__name__}; accepted: a torch Dataset of (image [C,H,W] in [0,1], "
                          "label), a dataset name or config dict (conf/dataset), or a ClasswiseDataModule")
    train = DatasetImages(dataset)
    held_out = DatasetImages(test) if test is not None else train
    channels, size, _ = train.image_shape
    classes = list(getattr(dataset, "classes", None) or [f"class_{i}" for i in range(int(train.targets.max()) + 1)])
    cfg = {"name": type(dataset).__name__, "image_size": size, "channels": channels, "num_classes": len(classes)}
    return ClasswiseDataModule.from_source(ImageSource(train, held_out, classes), cfg, seed=seed, **data_cfg)


def model_config_of(checkpoint) -> dict[str, Any]:
    """The architecture a checkpoint declares: classwise-train's config, or TorchScript's own."""
    if checkpoint.classwise:
        return dict(checkpoint.classwise["model"])
    if checkpoint.layout == "torchscript":
        return {"name": "torchscript"}
    raise ConfigError(f"checkpoint={checkpoint.path} ({checkpoint.layout}) does not say its architecture; accepted: "
                      "model_cfg={'name': 'custom', '_target_': 'your_pkg.nets.Net', ...} or {'name': 'timm', 'arch': ...}")


def audit(
    model: nn.Module | str | Path,
    dataset: Any,
    *,
    test: Dataset | None = None,
    input: Mapping[str, Any] | InputConvention | None = None,  # noqa: A002 - the config group's word
    model_cfg: Mapping[str, Any] | None = None,
    search: str | Mapping[str, Any] = "paper",
    detector: str | Mapping[str, Any] | None = "default",
    threat_model: str = "clean_data",
    output_dir: str | Path | None = None,
    seed: int = 0,
    search_fraction: float = 0.2,
    device: str | torch.device | None = None,
    progress: bool = True,
    **search_overrides: Any,
) -> Audit:
    """Search every class's pattern of `model` on `dataset`, evaluate it held out, and judge it (the CLI's path).

    model: an nn.Module taking images as `input` declares (default: [0, 1], no normalisation), or a
    checkpoint file (`model_cfg` names its architecture as conf/model does; classwise and TorchScript
    files carry theirs). dataset: a torch Dataset of (image [C, H, W] in [0, 1], label), its
    `.classes` naming the classes (e.g. ImageFolder's folders); or a dataset name / config dict of
    conf/dataset; or a ClasswiseDataModule. test: a second Dataset for the search pool and the
    evaluation images (disjoint shares of it); by default both come from `dataset`. search: a preset
    of conf/search, a dict or a SearchSettings; search_overrides: any of its keys (pattern_ratios, classes, a block
    as a dict: canvas={"source": "search"}, evaluation={"ci": 0.05}, baselines={"methods": ["random"]}, ...).
    detector: an option of conf/detector (`default`, `universal_patch`, `patterns`, `neural_cleanse`,
    `all`, `none`) or the group's dict; threat_model: clean_data (detectors read only the clean split)
    or training_data.
    Outputs (masks, figures, results.json) go to `output_dir` (default: a new temporary folder).
    """
    from classwise.models.external import load_model
    from classwise.models.loading import read_checkpoint
    from classwise.pipeline.search_step import SearchJob, run_pattern_search
    from classwise.reporting.results import update_results

    settings = search_settings(search, seed, **search_overrides)
    dm = _datamodule(dataset, test, seed, search_fraction)
    dataset_cfg = dict(dm.dataset_cfg)
    run: dict[str, Any] = {"dataset": dataset_cfg["name"], "seed": seed, "job_type": "audit"}
    if isinstance(model, str | Path):
        ckpt = read_checkpoint(model)
        cfg = dict(model_cfg) if model_cfg is not None else model_config_of(ckpt)
        if input is not None:
            cfg["input"] = input.__dict__ if isinstance(input, InputConvention) else dict(input)
        net = load_model(cfg, dataset_cfg, ckpt)
        run.update(model=cfg["name"], checkpoint=str(ckpt.path.resolve()), checkpoint_layout=ckpt.layout)
    elif isinstance(model, nn.Module):
        conv = input if isinstance(input, InputConvention) else InputConvention.from_config(input, key="input")
        net = InputAdapter(model, conv, dataset_cfg["channels"], dataset_cfg["image_size"])
        run.update(model=type(model).__name__, input=conv.describe())
    else:
        raise ConfigError(f"model is a {type(model).__name__}; accepted: a torch.nn.Module or a checkpoint path")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net.to(device)
    detector_cfg = detector_settings(detector)
    out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="classwise-audit-"))
    from classwise.patterns.references import recipe_of_checkpoint

    job = SearchJob.of(settings, detector_cfg, threat_model, progress=progress,
                       model_name=run["model"] if "checkpoint" in run else None,
                       recipe=recipe_of_checkpoint(run.get("checkpoint")))
    run_pattern_search(net, dm, job, out)
    update_results(out, run={**run, "output_dir": str(out), "config": {"search": asdict(settings)}},
                   metrics={"clean_acc": clean_accuracy(net, dm)})
    return Audit.from_run(out)

