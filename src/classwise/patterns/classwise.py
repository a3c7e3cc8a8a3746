"""Patterns for a list of target classes: canvas choice, batched search, held-out evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from classwise.errors import ConfigError
from classwise.patterns.baselines import (
    PatchConfig,
    UAPConfig,
    attribution_map,
    check_baselines,
    targeted_uaps,
    top_k_of_map,
    top_k_of_perturbation,
    universal_patches,
)
from classwise.patterns.canvas import (
    CanvasConfig,
    CanvasPool,
    check_canvas_index,
    choose_candidates,
)
from classwise.patterns.evaluate import attack_success_rates, base_rates, predict, random_pixels
from classwise.patterns.search import (
    SearchConfig,
    mask_pixels,
    pattern_pixel_count,
    search_patterns,
    stream_seed,
    tie_counts,
    top_pixels,
    validate_ratios,
)

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


def classwise_patterns(
    model: nn.Module,
    targets: Sequence[int],
    num_classes: int,
    canvas_pool: CanvasPool,
    search_set: tuple[torch.Tensor, torch.Tensor],
    eval_set: tuple[torch.Tensor, torch.Tensor],
    ratios: Sequence[float] = (0.05,),
    search_cfg: SearchConfig | None = None,
    canvas_cfg: CanvasConfig | None = None,
    progress: bool = True,
    eval_predictions: torch.Tensor | None = None,
    baselines: Sequence[str] = ("random",),
    uap_cfg: UAPConfig | None = None,
    patch_cfg: PatchConfig | None = None,
    eval_forward: int | None = None,
) -> list[ClassPattern]:
    """Search and evaluate the patterns of `targets` (any subset of classes: a rank's shard).

    search_set / eval_set: (images [N, C, H, W], labels [N]); they must be disjoint, which the
    datamodule guarantees; their images may be uint8 (converted per batch). `eval_forward`: images
    per evaluation pass (null: from the device's memory). Everything random is keyed by (search_cfg.seed, class), so the result for
    a class does not depend on which other classes share the call.
    """
    search_cfg = search_cfg or SearchConfig()
    canvas_cfg = canvas_cfg or CanvasConfig()
    ratios = validate_ratios(ratios)
    baselines = check_baselines(baselines)
    targets = check_targets(targets, num_classes)
    check_canvas_index(canvas_pool, targets, canvas_cfg)
    if not targets:
        return []
    search_x, search_y = search_set
    eval_x, eval_y = eval_set
    h, w = search_x.shape[-2:]

    # 1. Canvas candidates per class, searched all together.
    cands = {t: choose_candidates(model, canvas_pool, t, canvas_cfg, search_cfg.seed) for t in targets}
    flat = [(t, j, idx) for t in targets for j, idx in enumerate(cands[t])]
    canvases = canvas_pool.fetch(torch.tensor([idx for _, _, idx in flat]))
    result = search_patterns(
        model, canvases, [t for t, _, _ in flat], search_x, search_y, search_cfg,
        stream_keys=[t * CANDIDATE_STRIDE + j for t, j, _ in flat], progress=progress,
        description=f"pattern search ({len(targets)} classes)",
    )

    # 2. best_of_k: keep the candidate with the highest mean ASR on the *search* pool.
    chosen: dict[int, int] = {}
    cand_records: dict[int, list[dict]] = {t: [] for t in targets}
    if canvas_cfg.strategy == "best_of_k" and len(flat) > len(targets):
        pix = torch.stack([top_pixels(result.masks, r, result.scores) for r in ratios], 1)  # [F, R, 1, H, W]
        f, r_count = pix.shape[:2]
        asr = attack_success_rates(
            model, result.canvases.repeat_interleave(r_count, 0), pix.flatten(0, 1),
            result.target_classes.repeat_interleave(r_count), search_x, search_y, max_forward=eval_forward,
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

    # 3. Held-out evaluation on the eval split: the pattern and each baseline at every ratio.
    rows = [chosen[t] for t in targets]
    canv = result.canvases[rows]  # [K, C, H, W]
    masks = result.masks[rows]  # [K, 1, H, W]
    scores = result.scores[rows]  # [K, 1, H, W]
    tgt = torch.tensor(targets)
    k_count, r_count = len(targets), len(ratios)
    pasted = {"pattern": torch.stack([top_pixels(masks, r, scores) for r in ratios], 1)}  # name -> [K, R, 1, H, W]
    if "random" in baselines:
        pasted["random"] = torch.stack([
            torch.stack(random_pixels((h, w), ratios, torch.Generator().manual_seed(stream_seed(search_cfg.seed, 2_000_000 + t))))
            for t in targets
        ])
    for method in ("gradcam", "saliency"):
        if method in baselines:
            attr = attribution_map(model, canv, tgt, method, search_cfg.max_forward)
            pasted[method] = torch.stack([top_k_of_map(attr, r) for r in ratios], 1)
    names = list(pasted)
    all_pix = torch.stack([pasted[n] for n in names], 1).flatten(0, 2)  # [K * N * R, 1, H, W]
    reps = len(names) * r_count
    asr = attack_success_rates(
        model, canv.repeat_interleave(reps, 0), all_pix, tgt.repeat_interleave(reps), eval_x, eval_y, progress=progress,
        max_forward=eval_forward,
    ).view(k_count, len(names), r_count)
    uap_dense = uap_topk = None
    if "uap" in baselines:
        deltas = targeted_uaps(model, targets, search_x, search_y, uap_cfg or UAPConfig(seed=search_cfg.seed), progress,
                               search_cfg.max_forward)
        full = torch.ones(k_count, 1, h, w, dtype=torch.bool)
        topk = torch.stack([top_k_of_perturbation(deltas, r) for r in ratios], 1)  # [K, R, 1, H, W]
        both = torch.cat([full.unsqueeze(1), topk], 1).flatten(0, 1)
        uap_asr = attack_success_rates(
            model, deltas.repeat_interleave(1 + r_count, 0), both, tgt.repeat_interleave(1 + r_count), eval_x, eval_y,
            additive=True, progress=progress, description="evaluating UAPs", max_forward=eval_forward,
        ).view(k_count, 1 + r_count)
        uap_dense, uap_topk = uap_asr[:, 0], uap_asr[:, 1:]
    patch_asr = None
    if "universal_patch" in baselines:
        patch_cfg = patch_cfg or PatchConfig(alpha=search_cfg.alpha, seed=search_cfg.seed)
        values, patch_pix = universal_patches(model, targets, ratios, search_x, search_y, patch_cfg, progress,
                                              search_cfg.max_forward)  # [K, R, C, H, W], [K, R, 1, H, W]
        patch_asr = attack_success_rates(
            model, values.flatten(0, 1), patch_pix.flatten(0, 1), tgt.repeat_interleave(r_count), eval_x, eval_y,
            progress=progress, description="evaluating universal patches", max_forward=eval_forward,
        ).view(k_count, r_count)
    if eval_predictions is None:
        eval_predictions = predict(model, eval_x, eval_forward)
    base = base_rates(eval_predictions, eval_y, tgt)
    ties = [tie_counts(masks, r) for r in ratios]  # per ratio: ([K] non-zero, [K] decided by the tie-break)

    out = []
    for k, t in enumerate(targets):
        by_ratio = [
            {
                "pattern_ratio": r,
                "pixels": pattern_pixel_count(r, h, w),
                "nonzero_pixels": int(ties[ri][0][k]),
                "tie_broken_pixels": int(ties[ri][1][k]),
                "asr": float(asr[k, 0, ri]),
                "base_rate": float(base[k]),
                "baselines": {
                    **{n: float(asr[k, j, ri]) for j, n in enumerate(names) if n != "pattern"},
                    **({"uap_dense": float(uap_dense[k]), "uap_topk": float(uap_topk[k, ri])} if uap_dense is not None else {}),
                    **({"universal_patch": float(patch_asr[k, ri])} if patch_asr is not None else {}),
                },
            }
            for ri, r in enumerate(ratios)
        ]
        i = rows[k]
        out.append(ClassPattern(t, canvas_pool.split, flat[i][2], canv[k], masks[k], by_ratio, cand_records[t], scores[k]))
    return out

