"""Run the class-wise search on a trained model, shard classes over ranks, save and log on rank 0."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import nn

from classwise.data.datamodule import ClasswiseDataModule
from classwise.patterns.canvas import CanvasConfig, CanvasPool
from classwise.patterns.classwise import ClassPattern, check_targets, classwise_patterns
from classwise.patterns.evaluate import predict
from classwise.patterns.search import SearchConfig, mask_pixels, paste, validate_ratios
from classwise.reporting.figures import pattern_rows
from classwise.reporting.results import update_results

log = logging.getLogger(__name__)

SEARCH_KEYS = {f for f in SearchConfig.__dataclass_fields__}
CANVAS_KEYS = {"canvas": "strategy", "canvas_source": "source", "canvas_index": "index", "canvas_k": "k",
               "canvas_max_candidates": "max_candidates"}
OTHER_KEYS = {"preset", "pattern_ratios", "classes", "eval_max_per_class", "enabled", "baselines", "uap_eps", "uap_steps",
              "uap_batch_size"}


def parse_settings(settings: dict[str, Any] | DictConfig) -> tuple[SearchConfig, CanvasConfig, dict[str, Any]]:
    """Split the flat `search` config into the algorithm's dataclasses; unknown keys are an error."""
    if isinstance(settings, DictConfig):
        settings = OmegaConf.to_container(settings, resolve=True)
    settings = dict(settings)
    unknown = set(settings) - SEARCH_KEYS - set(CANVAS_KEYS) - OTHER_KEYS
    if unknown:
        from classwise.errors import ConfigError

        accepted = ", ".join(sorted(SEARCH_KEYS | set(CANVAS_KEYS) | OTHER_KEYS))
        raise ConfigError(f"search.{sorted(unknown)[0]} is not a search setting; accepted: {accepted}")
    search_cfg = SearchConfig(**{k: v for k, v in settings.items() if k in SEARCH_KEYS})
    canvas_cfg = CanvasConfig(**{CANVAS_KEYS[k]: v for k, v in settings.items() if k in CANVAS_KEYS})
    other = {k: settings.get(k) for k in OTHER_KEYS}
    other["pattern_ratios"] = validate_ratios(other["pattern_ratios"] or [0.05])
    from classwise.patterns.baselines import UAPConfig, check_baselines

    other["baselines"] = check_baselines(["random"] if other["baselines"] is None else other["baselines"])
    uap = {k: other[f"uap_{k}"] for k in ("eps", "steps", "batch_size") if other.get(f"uap_{k}") is not None}
    other["uap"] = UAPConfig(**uap, seed=search_cfg.seed)
    if other["uap"].eps <= 0 or other["uap"].steps < 1:
        from classwise.errors import ConfigError

        raise ConfigError(f"search.uap_eps={other['uap'].eps} and search.uap_steps={other['uap'].steps} must be positive")
    return search_cfg, canvas_cfg, other


def canvas_pool(dm: ClasswiseDataModule, source: str) -> CanvasPool:
    dm.setup()
    if source == "train":
        idx = dm.splits["train"]
        return CanvasPool("train", idx, dm.train_set.targets[idx], lambda i: dm.train_set.batch(i)[0])
    idx = dm.splits["search"]
    return CanvasPool("search", idx, dm.source.test.targets[idx], lambda i: dm.source.test.batch(i)[0])


def cap_per_class(images: torch.Tensor, labels: torch.Tensor, cap: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `cap` images of each class (the first ones, in split order)."""
    if not cap:
        return images, labels
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        keep[(labels == c).nonzero().flatten()[:cap]] = True
    return images[keep], labels[keep]


def _to_record(p: ClassPattern) -> dict[str, Any]:
    return {"class_index": p.class_index, "canvas_split": p.canvas_split, "canvas_index": p.canvas_index,
            "canvas": p.canvas, "mask": p.mask, "by_ratio": p.by_ratio, "candidates": p.candidates}


def run_pattern_search(
    model: nn.Module,
    dm: ClasswiseDataModule,
    settings: dict[str, Any] | DictConfig,
    run_dir: str | Path,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[Any], list[Any]] | None = None,
    logger: Any = None,
    progress: bool = True,
    detector: dict[str, Any] | None = None,
    trigger: Any = None,
    target_class: int | None = None,
) -> dict[str, Any] | None:
    """Search this rank's share of the classes; rank 0 gathers, writes outputs and returns the summary.

    `gather(obj)` returns every rank's obj on rank 0 (a collective: every rank calls it, also a rank
    without classes). Outputs: patterns/masks.safetensors, patterns/class_XXX.png, patterns/grid.png
    and the `search` and `classes` sections of results.json.
    """
    search_cfg, canvas_cfg, other = parse_settings(settings)
    ratios = other["pattern_ratios"]
    dm.setup()
    all_targets = check_targets(other["classes"] if other["classes"] is not None else range(dm.num_classes), dm.num_classes)
    mine = all_targets[rank::world_size]
    pool = canvas_pool(dm, canvas_cfg.source)
    search_set = dm.split_tensors("search")
    eval_x, eval_y = cap_per_class(*dm.split_tensors("eval"), other["eval_max_per_class"])
    start = time.perf_counter()
    patterns = classwise_patterns(
        model, mine, dm.num_classes, pool, search_set, (eval_x, eval_y), ratios, search_cfg, canvas_cfg,
        progress=progress and rank == 0, baselines=other["baselines"], uap_cfg=other["uap"],
    )
    seconds = time.perf_counter() - start
    records = [_to_record(p) for p in patterns]
    if gather is not None:
        gathered = gather((records, seconds))
        if rank != 0:
            return None
        records = [r for part, _ in gathered for r in part]
        seconds = max(s for _, s in gathered)
    records.sort(key=lambda r: r["class_index"])
    summary = _save(model, dm, records, ratios, search_cfg, canvas_cfg, other, seconds, world_size, len(search_set[1]),
                    (eval_x, eval_y), Path(run_dir), logger)
    summary.update(_detection(model, dm, records, search_set, search_cfg, ratios, Path(run_dir), detector or {},
                              trigger, target_class, progress))
    return summary


def _detection(model, dm, records, search_set, search_cfg, ratios, run_dir: Path, detector: dict, trigger,
               target_class, progress) -> dict[str, Any]:
    """Our detection on every searched class (3 or more), Neural Cleanse beside it if asked, trigger figure."""
    from classwise.patterns.detection import pattern_detection

    if len(records) < 3:
        return {}
    classes = [r["class_index"] for r in records]
    block = pattern_detection([float(r["mask"].sum()) for r in records], classes)
    block["seconds"] = None
    sections: dict[str, Any] = {"detection": block}
    if detector.get("name") == "neural_cleanse":
        from classwise.patterns.neural_cleanse import NeuralCleanseConfig, neural_cleanse

        nc_cfg = NeuralCleanseConfig(**{k: v for k, v in detector.items() if k != "name"}, seed=search_cfg.seed)
        sections["detection_baselines"] = {"neural_cleanse": neural_cleanse(model, classes, *search_set, nc_cfg, progress)}
    if trigger is not None and target_class is not None and target_class in classes:
        rec = records[classes.index(target_class)]
        region = trigger.region
        overlap = {}
        for r in ratios:
            pix = mask_pixels(rec["mask"], r)
            overlap[str(r)] = float((pix & region).sum() / pix.sum())
        block["true_target"] = target_class
        block["target_pixels_on_trigger"] = overlap
        _trigger_figure(trigger, rec, dm.classes[target_class], ratios, run_dir / "patterns" / "trigger_vs_pattern.png")
    update_results(run_dir, **sections)
    flagged = block["flagged"]
    print(f"detection (log mask L1, MAD index > 2): flagged {flagged or 'none'}; "
          f"predicted target {block['predicted_target']}")
    if "detection_baselines" in sections:
        nc = sections["detection_baselines"]["neural_cleanse"]
        print(f"neural cleanse: flagged {nc['flagged'] or 'none'}; predicted target {nc['predicted_target']} ({nc['seconds']} s)")
    return sections


def _trigger_figure(trigger, record: dict, name: str, ratios: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    from classwise.reporting.figures import _show, pattern_on_gray, save_figure

    ratio = min(ratios)
    fig, axes = plt.subplots(1, 4, figsize=(7.2, 2.2))
    _show(axes[0], trigger.example(), f"true trigger ({trigger.name})")
    _show(axes[1], record["canvas"], f"{name}: canvas")
    _show(axes[2], record["mask"], "mask", cmap="magma")
    _show(axes[3], pattern_on_gray(record["canvas"], mask_pixels(record["mask"], ratio)), f"pattern at {ratio:.0%}")
    save_figure(fig, path)


def _save(model, dm, records, ratios, search_cfg, canvas_cfg, other, seconds, world_size, pool_size, eval_set,
          run_dir: Path, logger) -> dict[str, Any]:
    out = run_dir / "patterns"
    out.mkdir(parents=True, exist_ok=True)
    save_file({f"class_{r['class_index']}": r["mask"].contiguous() for r in records}
              | {f"canvas_{r['class_index']}": r["canvas"].contiguous() for r in records}, str(out / "masks.safetensors"))
    splits_file = dm.save_splits(run_dir / "splits.safetensors")
    names = dm.classes
    show_ratio = 0.05 if 0.05 in ratios else ratios[0]
    eval_x, eval_y = eval_set
    # One pasted example per class: the first eval image of another class.
    examples, pixels, preds = [], [], []
    for r in records:
        t = r["class_index"]
        other_img = eval_x[(eval_y != t).nonzero().flatten()[0]]
        pixels.append(mask_pixels(r["mask"], show_ratio))
        examples.append(paste(other_img.unsqueeze(0), r["canvas"], pixels[-1])[0])
    if examples:
        preds = predict(model, torch.stack(examples)).tolist()
    rows = []
    for r, pix, ex, pred in zip(records, pixels, examples, preds, strict=True):
        asr = next(b["asr"] for b in r["by_ratio"] if b["pattern_ratio"] == show_ratio)
        row = {"name": names[r["class_index"]], "canvas": r["canvas"], "mask": r["mask"], "pixels": pix,
               "example": ex, "asr": asr, "example_pred": names[pred]}
        rows.append(row)
        pattern_rows([row], out / f"class_{r['class_index']:03d}.png")
    if rows:
        pattern_rows(rows, out / "grid.png", title=f"class-wise patterns at {show_ratio:.0%} of the pixels")
    classes = [
        {"class_index": r["class_index"], "class_name": names[r["class_index"]], "canvas_split": r["canvas_split"],
         "canvas_index": r["canvas_index"], "mask_l1": float(r["mask"].sum()), "by_ratio": r["by_ratio"],
         **({"candidates": r["candidates"]} if r["candidates"] else {})}
        for r in records
    ]
    search = {
        "preset": other["preset"], "update": search_cfg.update, "step_size": search_cfg.step_size,
        "alpha": search_cfg.alpha, "batch_size": search_cfg.batch_size, "seed": search_cfg.seed,
        "canvas": canvas_cfg.strategy, "canvas_source": canvas_cfg.source, "pattern_ratios": ratios,
        "baselines": other["baselines"], **({"uap_eps": other["uap"].eps} if "uap" in other["baselines"] else {}),
        "pool_size": pool_size, "eval_size": len(eval_y), "seconds": round(seconds, 2), "world_size": world_size,
        "splits_file": str(splits_file.relative_to(run_dir)), "masks_file": "patterns/masks.safetensors",
        "figure": "patterns/grid.png",
    }
    update_results(run_dir, search=search, classes=classes)
    print(format_table(classes, ratios))
    return {"search": search, "classes": classes}


def _baseline_order(name: str) -> int:
    order = ["random", "gradcam", "saliency", "uap_topk", "uap_dense"]
    return order.index(name) if name in order else len(order)


def format_table(classes: list[dict], ratios: list[float]) -> str:
    """The per-class ASR table printed at the end of a search."""
    extra = sorted({k for c in classes for b in c["by_ratio"] for k in b["baselines"]}, key=_baseline_order)
    head = f"{'class':>5}  {'name':<14} {'canvas':>10} {'mask L1':>8}"
    for r in ratios:
        head += f"  {'ASR@' + format(r, '.0%'):>8}" + "".join(f" {n[:9]:>9}" for n in extra)
    head += f"  {'base':>5}"
    lines = [head, "-" * len(head)]
    for c in classes:
        line = f"{c['class_index']:>5}  {c['class_name'][:14]:<14} {c['canvas_split'][:1] + str(c['canvas_index']):>10} {c['mask_l1']:>8.1f}"
        for b in c["by_ratio"]:
            line += f"  {b['asr']:>8.3f}" + "".join(f" {b['baselines'].get(n, float('nan')):>9.3f}" for n in extra)
        line += f"  {c['by_ratio'][0]['base_rate']:>5.3f}"
        lines.append(line)
    if classes:
        line = f"{'mean':>5}  {'':<14} {'':>10} {sum(c['mask_l1'] for c in classes) / len(classes):>8.1f}"
        for i in range(len(ratios)):
            line += f"  {sum(c['by_ratio'][i]['asr'] for c in classes) / len(classes):>8.3f}"
            for n in extra:
                vals = [c["by_ratio"][i]["baselines"].get(n, float("nan")) for c in classes]
                line += f" {sum(vals) / len(vals):>9.3f}"
        lines.append(line)
    return "\n".join(lines)


class PatternSearch(Callback):
    """After `fit`, find every class's pattern on the trained model (classes sharded over ranks)."""

    def __init__(self, search: dict[str, Any] | DictConfig, output_dir: str, enabled: bool = True,
                 detector: dict[str, Any] | DictConfig | None = None):
        super().__init__()
        self.settings = OmegaConf.to_container(search, resolve=True) if isinstance(search, DictConfig) else dict(search)
        self.settings.pop("enabled", None)
        parse_settings(self.settings)  # fail on a bad config before training, not after it
        self.output_dir = output_dir
        self.enabled = enabled
        self.detector = OmegaConf.to_container(detector, resolve=True) if isinstance(detector, DictConfig) else (detector or {})
        self.summary: dict[str, Any] | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        from classwise.callbacks.distributed import gather_to_rank0

        world = trainer.world_size
        poisoner = getattr(trainer.datamodule, "poisoner", None)
        self.summary = run_pattern_search(
            pl_module.model, trainer.datamodule, self.settings, self.output_dir,
            rank=trainer.global_rank, world_size=world,
            gather=(lambda obj: gather_to_rank0(obj, world)) if world > 1 else None,
            logger=trainer.logger if trainer.global_rank == 0 else None,
            detector=self.detector,
            trigger=getattr(poisoner, "trigger", None),
            target_class=getattr(poisoner, "target_class", None),
        )


def run_transfer(model: nn.Module, dm: ClasswiseDataModule, source_run: str | Path, run_dir: str | Path,
                 eval_max_per_class: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Apply another run's patterns (its masks and canvases, at its ratios) to `model`, on this eval split.

    Writes the `transfer` section of results.json: the source run, and per class its ASR here next
    to the ASR the source run measured on its own model.
    """
    import json

    from safetensors.torch import load_file

    from classwise.errors import ConfigError
    from classwise.patterns.evaluate import attack_success_rates, base_rates
    from classwise.patterns.search import top_pixels

    source_run = Path(source_run)
    results_file = source_run / "results.json"
    if not results_file.is_file():
        raise ConfigError(f"patterns_from={source_run}: no results.json there; accepted: a run folder of classwise-train/-search")
    source = json.loads(results_file.read_text())
    if "classes" not in source:
        raise ConfigError(f"patterns_from={source_run}: its results.json has no patterns (was the search disabled?)")
    tensors = load_file(str(source_run / source["search"]["masks_file"]))
    ratios = source["search"]["pattern_ratios"]
    classes = [c for c in source["classes"] if c["class_index"] < dm.num_classes]
    masks = torch.stack([tensors[f"class_{c['class_index']}"] for c in classes])
    canvases = torch.stack([tensors[f"canvas_{c['class_index']}"] for c in classes])
    if canvases.shape[1:] != dm.split_tensors("search", max_items=1)[0].shape[1:]:
        raise ConfigError(f"patterns_from={source_run}: its images are {tuple(canvases.shape[1:])}, this dataset's are not")
    eval_x, eval_y = cap_per_class(*dm.split_tensors("eval"), eval_max_per_class)
    tgt = torch.tensor([c["class_index"] for c in classes])
    pix = torch.stack([top_pixels(masks, r) for r in ratios], 1).flatten(0, 1)
    r_count = len(ratios)
    asr = attack_success_rates(model, canvases.repeat_interleave(r_count, 0), pix, tgt.repeat_interleave(r_count),
                               eval_x, eval_y, progress=progress, description="transferred patterns").view(len(classes), r_count)
    base = base_rates(predict(model, eval_x), eval_y, tgt)
    block = {
        "source_run": str(source_run.resolve()),
        "source_model": source.get("run", {}).get("model"), "source_setting": source.get("run", {}).get("setting"),
        "pattern_ratios": ratios,
        "classes": [
            {"class_index": c["class_index"], "class_name": c["class_name"], "by_ratio": [
                {"pattern_ratio": r, "asr": float(asr[k, i]), "base_rate": float(base[k]),
                 "source_asr": c["by_ratio"][i]["asr"] if i < len(c["by_ratio"]) else None}
                for i, r in enumerate(ratios)]}
            for k, c in enumerate(classes)
        ],
    }
    block["mean_asr"] = {str(r): float(asr[:, i].mean()) for i, r in enumerate(ratios)}
    update_results(run_dir, transfer=block)
    print(f"transfer from {source_run}: mean ASR " + ", ".join(f"{r:.0%}: {v:.3f}" for r, v in
                                                                zip(ratios, block["mean_asr"].values(), strict=True)))
    return block
