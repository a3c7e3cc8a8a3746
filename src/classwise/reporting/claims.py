"""`claims.md`: the paper's claims tested on a sweep's runs, one row each, with a verdict by a stated rule.

Each claim is a per-seed statistic d (signed so that d > 0 is what the paper claims), aggregated over
seeds as a mean with its 95% Student-t interval (reporting/aggregate.estimate). The verdict rule:

- holds: the interval lies above 0 (its low end > 0);
- does not hold: the interval lies below 0 (its high end < 0);
- inconclusive: the interval contains 0, or fewer than 2 seeds (no interval).

Claim 5 counts seeds instead (see CLAIM5_RULE). Claim 3 reads only the backdoored runs whose trigger
works (backdoor ASR >= INSTALLED); the others are named in its note. Runs are told apart by `run.setting`, the backdoor's
trigger (`metrics.backdoor.trigger`) and the seed; transfer runs (a `transfer` block) feed claim 6 only.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classwise.reporting.aggregate import Estimate, estimate
from classwise.reporting.runs import (
    Run,
    all_baselines,
    all_ratios,
    as_number,
    baselines_of,
    by_ratio,
    mean,
)

RULE = ("holds if the 95% t-interval of the mean over seeds lies above 0, does not hold if it lies below 0, "
        "inconclusive if it contains 0 or fewer than 2 seeds have the statistic")
CLAIM5_RULE = ("holds if one class is flagged by our detector in more than half of the natural seeds (2 seeds "
               "or more), does not hold if no class is flagged in any seed, inconclusive otherwise")
SIMPLER = ("connected components (8-neighbourhood) of the pattern's pixels at the ratio, mean over classes: "
           "a shape-like pattern is one or a few blobs, a noise-like one is many scattered pixels; it counts "
           "what is pasted at an equal pixel budget and ignores the canvas. The mask's total variation "
           "(`mask_tv`) is shown beside it")
# Claim 3 reads a backdoored run only where the trigger works (backdoor ASR >= this): a model that did
# not learn its trigger has no planted pattern to find, and counting it would test nothing.
INSTALLED = 0.5
POPULATION_INSTALLED = 0.9  # the detector benchmark's own rule (reporting/detection_bench.INSTALLED)
TARGET_FPR = 0.05
WHOLE_IMAGE = 0.5  # a trigger on at least this share of the pixels (Blend, SIG) leaves "on the trigger" untestable


@dataclass
class Claim:
    number: str
    claim: str
    statistic: str
    value: Estimate | str | None
    verdict: str
    note: str = ""


def verdict(est: Estimate | None) -> str:
    if est is None or est.half is None:
        return "inconclusive"
    if est.low > 0:
        return "holds"
    if est.high < 0:
        return "does not hold"
    return "inconclusive"


def fill_shape_stats(runs: Sequence[Run]) -> None:
    """Older runs lack `components` / `mask_tv`: compute them from patterns/masks.safetensors, in memory."""
    from safetensors.torch import load_file

    from classwise.patterns.shape import add_shape_stats

    for run in runs:
        if not run.has_classes or all("mask_tv" in c for c in run.classes):
            continue
        search = run.data.get("search") if isinstance(run.data.get("search"), dict) else {}
        path = run.dir / str(search.get("masks_file") or "patterns/masks.safetensors")
        if not path.is_file():
            continue
        tensors = load_file(str(path))
        masks = {c.get("class_index"): tensors.get(f"class_{c.get('class_index')}") for c in run.classes}
        scores = {c.get("class_index"): tensors.get(f"score_{c.get('class_index')}") for c in run.classes}
        add_shape_stats(run.classes, {k: v for k, v in masks.items() if v is not None},
                        {k: v for k, v in scores.items() if v is not None})


def _seed(run: Run) -> Any:
    return run.info.get("seed")


def _trigger(run: Run) -> str | None:
    backdoor = run.metrics.get("backdoor")
    return backdoor.get("trigger") if isinstance(backdoor, dict) else None


def _class_mean(run: Run, ratio: str, field: str) -> float | None:
    vals = []
    for cls in run.classes:
        e = by_ratio(cls).get(ratio)
        if e is not None:
            vals.append(e.get(field) if field in ("asr", "components") else baselines_of(e).get(field))
    return mean(vals)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _smallest_margin(run: Run) -> float | None:
    """ln(smallest other class's mask L1 / the backdoor target's): > 0 when the target's mask is the smallest."""
    det = run.detectors.get("patterns") or {}
    target = det.get("true_target", (run.metrics.get("backdoor") or {}).get("target_class"))
    l1 = {c.get("class_index"): as_number(c.get("mask_l1")) for c in run.classes}
    others = [v for k, v in l1.items() if k != target and v is not None]
    if not l1.get(target) or not others or min(others) <= 0:
        return None
    return math.log(min(others) / l1[target])


def _trigger_area(run: Run) -> float | None:
    """The share of the image's pixels the run's trigger touches (its `region`), from the resolved config."""
    config = run.info.get("config") if isinstance(run.info.get("config"), dict) else {}
    trigger = config.get("trigger")
    if not isinstance(trigger, dict) or "_target_" not in trigger:
        return None
    try:
        from hydra.utils import instantiate

        return float(instantiate(trigger).region.float().mean())
    except Exception:  # noqa: BLE001 - an unknown trigger leaves this test out, not the report
        return None


def _not_installed(run: Run) -> bool:
    """A backdoored run whose measured backdoor ASR is below INSTALLED (a run without one is kept)."""
    asr = as_number(run.metrics.get("backdoor_asr"))
    return asr is not None and asr < INSTALLED


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _flag_counts(runs: Sequence[Run], block: str) -> tuple[Counter, int]:
    counts: Counter = Counter()
    n = 0
    for run in runs:
        det = run.detectors.get("patterns" if block == "ours" else block)
        if not isinstance(det, dict):
            continue
        n += 1
        names = {c.get("class_index"): c.get("class_name") for c in run.classes}
        counts.update(names.get(c, str(c)) for c in det.get("flagged") or [])
    return counts, n


def build_claims(runs: Sequence[Run]) -> tuple[list[Claim], str]:
    """The claims and the pattern ratio they are read at (5% where present)."""
    searched = [r for r in runs if r.has_classes and "transfer" not in r.data]
    ratios = all_ratios(searched)
    ratio = "0.05" if "0.05" in ratios else (ratios[len(ratios) // 2] if ratios else "0.05")
    small = ratios[0] if ratios else ratio
    natural = [r for r in searched if r.setting == "natural"]
    adversarial = [r for r in searched if r.setting == "adversarial"]
    backdoor: dict[str, list[Run]] = defaultdict(list)
    for r in searched:
        if r.setting == "backdoor":
            backdoor[_trigger(r) or "?"].append(r)
    pct = f"{float(ratio):.0%}" if as_number(ratio) is not None else ratio
    claims: list[Claim] = []

    # 1. natural patterns vs random pixels of the same canvas.
    d = [_diff(_class_mean(r, ratio, "asr"), _class_mean(r, ratio, "random")) for r in natural]
    est = estimate(d)
    claims.append(Claim("1", "natural models have class-wise patterns (ASR well above random pixels)",
                        f"mean ASR@{pct} − mean random-pixel ASR@{pct}, natural runs", est, verdict(est),
                        f"ASR {_fmt(mean(_class_mean(r, ratio, 'asr') for r in natural))}, random "
                        f"{_fmt(mean(_class_mean(r, ratio, 'random') for r in natural))}"))

    # 2. patterns vs every other same-budget baseline (a dense UAP has no pixel budget: left out).
    for i, b in enumerate(b for b in all_baselines(natural) if b != "random" and "dense" not in b):
        est = estimate(_diff(_class_mean(r, ratio, "asr"), _class_mean(r, ratio, b)) for r in natural)
        # A UAP's top-k pixels move by at most L-inf eps where a pasted pixel takes any value: the same pixel
        # count, not the same budget, so the claim says so rather than calling it a fair comparison.
        budget = "the same pixel count (bounded by L-inf eps: not the same budget)" if b.startswith("uap") else "the same budget"
        claims.append(Claim(f"2{chr(ord('a') + i)}", f"patterns beat {b} pixels at {budget}",
                            f"mean ASR@{pct} − mean {b}@{pct}, natural runs", est, verdict(est)))
    if not any(c.number.startswith("2") for c in claims):
        claims.append(Claim("2", "patterns beat Grad-CAM / UAP pixels at the same budget", "no baseline but random "
                            "in these runs", None, "inconclusive"))

    # 3. the backdoor target's pattern: most predictive at the smallest ratio, detected, on the trigger.
    spct = f"{float(small):.0%}" if as_number(small) is not None else small
    for trigger in sorted(backdoor):
        every = backdoor[trigger]
        left_out = [r for r in every if _not_installed(r)]
        backdoor[trigger] = [r for r in every if not _not_installed(r)]
        excluded = (f"; {len(left_out)} of {len(every)} seeds left out, their backdoor ASR "
                    f"{', '.join(_fmt(as_number(r.metrics.get('backdoor_asr'))) for r in left_out)} < {INSTALLED}: "
                    "the model did not learn the trigger" if left_out else "")
        margins, ours, nc, on_trigger = [], [], [], []
        for r in backdoor[trigger]:
            det = r.detectors.get("patterns") or {}
            target = det.get("true_target", (r.metrics.get("backdoor") or {}).get("target_class"))
            asr = {c.get("class_index"): as_number(by_ratio(c).get(small, {}).get("asr")) for c in r.classes}
            others = [v for k, v in asr.items() if k != target and v is not None]
            if asr.get(target) is not None and others:
                margins.append(asr[target] - max(others))
            ours.append(det.get("predicted_target") == target if det else None)
            nc_block = r.detectors.get("neural_cleanse")
            nc.append(nc_block.get("predicted_target") == target if isinstance(nc_block, dict) else None)
            on_trigger.append((det.get("target_pixels_on_trigger") or {}).get(str(as_number(small))))
        est = estimate(margins)
        hits = [h for h in ours if h is not None]
        nc_hits = [h for h in nc if h is not None]
        note = (f"target detected: ours {sum(hits)}/{len(hits)}"
                + (f", Neural Cleanse {sum(nc_hits)}/{len(nc_hits)}" if nc_hits else "")
                + (f"; target pixels on the trigger at {spct}: {_fmt(mean(on_trigger))}"
                   if mean(on_trigger) is not None else "") + excluded)
        claims.append(Claim(f"3-{trigger}", f"{trigger}: the target class has the most predictive small pattern",
                            f"target's ASR@{spct} − best other class's ASR@{spct}, per seed", est, verdict(est), note))
        # ... the smallest one (mask L1), and on the trigger (beyond the trigger's own share of the image).
        est = estimate(_smallest_margin(r) for r in backdoor[trigger])
        claims.append(Claim(f"3-{trigger}-small", f"{trigger}: the target class has the smallest mask",
                            "ln(smallest other class's mask L1 / target's mask L1), per seed", est, verdict(est)))
        areas = [a for a in (_trigger_area(r) for r in backdoor[trigger]) if a is not None]
        if areas and max(areas) >= WHOLE_IMAGE:
            claims.append(Claim(f"3-{trigger}-on", f"{trigger}: the target's pattern sits on the trigger",
                                "not testable", None, "inconclusive",
                                f"the trigger covers {max(areas):.0%} of the image: every pixel is on it"))
        else:
            est = estimate(_diff(as_number(share), _trigger_area(r)) for r, share in zip(backdoor[trigger], on_trigger,
                                                                                          strict=True))
            claims.append(Claim(f"3-{trigger}-on", f"{trigger}: the target's pattern sits on the trigger",
                                f"share of the target's pattern on the trigger at {spct} − the trigger's share of "
                                "the image (chance), per seed", est, verdict(est)))

    # 4. adversarial vs natural, paired by seed: less predictive, and simpler.
    nat_by_seed = {_seed(r): r for r in natural}
    pairs = [(nat_by_seed[_seed(a)], a) for a in adversarial if _seed(a) in nat_by_seed]
    est = estimate(_diff(_class_mean(n, ratio, "asr"), _class_mean(a, ratio, "asr")) for n, a in pairs)
    claims.append(Claim("4a", "adversarially trained models' patterns are less predictive",
                        f"natural − adversarial mean ASR@{pct}, paired by seed", est, verdict(est)))
    est = estimate(_diff(_class_mean(n, ratio, "components"), _class_mean(a, ratio, "components")) for n, a in pairs)

    def tv(run: Run) -> float | None:
        return mean(c.get("mask_tv") for c in run.classes)

    claims.append(Claim("4b", "adversarially trained models' patterns are simpler",
                        f"natural − adversarial connected components at {pct}, paired by seed", est, verdict(est),
                        f"mask TV natural {_fmt(mean(tv(n) for n, _ in pairs))}, "
                        f"adversarial {_fmt(mean(tv(a) for _, a in pairs))}"))

    # 5. natural backdoors: which classes our detector flags on clean models, how often, and Neural Cleanse.
    ours, n_ours = _flag_counts(natural, "ours")
    theirs, n_nc = _flag_counts(natural, "neural_cleanse")
    if n_ours == 0:
        v5, value = "inconclusive", "no detection on natural runs"
    else:
        top = ours.most_common(1)[0] if ours else None
        v5 = ("does not hold" if not ours else
              "holds" if n_ours >= 2 and top[1] > n_ours / 2 else "inconclusive")
        value = ", ".join(f"{k} {c}/{n_ours}" for k, c in ours.most_common()) or f"none flagged in {n_ours} seeds"
    note = ("Neural Cleanse flags: " + (", ".join(f"{k} {c}/{n_nc}" for k, c in theirs.most_common()) or "none")
            if n_nc else "")
    claims.append(Claim("5", "clean models have natural backdoors (classes flagged by our detector)",
                        "seeds in which each class is flagged (ours)", value, v5, note))

    # 6. transfer between natural models of different seeds: transferred patterns still beat no paste.
    transfer = [r for r in runs if isinstance(r.data.get("transfer"), dict)]
    if transfer:
        d = []
        for r in transfer:
            cls = [c for c in r.data["transfer"].get("classes") or [] if isinstance(c, dict)]
            entries = [by_ratio(c).get(ratio) for c in cls]
            d.append(_diff(mean(e.get("asr") for e in entries if e), mean(e.get("base_rate") for e in entries if e)))
        est = estimate(d)
        claims.append(Claim("6", "patterns transfer between natural models of different seeds",
                            f"transferred mean ASR@{pct} − no-paste base rate", est, verdict(est)))
    return claims, ratio


POPULATION_RULE = ("claim 3 from a population holds if the 95% Wilson interval of the share of installed backdoors "
                   "whose target the detector names lies above chance (1 / classes), does not hold if it lies below; "
                   "claim 5 from a population holds if the share of clean models flagged lies above the dev-chosen "
                   f"false-positive rate ({TARGET_FPR:.0%}) by its interval, does not hold if the share is at or "
                   "below it, inconclusive otherwise")


def population_claims(summary: dict[str, Any], num_classes: int = 10) -> list[Claim]:
    """Claims 3 and 5 read from a detector benchmark's population (`detection_bench.json`): per detector,
    the backdoor target named among the installed backdoors (3), and clean models flagged against the
    clean models' null, the threshold chosen on dev clean models (5)."""
    from classwise.intervals import wilson_interval

    detail = summary.get("members_detail") or []
    names = sorted({k.split(".", 1)[0] for m in detail for k in m if k.endswith(".verdict")})
    where = (f"population `{summary.get('population')}` ({summary.get('clean')} clean, "
             f"{summary.get('backdoored_installed')} installed backdoors), threat model clean_data")
    out: list[Claim] = []
    for name in names:
        scored = [m for m in detail if m.get(f"{name}.verdict") is not None]
        installed = [m for m in scored if m["backdoored"] and (m.get("backdoor_asr") or 0) >= POPULATION_INSTALLED]
        clean = [m for m in scored if not m["backdoored"]]
        if installed:
            hits = sum(m.get(f"{name}.predicted_target") == m.get("target") for m in installed)
            lo, hi = wilson_interval(hits, len(installed))
            chance = 1 / num_classes
            verdict3 = "holds" if lo > chance else "does not hold" if hi < chance else "inconclusive"
            families = Counter(m.get("family") for m in installed)
            named = Counter(m.get("family") for m in installed if m.get(f"{name}.predicted_target") == m.get("target"))
            note = ", ".join(f"{f} {named[f]}/{families[f]}" for f in sorted(families, key=str)) + f"; {where}"
            out.append(Claim(f"3-population-{name}", "a backdoored model's target class is found (the planted pattern)",
                             f"share of installed backdoors whose target {name} names [95% Wilson]",
                             f"{hits}/{len(installed)} = {hits / len(installed):.2f} [{lo:.2f}, {hi:.2f}]", verdict3, note))
        if clean:
            flagged = [m for m in clean if m.get(f"{name}.verdict") == "backdoored"]
            lo, hi = wilson_interval(len(flagged), len(clean))
            share = len(flagged) / len(clean)
            verdict5 = "holds" if lo > TARGET_FPR else "does not hold" if share <= TARGET_FPR else "inconclusive"
            classes = Counter(m.get(f"{name}.predicted_target") for m in flagged)
            note = ("flagged classes: " + ", ".join(f"{c} x{k}" for c, k in classes.most_common()) if flagged
                    else "no clean model flagged") + f"; {where}"
            out.append(Claim(f"5-population-{name}", "clean models have natural backdoors (flagged against the clean null)",
                             f"share of clean models {name} calls backdoored [95% Wilson]",
                             f"{len(flagged)}/{len(clean)} = {share:.2f} [{lo:.2f}, {hi:.2f}]", verdict5, note))
    return out


def read_population(path: str | Path | None) -> dict[str, Any] | None:
    """A detector benchmark's summary (reporting/detection_bench: report/<population>/detection_bench.json), if there."""
    import json

    if path is None or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def claims_markdown(claims: Sequence[Claim], n_runs: int) -> str:
    lines = ["# Paper claims", "",
             f"From {n_runs} runs. Each value is a mean over seeds ± the half-width of its 95% Student-t "
             "interval (t_{0.975,n-1}·sd/√n), n = seeds with the statistic.", "",
             f"**Verdict rule** (claims 1-4, 6): {RULE}.", "",
             f"**Claim 5 rule**: {CLAIM5_RULE}.", "",
             f"**Claim 3 reads** only the backdoored runs whose trigger works (backdoor ASR >= {INSTALLED}): "
             "a model that did not learn its trigger has no planted pattern to find; the runs left out are "
             "named in the note.", "",
             f"**Simpler** (claim 4b): {SIMPLER}.", "",
             *([f"**From a population** (rows `3-population-*`, `5-population-*`): {POPULATION_RULE}.", ""]
               if any("population" in c.number for c in claims) else []),
             "| # | claim | statistic | value | n | verdict | note |", "|---|---|---|---:|---:|---|---|"]
    for c in claims:
        value = c.value.pretty() if isinstance(c.value, Estimate) else (c.value or "")
        n = c.value.n if isinstance(c.value, Estimate) else ""
        cells = [c.number, c.claim, c.statistic, value, str(n), f"**{c.verdict}**", c.note]
        lines.append("| " + " | ".join(s.replace("|", "\\|") for s in cells) + " |")
    return "\n".join(lines) + "\n"


def write_claims(runs: Sequence[Run], out: str | Path, population: dict[str, Any] | None = None) -> Path:
    """claims.md: the sweep's claims, then claims 3 and 5 from a detector benchmark's population where given."""
    claims, _ = build_claims(runs)
    if population:
        claims += population_claims(population)
    path = Path(out) / "claims.md"
    path.write_text(claims_markdown(claims, len(runs)))
    return path
