"""Patterns for a list of target classes: canvas choice, batched search, held-out evaluation."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from classwise.errors import ConfigError
from classwise.patterns.baselines import BASELINES, BaselineTask, baseline_named
from classwise.patterns.canvas import (
    CanvasPool,
    check_canvas_index,
    choose_candidates,
)
from classwise.patterns.evaluate import (
    EVAL_ORDER_KEY,
    EvalOptions,
    Rates,
    attack_success_rates,
    attack_successes,
    held_out_base_rates,
)
from classwise.patterns.search import (
    ImageSet,
    SearchOptions,
    mask_pixels,
    pattern_pixel_count,
    search_patterns,
    stream_seed,
    tie_counts,
    top_pixels,
)
from classwise.patterns.settings import SearchSettings
from classwise.timing import PhaseTimer

CANDIDATE_STRIDE = 1024  # stream key of candidate j of class t: t * CANDIDATE_STRIDE + j


@dataclass
class ClassPattern:
    """One class's pattern: its canvas, continuous mask and held-out attack success per ratio."""

    class_index: int
    canvas_split: str
    canvas_index: int
    canvas: torch.Tensor  # [C, H, W]
    mask: torch.Tensor  # [1, H, W]
    by_ratio: list[dict]
    candidates: list[dict] = field(default_factory=list)
    score: torch.Tensor | None = None  # [1, H, W] the search's tie-break score (top_pixels)

    @property
    def mask_l1(self) -> float:
        return float(self.mask.sum())

    def pixels(self, ratio: float) -> torch.Tensor:
        return mask_pixels(self.mask, ratio, self.score)


def check_targets(targets: Sequence[int], num_classes: int) -> list[int]:
    targets = [int(t) for t in targets]
    bad = [t for t in targets if not 0 <= t < num_classes]
    if bad:
        raise ConfigError(f"search.classes has {bad[0]}; accepted: class indices 0..{num_classes - 1}")
    return targets


@dataclass
class SearchData:
    """What a search reads: where canvases come from, the search pool and the held-out eval split.

    search_set / eval_set: (images [N, C, H, W], labels [N]); they must be disjoint, which the
    datamodule guarantees; their images may be uint8 (converted per batch).
    """

    num_classes: int
    canvas_pool: CanvasPool
    search_set: tuple[torch.Tensor, torch.Tensor]
    eval_set: tuple[torch.Tensor, torch.Tensor]


def classwise_patterns(
    model: nn.Module,
    targets: Sequence[int],
    data: SearchData,
    settings: SearchSettings | None = None,
    progress: bool = True,
    timer: PhaseTimer | None = None,
) -> list[ClassPattern]:
    """Search and evaluate the patterns of `targets` (any subset of classes: a rank's shard).

    Everything random is keyed by (settings.seed, class), so the result for a class does not depend
    on which other classes share the call. Each pattern and baseline is evaluated held out until its
    interval is at most +-settings.evaluation.ci wide (a seeded random order of the eval split; None:
    the whole split). `timer` receives the seconds of each phase (canvas, search, evaluation,
    baselines.<name>).
    """
    timer = timer or PhaseTimer()
    settings = settings or SearchSettings()
    search_cfg, canvas_cfg, ratios = settings, settings.canvas, settings.pattern_ratios
    baselines = settings.baselines.methods
    eval_forward, eval_ci = settings.evaluation.forward, settings.evaluation.ci
    canvas_pool, search_set, eval_set = data.canvas_pool, data.search_set, data.eval_set
    targets = check_targets(targets, data.num_classes)
    check_canvas_index(canvas_pool, targets, canvas_cfg)
    if not targets:
        return []
    search_x, search_y = search_set
    eval_x, eval_y = eval_set
    h, w = search_x.shape[-2:]

    # 1. Canvas candidates per class, searched all together.
    with timer("canvas"):
        cands = {t: choose_candidates(model, canvas_pool, t, canvas_cfg, search_cfg.seed) for t in targets}
        flat = [(t, j, idx) for t in targets for j, idx in enumerate(cands[t])]
        canvases = canvas_pool.fetch(torch.tensor([idx for _, _, idx in flat]))
    with timer("search"):
        result = search_patterns(
            model, canvases, [t for t, _, _ in flat], ImageSet(search_x, search_y), search_cfg,
            SearchOptions(stream_keys=[t * CANDIDATE_STRIDE + j for t, j, _ in flat], progress=progress,
                          description=f"pattern search ({len(targets)} classes)"),
        )

    # 2. best_of_k: keep the candidate with the highest mean ASR on the *search* pool.
    selection_start = time.perf_counter()  # part of the canvas choice
    chosen: dict[int, int] = {}
    cand_records: dict[int, list[dict]] = {t: [] for t in targets}
    if canvas_cfg.strategy == "best_of_k" and len(flat) > len(targets):
        pix = torch.stack([top_pixels(result.masks, r, result.scores) for r in ratios], 1)  # [F, R, 1, H, W]
        f, r_count = pix.shape[:2]
        asr = attack_success_rates(
            model, result.canvases.repeat_interleave(r_count, 0), pix.flatten(0, 1),
            result.target_classes.repeat_interleave(r_count), ImageSet(search_x, search_y), EvalOptions(max_forward=eval_forward),
        ).view(f, r_count).mean(1)
        l1 = result.mask_l1
        for i, (t, _, idx) in enumerate(flat):
            cand_records[t].append({"canvas_index": idx, "search_asr": float(asr[i]), "mask_l1": float(l1[i])})
            best = chosen.get(t)
            if best is None or (asr[i], -l1[i]) > (asr[best], -l1[best]):
                chosen[t] = i
    else:
        for i, (t, j, _) in enumerate(flat):
            if j == 0:
                chosen[t] = i

    timer.add("canvas", time.perf_counter() - selection_start)

    # 3. Held-out evaluation on the eval split: the pattern and each baseline at every ratio, each
    # variant timed on its own; with eval_ci, each leaves the batch once its interval is narrow enough.
    rows = [chosen[t] for t in targets]
    canv = result.canvases[rows]  # [K, C, H, W]
    masks = result.masks[rows]  # [K, 1, H, W]
    scores = result.scores[rows]  # [K, 1, H, W]
    tgt = torch.tensor(targets)
    k_count, r_count = len(targets), len(ratios)
    order_seed = stream_seed(search_cfg.seed, EVAL_ORDER_KEY)

    def held_out(images: torch.Tensor, pix: torch.Tensor, additive: bool = False, what: str = "patterns") -> Rates:
        """Rates [K, R'] of images [K, C, H, W] (one per class) or [K, R', C, H, W] pasted (or added) at
        pix [K, R', 1, H, W]."""
        reps = pix.shape[1]
        flat = images.flatten(0, 1) if images.dim() == 5 else images.repeat_interleave(reps, 0)
        return attack_successes(
            model, flat, pix.flatten(0, 1), tgt.repeat_interleave(reps), ImageSet(eval_x, eval_y),
            EvalOptions(additive=additive, half_width=eval_ci, order_seed=order_seed, progress=progress,
                        description=f"evaluating {what}", max_forward=eval_forward),
        ).view(k_count, reps)

    with timer("evaluation"):
        asr = held_out(canv, torch.stack([top_pixels(masks, r, scores) for r in ratios], 1))  # [K, R]
        # sequential like the patterns: same order, same stopping rule
        base = held_out_base_rates(model, ImageSet(eval_x, eval_y), tgt,
                                   EvalOptions(max_forward=eval_forward, half_width=eval_ci, order_seed=order_seed))  # [K]
    baseline_rates: dict[str, Rates] = {}  # name -> [K, R]
    task = BaselineTask(model, targets, canv, list(ratios), ImageSet(search_x, search_y), settings, held_out, progress)
    registered = list(BASELINES)
    for name in sorted(baselines, key=lambda n: registered.index(n) if n in registered else len(registered)):
        with timer(f"baselines.{name.rsplit('.', 1)[-1]}"):
            for key, rates in baseline_named(name)(task).items():
                if not isinstance(rates, Rates) or tuple(rates.hits.shape) != (k_count, r_count):
                    raise ConfigError(f"search.baselines.methods: {name} returned {key!r} as {type(rates).__name__} "
                                      f"{tuple(getattr(rates, 'hits', torch.empty(0)).shape)}; accepted: Rates of shape "
                                      f"[classes, ratios] = [{k_count}, {r_count}] (BaselineTask.evaluate's)")
                baseline_rates[key] = rates
    ties = [tie_counts(masks, r) for r in ratios]  # per ratio: ([K] non-zero, [K] decided by the tie-break)

    out = []
    for k, t in enumerate(targets):
        by_ratio = []
        for ri, r in enumerate(ratios):
            entry = {"pattern_ratio": r, "pixels": pattern_pixel_count(r, h, w),
                     "nonzero_pixels": int(ties[ri][0][k]), "tie_broken_pixels": int(ties[ri][1][k]),
                     **asr.fields((k, ri), "asr"), **base.fields(k, "base_rate")}
            per_baseline = {n: b.fields((k, ri), "asr") for n, b in baseline_rates.items()}
            entry["baselines"] = {n: f["asr"] for n, f in per_baseline.items()}
            entry["baselines_ci"] = {n: f["asr_ci"] for n, f in per_baseline.items()}
            entry["baselines_n"] = {n: f["asr_n"] for n, f in per_baseline.items()}
            by_ratio.append(entry)
        i = rows[k]
        out.append(ClassPattern(t, canvas_pool.split, flat[i][2], canv[k], masks[k], by_ratio, cand_records[t], scores[k]))
    return out
