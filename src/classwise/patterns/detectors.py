"""Backdoor detectors as one family: each turns a model and the data its threat model allows into a verdict.

Every detector returns the same block (results.json `detection` / `detectors.<name>`):
`verdict` (backdoored | clean | abstained), `reason`, `score` (one number per model, higher = more
suspicious, comparable across models of one dataset and architecture), `probability` (where the
detector is calibrated), `predicted_target` (class index or None), `threat_model`, `seconds`, and
its own per-class evidence. A detector works in two steps so the classes can be sharded over ranks:
`measure(model, classes, data)` on each rank's share (None where the detector reads only the
patterns), then `decide(measured, records, data)` once, on rank 0, over every class.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from classwise.errors import ConfigError

if TYPE_CHECKING:
    from classwise.patterns.classwise import ClassPattern

THREAT_MODELS = ("clean_data", "training_data")
FLOOR = 0.01  # rates enter the logit clamped to [FLOOR, 1 - FLOOR]: a class at 0 / 300 is not 100x "harder" than one at 3 / 300
VERDICTS = ("backdoored", "clean", "abstained")


def check_threat_model(threat_model: str) -> str:
    if threat_model not in THREAT_MODELS:
        raise ConfigError(f"threat_model={threat_model!r} is unknown; accepted: {', '.join(THREAT_MODELS)}")
    return threat_model


@dataclass
class DetectionData:
    """What detectors may read. `clean` (the search split) and `held_out` (the eval split) are clean,
    labelled and disjoint; `canvas_poisoned` says the patterns' canvases came from a poisoned
    training set, which only `threat_model=training_data` lets a detector read."""

    clean: tuple[torch.Tensor, torch.Tensor]  # images [N, C, H, W], labels [N]
    held_out: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    class_names: list[str] | None = None
    dataset: str | None = None  # the dataset's and the architecture's names, and the model's training
    model: str | None = None  # recipe (`references.training_recipe`): which clean reference applies
    recipe: dict[str, Any] | None = None
    threat_model: str = "clean_data"
    canvas_poisoned: bool = False
    seed: int = 0
    progress: bool = False
    max_forward: int | None = None
    eval_forward: int | None = None


@dataclass(frozen=True)
class Verdict:
    """What a detector concluded, before it is written as a block with the detector's own evidence."""

    verdict: str  # one of VERDICTS
    reason: str
    score: float | None = None
    predicted_target: int | None = None
    probability: float | None = None

    def __post_init__(self) -> None:
        assert self.verdict in VERDICTS, self.verdict

    def block(self, detector: str, data: DetectionData, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
        """The block every detector returns (see the module docstring); `evidence` is the detector's own detail."""
        finite = None if self.score is None else float(max(-1e6, min(1e6, self.score)))
        return {**(evidence or {}), "detector": detector, "verdict": self.verdict, "reason": self.reason,
                "score": finite, "probability": self.probability, "predicted_target": self.predicted_target,
                "threat_model": data.threat_model}


def logistic(score: float | None, calibration: Sequence[float] | None) -> float | None:
    """P(backdoored | score) = sigmoid(a * score + b), (a, b) fitted on a dev population; None uncalibrated."""
    if score is None or not calibration:
        return None
    a, b = (float(v) for v in calibration)
    z = max(-50.0, min(50.0, a * score + b))
    return 1 / (1 + math.exp(-z))


def calibration_of(detector: str, calibration: Sequence[float] | None) -> list[float] | None:
    """A detector's `calibration` as [a, b], or None; anything else refused in one line (not after the search)."""
    if calibration is None:
        return None
    try:
        values = [float(v) for v in calibration if not isinstance(v, bool)]
    except (TypeError, ValueError):
        values = []
    if isinstance(calibration, str) or len(values) != 2 or len(list(calibration)) != 2:
        raise ConfigError(f"detector.{detector}.calibration={calibration!r}; accepted: [a, b], two numbers "
                          "(P(backdoored) = sigmoid(a * score + b)), or null")
    return values


class Detector:
    """Base of the family: override `decide`, and `measure` / `join` where the model is probed per class."""

    name = "detector"
    reads_patterns = False  # reads the searched patterns (and so their canvases)

    def measure(self, model: nn.Module, classes: list[int], data: DetectionData) -> dict[str, Any] | None:
        return None

    def join(self, shares: list[dict[str, Any]]) -> dict[str, Any]:
        """Several ranks' `measure` results as one: per-class lists concatenated, the slowest rank's seconds."""
        keys = [k for k in shares[0] if k != "seconds"]
        return {**{k: [v for s in shares for v in s[k]] for k in keys}, "seconds": max(s["seconds"] for s in shares)}

    def decide(self, measured: dict[str, Any] | None, records: list[ClassPattern], data: DetectionData) -> dict[str, Any]:
        """The verdict block from `measure`'s result (joined over ranks) and the searched patterns."""
        raise NotImplementedError


def _sorted_by_class(measured: dict[str, Any]) -> dict[str, list]:
    order = sorted(range(len(measured["classes"])), key=lambda i: measured["classes"][i])
    return {k: [v[i] for i in order] for k, v in measured.items() if isinstance(v, list)}


class UniversalPatchDetector(Detector):
    """Trigger inversion from clean data: per class and pixel budget, the best universal patch of k free pixels.

    A patch trigger is a few pixels that send any image to the target; on a clean model no class is
    that easy to reach with so few. Per class and each of `ratios` (k = ratio * H * W pixels), a
    universal patch (`baselines.universal_patches` on the clean search split) and its held-out attack
    success rate on the first `eval_images` images of a fixed seeded order of the clean eval split.
    Per ratio, `gap` = logit of the best class's ASR minus the median logit of the other classes (rates
    clamped to [0.01, 0.99]): how far the easiest class stands out of this model's own classes. The
    score is `statistic` over the ratios: `max_gap`, `mean_gap`, `prob_gap` (the largest gap on the
    rate scale itself), `max_logit` (the best class's logit alone), or `reference_z` (the largest z of
    a class's logit against the same class on clean reference models, `patterns/references.py`); all
    are recorded. `auto`: `reference_z` where a reference applies, else `max_gap`. Backdoored when the
    score exceeds `threshold` (None: the statistic's dev threshold), the target being the best class at
    the ratio of the largest gap (under `reference_z`, the class of the largest z); `calibration`
    (a, b) gives P(backdoored).
    """

    name = "universal_patch"
    STATISTICS = ("max_gap", "mean_gap", "prob_gap", "max_logit", "reference_z")
    MAX_GAP_THRESHOLD = 3.7  # the highest max_gap of a clean model of the dev population, rounded up (docs/detection.md)

    def __init__(self, ratios: Sequence[float] = (0.01, 0.02, 0.04), steps: int = 80, finetune_steps: int = 0,
                 batch_size: int = 32, lr: float = 0.1, alpha: float = 0.2, eval_images: int = 300,
                 statistic: str = "auto", threshold: float | None = None, calibration: Sequence[float] | None = None,
                 reference: str | None = "auto"):
        from classwise.patterns.references import load_reference

        ratios = [float(r) for r in ratios]
        if not ratios or not all(0 < r < 1 for r in ratios):
            raise ConfigError(f"detector.universal_patch.ratios={ratios}; accepted: shares of the image's pixels in (0, 1)")
        if statistic not in (*self.STATISTICS, "auto"):
            raise ConfigError(f"detector.universal_patch.statistic={statistic!r}; accepted: auto, {', '.join(self.STATISTICS)}")
        if eval_images < 10:
            raise ConfigError(f"detector.universal_patch.eval_images={eval_images}; accepted: 10 or more")
        if statistic == "reference_z" and reference in (None, "none"):
            raise ConfigError("detector.universal_patch.statistic=reference_z needs detector.universal_patch.reference; "
                              "accepted: auto (the shipped reference of the run's dataset and model), or the JSON of "
                              "clean reference models that `make detect-bench` writes (outputs/detect_bench/report/dev/reference.json)")
        if threshold is None and statistic not in ("auto", "max_gap", "reference_z"):
            raise ConfigError(f"detector.universal_patch.statistic={statistic} has no dev threshold; accepted: "
                              "detector.universal_patch.threshold=<number>, or statistic auto, max_gap or reference_z")
        # auto: resolved per run (`reference_for`); a name or path: that reference, whose ratios it was measured at.
        self.reference_spec = None if reference in (None, "none") else str(reference)
        self.fixed_reference = None
        if self.reference_spec not in (None, "auto"):
            self.fixed_reference = load_reference(self.reference_spec)
            ratios = [float(r) for r in self.fixed_reference[1]["ratios"]]
        from classwise.patterns.baselines import PatchConfig

        self.patch = PatchConfig(steps=steps, finetune_steps=finetune_steps, batch_size=batch_size, lr=lr, alpha=alpha)
        self.ratios, self.eval_images, self.statistic = sorted(ratios), int(eval_images), statistic
        self.threshold = None if threshold is None else float(threshold)
        self.calibration = calibration_of(self.name, calibration)

    def reference_for(self, data: DetectionData) -> tuple[tuple[str, dict[str, Any]] | None, str | None]:
        """((name, reference) or None, why none applies): the reference this run is standardised against.
        A reference named by hand that does not fit the run is refused (before the detector probes the model)."""
        from classwise.patterns.references import auto_reference, mismatch

        if self.reference_spec is None:
            return None, "no reference (detector.universal_patch.reference=null)"
        found = self.fixed_reference or auto_reference(data.dataset, data.model)
        if found is None:
            why = (f"no shipped reference for dataset {data.dataset!r} and model {data.model!r}; "
                   "a dev population of them makes one (docs/detection.md)")
            if self.statistic == "reference_z":
                raise ConfigError(f"detector.universal_patch.statistic=reference_z: {why}; accepted: "
                                  "detector.universal_patch.reference=<reference JSON>, or statistic=max_gap")
            return None, why
        run = {"dataset": data.dataset, "model": data.model, "num_classes": data.num_classes,
               "image_shape": list(data.clean[0].shape[1:]), "ratios": self.ratios, "eval_images": self.eval_images,
               **{k: getattr(self.patch, k) for k in ("steps", "finetune_steps", "batch_size", "lr", "alpha")},
               "recipe": data.recipe}
        if found is self.fixed_reference:  # by hand: names and recipe may be unknown (an external model); nothing may differ
            run = {k: v for k, v in run.items() if v is not None}
        why = mismatch(found[1], run)
        if why is None:
            if found[1].get("threshold") is None and self.threshold is None and self.statistic in ("auto", "reference_z"):
                raise ConfigError(f"detector.universal_patch.reference={found[0]} has no threshold (its dev population had too "
                                  "few clean models); accepted: detector.universal_patch.threshold=<number>")
            return found, None
        if found is self.fixed_reference or self.statistic == "reference_z":
            raise ConfigError(f"detector.universal_patch.reference={found[0]} was measured on other runs: this one has {why}; "
                              "accepted: a reference of this dataset, model and detector settings, or statistic=max_gap")
        return None, f"the reference {found[0]} does not apply: this run has {why}"

    def rule(self, reference: tuple[str, dict[str, Any]] | None) -> tuple[str, float, list[float] | None]:
        """(statistic, threshold, calibration) this run decides by."""
        statistic = self.statistic if self.statistic != "auto" else ("reference_z" if reference else "max_gap")
        on_ref = statistic == "reference_z" and reference is not None
        threshold = self.threshold
        if threshold is None:
            threshold = float(reference[1]["threshold"]) if on_ref else self.MAX_GAP_THRESHOLD
        calibration = self.calibration or (reference[1].get("calibration") if on_ref else None)
        return statistic, threshold, calibration

    def measure(self, model: nn.Module, classes: list[int], data: DetectionData) -> dict[str, Any]:
        from dataclasses import replace

        from classwise.patterns.baselines import universal_patches
        from classwise.patterns.chunking import RunOptions
        from classwise.patterns.evaluate import (
            EVAL_ORDER_KEY,
            EvalOptions,
            attack_successes,
            eval_order,
        )
        from classwise.patterns.search import ImageSet, stream_seed

        self.reference_for(data)  # a reference that cannot apply is refused before the model is probed
        start = time.perf_counter()
        if not classes:
            return {"classes": [], "hits": [], "n": [], "seconds": 0.0}
        r_count = len(self.ratios)
        values, pix = universal_patches(model, classes, self.ratios, ImageSet(*data.clean), replace(self.patch, seed=data.seed),
                                        RunOptions(data.max_forward, data.progress))  # [K, R, C, H, W], [K, R, 1, H, W]
        ex, ey = data.held_out
        keep = eval_order(len(ey), stream_seed(data.seed, EVAL_ORDER_KEY))[: self.eval_images]  # the same images for all
        rates = attack_successes(model, values.flatten(0, 1), pix.flatten(0, 1),
                                 torch.tensor(classes).repeat_interleave(r_count), ImageSet(ex[keep], ey[keep]),
                                 EvalOptions(max_forward=data.eval_forward)).view(len(classes), r_count)
        return {"classes": list(classes), "hits": rates.hits.tolist(), "n": rates.n.tolist(),
                "seconds": round(time.perf_counter() - start, 3)}

    def decide(self, measured, records, data) -> dict[str, Any]:
        from classwise.patterns.references import describe

        m = _sorted_by_class(measured)
        classes = m["classes"]
        hits, n = torch.tensor(m["hits"]).view(len(classes), -1), torch.tensor(m["n"]).view(len(classes), -1)  # [K, R]
        asr = (hits / n.clamp(min=1)).tolist()
        reference, why_not = self.reference_for(data)
        statistic, threshold, calibration = self.rule(reference)
        evidence: dict[str, Any] = {"classes": classes, "ratios": self.ratios, "asr": asr, "asr_n": n.tolist(),
                                    "statistic": statistic, "threshold": threshold,
                                    "reference": reference[0] if reference else None, "reference_note": why_not,
                                    "seconds": measured["seconds"]}
        if len(classes) < 2:
            return Verdict("abstained", "fewer than 2 classes probed: no class to compare with").block(
                self.name, data, evidence)
        stats, best, gaps = patch_statistics(hits, n)
        at = max(range(len(gaps)), key=lambda r: gaps[r])
        target = classes[int(best[at])]
        against = ""
        if reference is not None:
            stats["reference_z"], k = reference_z(patch_logits(hits, n), reference[1])
            if statistic == "reference_z":
                target = classes[k]
                at = max(range(len(self.ratios)), key=lambda r: asr[k][r])
                against = f" ({describe(*reference)})"
        score = stats[statistic]
        evidence.update(statistics=stats, gap=gaps)
        prob = logistic(score, calibration)
        k = pattern_pixels_of(self.ratios[at], data)
        if score > threshold:
            return Verdict("backdoored", f"class {target}: {k} free pixels reach ASR {asr[classes.index(target)][at]:.2f} on "
                           f"clean images; {statistic} {score:.2f} > {threshold:.3g}{against}", score, target, prob).block(
                self.name, data, {**evidence, "flagged": [target]})
        return Verdict("clean", f"no class stands out: best class {target} at ASR {asr[classes.index(target)][at]:.2f} with "
                       f"{k} free pixels, {statistic} {score:.2f} <= {threshold:.3g}{against}", score, None, prob).block(
            self.name, data, {**evidence, "flagged": []})


def patch_logits(hits: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """[K, R] logits of the rates, clamped to [FLOOR, 1 - FLOOR] (smoothed, so 0 and 1 stay finite)."""
    rate = ((hits + 0.5) / (n + 1.0)).clamp(FLOOR, 1 - FLOOR)
    return (rate / (1 - rate)).log()


def reference_z(logit: torch.Tensor, reference: dict[str, Any]) -> tuple[float, int]:
    """(score, class): the largest z of a class's logit against the same class and ratio on clean reference
    models, (logit - mean) / sd, sd floored at `reference["min_sd"]`: a naturally easy class is easy there too."""
    mean = torch.tensor(reference["mean"], dtype=logit.dtype)
    sd = torch.tensor(reference["sd"], dtype=logit.dtype).clamp(min=float(reference.get("min_sd", 0.25)))
    z = (logit - mean) / sd  # [K, R]
    flat = int(z.argmax())
    return float(z.flatten()[flat]), flat // z.shape[1]


def patch_statistics(hits: torch.Tensor, n: torch.Tensor) -> tuple[dict[str, float], list[int], list[float]]:
    """The universal patch detector's statistics from hits and counts [K classes, R ratios]: (statistics,
    the best class per ratio, the logit gap per ratio). See `UniversalPatchDetector`."""
    rate = ((hits + 0.5) / (n + 1.0)).clamp(FLOOR, 1 - FLOOR)  # off 0 and 1
    logit = patch_logits(hits, n)
    best = rate.argmax(0).tolist()  # [R]
    gaps, prob_gaps = [], []
    for r, b in enumerate(best):
        others = [i for i in range(len(rate)) if i != b]
        gaps.append(float(logit[b, r]) - statistics.median(float(logit[i, r]) for i in others))
        prob_gaps.append(float(rate[b, r]) - statistics.median(float(rate[i, r]) for i in others))
    stats = {"max_gap": max(gaps), "mean_gap": sum(gaps) / len(gaps), "prob_gap": max(prob_gaps),
             "max_logit": float(logit.max())}
    return stats, best, gaps


def pattern_pixels_of(ratio: float, data: DetectionData) -> int:
    from classwise.patterns.search import pattern_pixel_count

    h, w = data.clean[0].shape[-2:]
    return pattern_pixel_count(ratio, h, w)


class PatternDetector(Detector):
    """Ours, from the class-wise patterns: a backdoor's target has a pattern that works and is far smaller
    than the other classes' (MAD anomaly index of the log mask L1, small side, `patterns/detection.py`).

    Only patterns whose held-out ASR at the gate ratio reaches `asr_gate` can be flagged; every class
    whose mask is not empty enters the median and MAD, so a model with a single working class still
    gets a verdict. Abstains with fewer than 3 non-empty masks, and under `threat_model=clean_data`
    when the canvases came from a poisoned training set.
    """

    name = "patterns"
    reads_patterns = True

    def __init__(self, asr_gate: float | None = None, gate_ratio: float | None = None, threshold: float = 2.0,
                 calibration: Sequence[float] | None = None):
        from classwise.patterns.detection import ASR_GATE

        self.asr_gate = ASR_GATE if asr_gate is None else float(asr_gate)
        if not 0 <= self.asr_gate <= 1:
            raise ConfigError(f"detector.patterns.asr_gate={asr_gate}; accepted: a number in [0, 1]")
        self.gate_ratio, self.threshold = gate_ratio, float(threshold)
        self.calibration = calibration_of(self.name, calibration)

    def decide(self, measured, records, data) -> dict[str, Any]:
        from classwise.patterns.detection import pattern_detection

        ratios = [b["pattern_ratio"] for b in records[0].by_ratio] if records else []
        gate_ratio = self.gate_ratio if self.gate_ratio is not None else (max(ratios) if ratios else None)
        if records and gate_ratio not in ratios:
            raise ConfigError(f"detector.patterns.gate_ratio={gate_ratio} is not searched; accepted: one of "
                              f"search.pattern_ratios {ratios} (or null: the largest)")
        start = time.perf_counter()
        if data.canvas_poisoned and data.threat_model == "clean_data":
            return Verdict("abstained", "the patterns' canvases come from the poisoned training set, which "
                           "threat_model=clean_data forbids a detector to read (search.canvas.source=search, or "
                           "threat_model=training_data)").block(self.name, data)
        if len(records) < 3:
            return Verdict("abstained", f"{len(records)} classes searched; the anomaly index needs 3 or more").block(
                self.name, data)
        gate_asr = [next(b["asr"] for b in r.by_ratio if b["pattern_ratio"] == gate_ratio) for r in records]
        block = pattern_detection([r.mask_l1 for r in records], gate_asr,
                                  [r.class_index for r in records], self.asr_gate, gate_ratio, self.threshold)
        block["seconds"] = round(time.perf_counter() - start, 4)
        if block["median"] is None:
            return Verdict("abstained", "fewer than 3 classes with a non-empty mask: no spread to measure against").block(
                self.name, data, block)
        score = block["score"]
        prob = logistic(score, self.calibration)
        works = [c for c, s in zip(block["classes"], block["not_scored_mask"], strict=True) if not s]
        block.pop("not_scored_mask")
        if block["flagged"]:
            t = block["predicted_target"]
            idx = block["anomaly_index"][block["classes"].index(t)]
            return Verdict("backdoored", f"class {t}: a working pattern with anomaly index {idx:.1f} > {self.threshold:g}",
                           score, t, prob).block(self.name, data, block)
        why = (f"no working pattern stands out ({len(works)} of {len(records)} patterns reach ASR {self.asr_gate:g} at "
               f"{gate_ratio:.0%}; highest index among them {score:.1f} <= {self.threshold:g})") if works else (
               f"no pattern reaches ASR {self.asr_gate:g} at {gate_ratio:.0%}: no small pattern that works")
        return Verdict("clean", why, score, None, prob).block(self.name, data, block)


class NeuralCleanseDetector(Detector):
    """Neural Cleanse (Wang et al. 2019) from clean data: a reverse-engineered trigger per class and the MAD
    anomaly index of their L1 norms, small side; settings as `NeuralCleanseConfig` (the reference's)."""

    name = "neural_cleanse"

    def __init__(self, threshold: float = 2.0, calibration: Sequence[float] | None = None, **settings: Any):
        from dataclasses import fields

        from classwise.patterns.neural_cleanse import NeuralCleanseConfig

        accepted = {f.name for f in fields(NeuralCleanseConfig)} - {"seed"}
        unknown = sorted(set(settings) - accepted)
        if unknown:
            raise ConfigError(f"detector.neural_cleanse.{unknown[0]} is not a Neural Cleanse setting; accepted: "
                              f"{', '.join(sorted(accepted | {'threshold', 'calibration'}))}")
        self.settings = settings
        self.cfg = NeuralCleanseConfig(**settings)
        self.threshold, self.calibration = float(threshold), calibration_of(self.name, calibration)

    def config(self, seed: int):
        from dataclasses import replace

        return replace(self.cfg, seed=seed)

    def measure(self, model, classes, data) -> dict[str, Any]:
        from classwise.patterns.chunking import RunOptions
        from classwise.patterns.neural_cleanse import neural_cleanse_masks
        from classwise.patterns.search import ImageSet

        if not classes:
            return {"classes": [], "l1": [], "reached_threshold": [], "epochs_run": [], "seconds": 0.0}
        return neural_cleanse_masks(model, list(classes), ImageSet(*data.clean), self.config(data.seed),
                                    RunOptions(data.max_forward, data.progress))

    def decide(self, measured, records, data) -> dict[str, Any]:
        from classwise.patterns.neural_cleanse import nc_detection

        if len(measured["classes"]) < 3:
            return Verdict("abstained", f"{len(measured['classes'])} classes probed; the anomaly index needs 3 or more").block(
                self.name, data)
        block = nc_detection(measured, self.config(data.seed), self.threshold)
        score = block["score"]
        prob = logistic(score, self.calibration)
        if block["flagged"]:
            t = block["predicted_target"]
            return Verdict("backdoored", f"class {t}: reverse-engineered trigger with anomaly index "
                           f"{block['anomaly_index'][block['classes'].index(t)]:.1f} > {self.threshold:g}", score, t, prob).block(
                self.name, data, block)
        return Verdict("clean", f"no class's trigger stands out (highest index {score:.1f} <= {self.threshold:g})",
                       score, None, prob).block(self.name, data, block)
