"""Detectors scored as the field scores them: ROC-AUC, TPR at 5% FPR and cross-entropy over a model population.

`python -m classwise.reporting.detection_bench outputs/detect_bench --population test --calibrate-from dev`
reads `<bench>/<population>/<config>/member_N/results.json` (written by `classwise-search
bench=population`), takes each member's ground truth from its recipe (`classwise.population`), and
writes `<bench>/report/<population>/`: detection_bench.md / .csv / .json and roc.png. A backdoored
member whose trigger did not install (backdoor ASR < `INSTALLED`) is listed, not scored; a detector
that abstained on a member ranks it below every score (it did not call it backdoored).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

INSTALLED = 0.9  # backdoor ASR from which a planted trigger counts as installed
PATCH_FAMILIES = ("badnets", "trojan")
TARGET_FPR = 0.05


@dataclass
class Member:
    """One model of the population: its ground truth and every detector's block."""

    population: str
    member: int
    backdoored: bool
    family: str | None
    target: int | None
    backdoor_asr: float | None
    clean_acc: float | None
    detectors: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def installed(self) -> bool:
        return self.backdoored and (self.backdoor_asr or 0.0) >= INSTALLED


def collect(bench_dir: Path, population: str, with_variants: bool = False) -> list[Member]:
    """Every member with a results.json under `<bench_dir>/<population>/*/member_N`, detectors of all configs merged."""
    from classwise.population import recipe
    from classwise.reporting.results import detector_blocks

    members: dict[int, Member] = {}
    for path in sorted((bench_dir / population).glob("*/member_*/results.json")):
        data = json.loads(path.read_text())
        if data.get("metrics") is None:  # an interrupted job: its run, and its metrics, were never written
            continue
        n = int(path.parent.name.split("_", 1)[1])
        ds = (data.get("run") or {}).get("config", {}).get("dataset") or {}
        truth = recipe(population, n, int(ds.get("image_size", 28)), int(ds.get("num_classes", 10)))
        metrics = data.get("metrics") or {}
        m = members.setdefault(n, Member(population, n, truth["backdoored"], truth.get("family"), truth.get("target_class"),
                                         metrics.get("backdoor_asr"), metrics.get("clean_acc")))
        m.detectors.update(detector_blocks(data))
        if with_variants:
            m.detectors.update(patch_variants(m.detectors.get("universal_patch")))
    return [members[k] for k in sorted(members)]


def _counts(block: dict[str, Any]):
    """(hits, n) [K, R] of a universal patch block, back from its recorded rates and counts."""
    import torch

    n = torch.tensor(block["asr_n"], dtype=torch.float64)
    return (torch.tensor(block["asr"], dtype=torch.float64) * n).round(), n


def _logits(block: dict[str, Any]):
    from classwise.patterns.detectors import patch_logits

    return patch_logits(*_counts(block))  # [K, R]


def reference_of(members: list[Member], min_sd: float = 0.25) -> dict[str, Any] | None:
    """Per class and ratio, the mean and sd of the universal patch's logit over the clean members: the
    reference `statistic: reference_z` standardises against (a naturally easy class is easy there too)."""
    import torch

    blocks = [m.detectors["universal_patch"] for m in members if not m.backdoored and "universal_patch" in m.detectors]
    if len(blocks) < 3:
        return None
    stack = torch.stack([_logits(b) for b in blocks])  # [M, K, R]
    return {"ratios": blocks[0]["ratios"], "models": len(blocks), "min_sd": min_sd,
            "mean": stack.mean(0).tolist(), "sd": stack.std(0).tolist()}


def reference_file(bench_dir: Path, members: list[Member], command: str = "") -> dict[str, Any] | None:
    """The dev population's reference as `detector.universal_patch.reference` reads it: per class and ratio
    the clean models' mean and sd (`reference_of`); what it was measured on (dataset, model, image shape,
    the detector's settings), so a run it does not fit is told so; and the threshold and calibration of
    `reference_z` chosen on this population (each clean model scored against the others)."""
    from datetime import datetime

    from classwise.patterns.references import SETTINGS, recipe_of_checkpoint

    ref = reference_of(members)
    if ref is None:
        return None
    scored = [Member(m.population, m.member, m.backdoored, m.family, m.target, m.backdoor_asr, m.clean_acc,
                     {"universal_patch": m.detectors["universal_patch"]}) for m in members if "universal_patch" in m.detectors]
    add_reference_z(scored, None, leave_one_out=True)
    fitted = calibrate(scored).get("universal_patch[reference_z]", {})
    run: dict[str, Any] = {}  # the run block of a member the universal patch ran on (names, config)
    recipes = []  # every such member's training recipe: a reference holds for one
    for path in sorted((bench_dir / members[0].population).glob("*/member_*/results.json")):
        block = json.loads(path.read_text()).get("run") or {}
        if ((block.get("config") or {}).get("detector") or {}).get("universal_patch"):
            run = run or block
            recipes.append(recipe_of_checkpoint(block.get("checkpoint")))
    recipe = recipes[0] if recipes and all(r == recipes[0] for r in recipes) else None
    if recipe is None:
        print("detection_bench: the members' training recipes are unknown or differ; the reference records none, "
              "so `reference: auto` will not apply it")
    ds, det = run.get("config", {}).get("dataset") or {}, run.get("config", {}).get("detector", {}).get("universal_patch") or {}
    size = int(ds.get("image_size") or 0)
    meta = {"dataset": run.get("dataset"), "model": run.get("model"),
            "num_classes": ds.get("num_classes"), "image_shape": [ds.get("channels"), size, size] if size else None,
            **{k: det[k] for k in SETTINGS if k in det and k != "ratios"}}
    return {**{k: v for k, v in meta.items() if v is not None}, "recipe": recipe, **ref,
            "threshold": fitted.get("threshold"), "calibration": fitted.get("calibration"),
            "population": members[0].population, "members": [m.member for m in members if not m.backdoored],
            "written": datetime.now(UTC).strftime("%Y-%m-%d"), "command": command}


def add_reference_z(members: list[Member], reference: dict[str, Any] | None, leave_one_out: bool) -> None:
    """`universal_patch[reference_z]` for every member: against `reference`, or (choosing on dev) against the
    other clean members of the same population, so no clean model is its own reference."""
    from classwise.patterns.detectors import reference_z

    for m in members:
        block = m.detectors.get("universal_patch")
        if not block or not block.get("asr"):
            continue
        ref = reference_of([o for o in members if o is not m]) if leave_one_out else reference
        if ref is None:
            continue
        score, k = reference_z(_logits(block), ref)
        m.detectors["universal_patch[reference_z]"] = {"score": score, "predicted_target": block["classes"][k],
                                                       "verdict": None, "seconds": block.get("seconds")}


def patch_variants(block: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """`universal_patch[<statistic>]`: every statistic of the universal patch detector recomputed from its
    recorded per-class rates (so statistics can be compared on a dev population without rerunning)."""
    from classwise.patterns.detectors import UniversalPatchDetector, patch_statistics

    if not block or not block.get("asr") or len(block["asr"]) < 2:
        return {}
    stats, _, _ = patch_statistics(*_counts(block))
    target = _target_of(block)  # the easiest class at the ratio of the largest gap
    return {f"universal_patch[{k}]": {"score": v, "verdict": None, "seconds": block.get("seconds"), "predicted_target": target}
            for k, v in stats.items() if k in UniversalPatchDetector.STATISTICS}


def roc_auc(pos: list[float], neg: list[float]) -> float:
    """P(score of a backdoored model > score of a clean one), ties counting a half (Mann-Whitney)."""
    if not pos or not neg:
        return math.nan
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def auc_interval(pos: list[float], neg: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the ROC-AUC over bootstrap resamples of each class of model."""
    if not pos or not neg:
        return math.nan, math.nan
    rng = random.Random(seed)
    aucs = sorted(roc_auc(rng.choices(pos, k=len(pos)), rng.choices(neg, k=len(neg))) for _ in range(rounds))
    return aucs[int(0.025 * rounds)], aucs[int(0.975 * rounds) - 1]


def tpr_at_fpr(pos: list[float], neg: list[float], fpr: float = TARGET_FPR) -> float:
    """The share of backdoored models above the lowest threshold that calls at most `fpr` of the clean ones."""
    if not pos or not neg:
        return math.nan
    allowed = math.floor(fpr * len(neg))
    threshold = sorted(neg, reverse=True)[allowed] if allowed < len(neg) else -math.inf
    return sum(p > threshold for p in pos) / len(pos)


def fit_logistic(scores: list[float], labels: list[int], ridge: float = 1e-2, steps: int = 100) -> tuple[float, float]:
    """(a, b) of P(backdoored) = sigmoid(a * score + b) by Newton's method, a little ridge on a (separable data)."""
    a, b = 0.0, 0.0
    for _ in range(steps):
        ga, gb, haa, hab, hbb = ridge * a, 0.0, ridge, 0.0, 1e-9
        for s, y in zip(scores, labels, strict=True):
            p = 1 / (1 + math.exp(-max(-50.0, min(50.0, a * s + b))))
            ga += (p - y) * s
            gb += p - y
            w = p * (1 - p)
            haa, hab, hbb = haa + w * s * s, hab + w * s, hbb + w
        det = haa * hbb - hab * hab
        if abs(det) < 1e-12:
            break
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if abs(da) + abs(db) < 1e-9:
            break
    return a, b


def cross_entropy(probs: list[float], labels: list[int]) -> float:
    """Mean binary cross-entropy (nats), probabilities clipped to [1e-6, 1 - 1e-6] as TrojAI scores them."""
    eps = 1e-6
    return statistics.fmean(-math.log(min(1 - eps, max(eps, p)) if y else 1 - min(1 - eps, max(eps, p)))
                            for p, y in zip(probs, labels, strict=True))


def _score(block: dict[str, Any] | None) -> float:
    return -math.inf if not block or block.get("score") is None else float(block["score"])


def detector_names(members: list[Member]) -> list[str]:
    names: list[str] = []
    for m in members:
        names += [n for n in m.detectors if n not in names]
    return names


def score_table(members: list[Member], calibration: dict[str, tuple[float, float]] | None = None,
                thresholds: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per detector and group (pooled, patch, each family): the field's measures, with the members each saw.

    `thresholds` (chosen on a dev population) replace a detector's own verdicts by `score > threshold`;
    `calibration` its probabilities by the dev population's logistic fit.
    """
    calibration, thresholds = calibration or {}, thresholds or {}
    clean = [m for m in members if not m.backdoored]
    installed = [m for m in members if m.installed]
    families = sorted({m.family for m in installed})
    groups = [("pooled", installed), ("patch", [m for m in installed if m.family in PATCH_FAMILIES])]
    groups += [(f, [m for m in installed if m.family == f]) for f in families]
    rows = []
    for name in detector_names(members):
        ran_clean = [m for m in clean if name in m.detectors]
        for group, bd in groups:
            bd = [m for m in bd if name in m.detectors]
            if not bd or not ran_clean:
                continue
            pos, neg = [_score(m.detectors[name]) for m in bd], [_score(m.detectors[name]) for m in ran_clean]
            lo, hi = auc_interval(pos, neg)
            # A variant without a dev threshold has no verdict of its own: nothing to count at "its" threshold.
            decides = name in thresholds or any(m.detectors[name].get("verdict") for m in bd + ran_clean)
            called = [m for m in bd if _calls(m.detectors[name], thresholds.get(name))]
            named = [m for m in called if _target_of(m.detectors[name]) == m.target]
            fp = [m for m in ran_clean if _calls(m.detectors[name], thresholds.get(name))]
            abstained = sum(m.detectors[name].get("verdict") == "abstained" for m in bd + ran_clean)
            row = {"detector": name, "group": group, "clean": len(neg), "backdoored": len(pos),
                   "threshold": thresholds.get(name, m_threshold(bd + ran_clean, name)),
                   "roc_auc": roc_auc(pos, neg), "auc_low": lo, "auc_high": hi, "tpr_at_5fpr": tpr_at_fpr(pos, neg),
                   "tpr": len(called) / len(bd) if decides else math.nan,
                   "fpr": len(fp) / len(ran_clean) if decides else math.nan,
                   "target_named": len(named) / len(called) if called else math.nan, "abstained": abstained,
                   "seconds_per_model": statistics.median(_seconds(m.detectors[name]) for m in bd + ran_clean)}
            probs = [_probability(m.detectors[name], calibration.get(name)) for m in bd + ran_clean]
            if all(p is not None for p in probs):
                row["cross_entropy"] = cross_entropy(probs, [1] * len(bd) + [0] * len(ran_clean))
            rows.append(row)
    return rows


def _calls(block: dict[str, Any], threshold: float | None) -> bool:
    """Backdoored at `threshold` (score above it), or by the block's own verdict when there is none."""
    return _score(block) > threshold if threshold is not None else block.get("verdict") == "backdoored"


def _target_of(block: dict[str, Any]) -> int | None:
    """The class a detector names, also where its own verdict was clean (scored at a dev threshold)."""
    if block.get("predicted_target") is not None:
        return block["predicted_target"]
    if block.get("detector") == "universal_patch" and block.get("asr") and block.get("gap"):
        at = max(range(len(block["gap"])), key=lambda r: block["gap"][r])
        return block["classes"][max(range(len(block["classes"])), key=lambda c: block["asr"][c][at])]
    return None


def m_threshold(members: list[Member], name: str) -> float | None:
    values = {m.detectors[name].get("threshold") for m in members}
    return values.pop() if len(values) == 1 else None


def _seconds(block: dict[str, Any]) -> float:
    s = block.get("seconds")
    return float(s) if isinstance(s, int | float) else math.nan


def _probability(block: dict[str, Any], ab: tuple[float, float] | None) -> float | None:
    if ab is not None:
        from classwise.patterns.detectors import logistic

        return logistic(block.get("score"), ab) if block.get("score") is not None else 0.5
    return block.get("probability")


def calibrate(members: list[Member]) -> dict[str, dict[str, Any]]:
    """Per detector, from a dev population: the logistic (a, b), and the lowest threshold above every clean score."""
    out = {}
    for name in detector_names(members):
        seen = [m for m in members if name in m.detectors and (m.installed or not m.backdoored)]
        decided_by = {m.detectors[name].get("statistic") for m in seen}
        if "reference_z" in decided_by:
            # Scored against a reference: its threshold and calibration come with the reference, fitted with
            # each dev clean model left out (`reference_file`); refitted here they would be in-sample.
            continue
        scored = [(m.detectors[name].get("score"), int(m.backdoored)) for m in seen]
        scored = [(s, y) for s, y in scored if s is not None]
        if not scored:
            continue
        a, b = fit_logistic([s for s, _ in scored], [y for _, y in scored])
        clean = [s for s, y in scored if not y]
        # The lowest threshold that calls none of the dev population's clean models backdoored.
        out[name] = {"calibration": [round(a, 4), round(b, 4)],
                     "threshold": max(clean) if clean else None,
                     "statistic": decided_by.pop() if len(decided_by) == 1 else None}
    return out


def separate_statistics(members: list[Member]) -> list[Member]:
    """A detector that decided by different statistics on different members (the universal patch: reference_z
    where a reference fit, max_gap elsewhere) is scored per statistic, `name<statistic>`: one ROC-AUC never
    pools scores of two scales."""
    for name in detector_names(members):
        used = {m.detectors[name].get("statistic") for m in members if name in m.detectors}
        if len(used) > 1:
            print(f"detection_bench: {name} decided by {', '.join(sorted(map(str, used)))} on different members: "
                  "scored per statistic")
            for m in members:
                if name in m.detectors:
                    block = m.detectors.pop(name)
                    m.detectors[f"{name}<{block.get('statistic')}>"] = block
    return members


def applicable(calibration: dict[str, dict[str, Any]], members: list[Member]) -> dict[str, dict[str, Any]]:
    """The dev calibrations that fit these members: a detector that decided by another statistic here than
    on dev (the universal patch's max_gap on dev, reference_z where a reference applies) keeps its own
    thresholds and probabilities, and the report says so."""
    out = {}
    for name, fit in calibration.items():
        here = {m.detectors[name].get("statistic") for m in members if name in m.detectors}
        if fit.get("statistic") is not None and here != {fit["statistic"]}:
            print(f"detection_bench: {name} decided by {', '.join(sorted(map(str, here)))} here and by {fit['statistic']} "
                  "on dev: its dev threshold and calibration are not applied; its own are")
            continue
        out[name] = fit
    return out


def write_report(members: list[Member], out_dir: Path, calibration: dict[str, dict[str, Any]] | None = None,
                 command: str = "") -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ab = {k: tuple(v["calibration"]) for k, v in (calibration or {}).items()}
    cuts = {k: v["threshold"] for k, v in (calibration or {}).items() if v.get("threshold") is not None}
    rows = score_table(members, ab, cuts)
    not_installed = [m for m in members if m.backdoored and not m.installed]
    from datetime import datetime

    summary = {"population": members[0].population if members else None, "command": command,
               "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "environment": environment(),
               "members": len(members), "clean": sum(not m.backdoored for m in members),
               "backdoored_installed": sum(m.installed for m in members),
               "not_installed": [{"member": m.member, "family": m.family, "backdoor_asr": m.backdoor_asr} for m in not_installed],
               "calibration_from_dev": calibration, "rows": rows,
               "members_detail": [{"member": m.member, "backdoored": m.backdoored, "family": m.family, "target": m.target,
                                   "backdoor_asr": m.backdoor_asr, "clean_acc": m.clean_acc,
                                   **{f"{n}.{k}": b.get(k) for n, b in m.detectors.items()
                                      for k in ("verdict", "score", "predicted_target")}} for m in members]}
    (out_dir / "detection_bench.json").write_text(json.dumps(summary, indent=2, default=str))
    if rows:
        with (out_dir / "detection_bench.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
    (out_dir / "detection_bench.md").write_text(markdown(summary))
    _roc_figure(members, out_dir / "roc.png")
    return summary


def environment() -> dict[str, Any] | None:
    try:
        from classwise.reporting.results import environment as env
    except ImportError:
        return None
    return env()


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"Population `{summary['population']}`: {summary['clean']} clean, {summary['backdoored_installed']} backdoored "
             f"with the trigger installed (backdoor ASR >= {INSTALLED}); threat model: clean data.", ""]
    if summary["command"]:
        lines += [f"Command: `{summary['command']}`", ""]
    if summary.get("calibration_from_dev"):
        lines += ["Thresholds and calibrations fitted on the dev population (threshold: the highest score of a dev "
                  "clean model), applied here unchanged.", ""]
    lines += ["| detector | group | clean | backdoored | ROC-AUC [95% CI] | TPR @ 5% FPR | threshold | TPR / FPR there | "
              "target named | cross-entropy | s / model |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['detector']} | {r['group']} | {r['clean']} | {r['backdoored']} | {_fmt(r['roc_auc'])} "
                     f"[{_fmt(r['auc_low'])}, {_fmt(r['auc_high'])}] | {_fmt(r['tpr_at_5fpr'], 2)} | "
                     f"{_fmt(r['threshold'], 2)} | "
                     f"{_fmt(r['tpr'], 2)} / {_fmt(r['fpr'], 2)} | {_fmt(r['target_named'], 2)} | "
                     f"{_fmt(r.get('cross_entropy'))} | {_fmt(r['seconds_per_model'], 1)} |")
    if summary["not_installed"]:
        lines += ["", "Not installed (listed, not scored): " + ", ".join(
            f"member {m['member']} ({m['family']}, backdoor ASR {_fmt(m['backdoor_asr'], 2)})" for m in summary["not_installed"])]
    return "\n".join(lines) + "\n"


def _roc_figure(members: list[Member], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = [m for m in members if not m.backdoored]
    groups = [("pooled", [m for m in members if m.installed]),
              ("patch triggers", [m for m in members if m.installed and m.family in PATCH_FAMILIES])]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, (title, bd) in zip(axes, groups, strict=True):
        for name in detector_names(members):
            neg = sorted((_score(m.detectors[name]) for m in clean if name in m.detectors), reverse=True)
            pos = [_score(m.detectors[name]) for m in bd if name in m.detectors]
            if not neg or not pos:
                continue
            cuts = sorted(set(neg + pos), reverse=True)
            fpr = [0.0] + [sum(q >= c for q in neg) / len(neg) for c in cuts] + [1.0]
            tpr = [0.0] + [sum(p >= c for p in pos) / len(pos) for c in cuts] + [1.0]
            ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{name} (AUC {roc_auc(pos, neg):.2f})")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set(title=f"{title}: {len(bd)} backdoored vs {len(clean)} clean", xlabel="false positive rate",
               ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def log_to_wandb(summary: dict[str, Any], out_dir: Path, mode: str) -> None:
    """One W&B run (job type `detection_bench`): the rows as a Table, the ROC plot, the pooled AUCs as summary."""
    import wandb

    from classwise.reporting.wandb_log import wandb_mode

    rows = summary["rows"]
    run = wandb.init(project="classwise", job_type="detection_bench", dir=str(out_dir), mode=wandb_mode(mode),
                     name=f"detection_bench-{summary['population']}", config={"population": summary["population"]})
    columns = list(dict.fromkeys(k for r in rows for k in r))
    run.log({"detection_bench": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows]),
             "roc": wandb.Image(str(out_dir / "roc.png"))})
    run.summary.update({f"{r['detector']}/{r['group']}/roc_auc": r["roc_auc"] for r in rows})
    run.finish()


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", type=Path, help="the bench folder (outputs/detect_bench)")
    parser.add_argument("--population", default="test", help="the population to score (default: test)")
    parser.add_argument("--calibrate-from", default=None, help="fit each detector's probability on this population (dev)")
    parser.add_argument("--wandb", default=None, choices=("offline", "online", "disabled"),
                        help="also log the table and the ROC plot as one W&B run (offline: `wandb sync` later)")
    parser.add_argument("--only-with", default=None, metavar="DETECTOR",
                        help="score only the members this detector ran on (e.g. neural_cleanse: every detector on its subset)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the report folder (default: BENCH_DIR/report/POPULATION)")
    parser.add_argument("--variants", action="store_true",
                        help="also score every statistic of the universal patch detector (to choose one on dev)")
    args = parser.parse_args(argv)
    members = collect(args.bench_dir, args.population, args.variants)
    if args.only_with:
        members = [m for m in members if args.only_with in m.detectors]
    if not members:
        raise SystemExit(f"detection_bench: no member results under {args.bench_dir / args.population}; "
                         "run `make detect-bench` first")
    calibration, reference = None, None
    if args.calibrate_from:
        dev = collect(args.bench_dir, args.calibrate_from, args.variants)
        reference = reference_of(dev)
        add_reference_z(dev, None, leave_one_out=True)
        calibration = applicable(calibrate(dev), members)
    if args.variants or reference is not None:
        add_reference_z(members, reference, leave_one_out=reference is None)
    out_dir = args.out if args.out is not None else args.bench_dir / "report" / args.population
    command = "python -m classwise.reporting.detection_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.population == "dev" and not args.only_with:
        ref = reference_file(args.bench_dir, members, command)
        if ref is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    summary = write_report(separate_statistics(members), out_dir, calibration, command)
    print(markdown(summary))
    if args.wandb:
        log_to_wandb(summary, out_dir, args.wandb)
    if calibration:
        print("calibration fitted on", args.calibrate_from, json.dumps(calibration))


if __name__ == "__main__":
    main()
