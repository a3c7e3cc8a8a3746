"""Print the single-seed Fashion-MNIST tables from the run folders of experiments/fashion_mnist_tables.sh."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from classwise.reporting.results import detector_blocks


def load(root: Path, name: str) -> dict | None:
    path = root / name / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def by_ratio(run: dict, ratio: float, key: str = "asr", baseline: str | None = None) -> float:
    out = []
    for c in run["classes"]:
        b = next(b for b in c["by_ratio"] if abs(b["pattern_ratio"] - ratio) < 1e-9)
        out.append(b["baselines"].get(baseline, float("nan")) if baseline else b[key])
    return mean(out)


def adversarial_table(root: Path) -> None:
    print("| model | clean acc | PGD-20 acc (Linf 0.1) | mean ASR at 5% | random 5% | mean mask L1 |")
    print("|---|---|---|---|---|---|")
    for name in ("natural", "adversarial"):
        r = load(root, name)
        if r is None:
            continue
        m = r["metrics"]
        print(f"| {name} | {m['clean_acc']:.3f} | {m.get('robust_acc', float('nan')):.3f} | {by_ratio(r, 0.05):.3f} | "
              f"{by_ratio(r, 0.05, baseline='random'):.3f} | {mean(c['mask_l1'] for c in r['classes']):.1f} |")
    print()
    print("| class | " + " | ".join(c["class_name"] for c in load(root, "natural")["classes"]) + " |")
    print("|---|" + "---|" * 10)
    for name in ("natural", "adversarial"):
        r = load(root, name)
        if r is not None:
            print(f"| {name} ASR@5% | " + " | ".join(f"{c['by_ratio'][0]['asr']:.2f}" for c in r["classes"]) + " |")


def baseline_table(root: Path) -> None:
    r = load(root, "natural")
    print("| at 5% (39 pixels) | pattern | random | Grad-CAM | saliency | UAP top-k | UAP dense (all pixels) |")
    print("|---|---|---|---|---|---|---|")
    cells = [by_ratio(r, 0.05)] + [by_ratio(r, 0.05, baseline=b) for b in ("random", "gradcam", "saliency", "uap_topk", "uap_dense")]
    print("| mean ASR over classes | " + " | ".join(f"{v:.3f}" for v in cells) + " |")


def target_vs_others(block: dict, target: int) -> str:
    i = block["classes"].index(target)
    other = max(a for j, a in enumerate(block["anomaly_index"]) if j != i)
    return f"{block['anomaly_index'][i]:.2f} / {other:.2f}"


def backdoor_table(root: Path) -> None:
    print("| trigger | clean acc | backdoor ASR | target ASR at 1% | others' max ASR at 1% | target pixels on trigger (1%) "
          "| ours: index of target / max other | ours flags | ours right | NC: index of target / max other | NC flags "
          "| NC right | ours s | NC s |")
    print("|---|" + "---|" * 13)
    for trig in ("badnets", "blend", "trojan", "sig"):
        r = load(root, f"backdoor_{trig}")
        if r is None:
            continue
        m = r["metrics"]
        d, nc = detector_blocks(r)["patterns"], detector_blocks(r)["neural_cleanse"]
        t = m["backdoor"]["target_class"]
        asr1 = {c["class_index"]: c["by_ratio"][0]["asr"] for c in r["classes"]}
        others = max(v for k, v in asr1.items() if k != t)

        on = d.get("target_pixels_on_trigger", {}).get("0.01")
        print(f"| {trig} | {m['clean_acc']:.3f} | {m['backdoor_asr']:.3f} | {asr1[t]:.3f} | {others:.3f} | "
              f"{'' if on is None else f'{on:.2f}'} | {target_vs_others(d, t)} | {d['flagged']} | {'yes' if d['predicted_target'] == t else 'no'} | "
              f"{target_vs_others(nc, t)} | {nc['flagged']} | {'yes' if nc['predicted_target'] == t else 'no'} | "
              f"{r['search']['seconds']:.0f} | {nc['seconds']:.0f} |")
    nat = load(root, "natural")
    if nat and "patterns" in detector_blocks(nat):
        d, nc = detector_blocks(nat)["patterns"], detector_blocks(nat)["neural_cleanse"]
        print(f"| (clean model) | {nat['metrics']['clean_acc']:.3f} | | | | | max {max(d['anomaly_index']):.2f} "
              f"(class {d['classes'][d['anomaly_index'].index(max(d['anomaly_index']))]}) | {d['flagged']} | | "
              f"max {max(nc['anomaly_index']):.2f} | {nc['flagged']} | | {nat['search']['seconds']:.0f} | {nc['seconds']:.0f} |")


def transfer_table(root: Path) -> None:
    print("| patterns of | applied to | mean ASR at 5% there | mean ASR at 5% on their own model |")
    print("|---|---|---|---|")
    for name, src, dst in (("transfer_small_cnn_to_resnet18", "small_cnn", "resnet18"),
                           ("transfer_resnet18_to_small_cnn", "resnet18", "small_cnn")):
        r = load(root, name)
        if r is None:
            continue
        t = r["transfer"]
        own = mean(c["by_ratio"][0]["source_asr"] for c in t["classes"])
        print(f"| {src} | {dst} | {t['mean_asr'][str(t['pattern_ratios'][0])]:.3f} | {own:.3f} |")
    for name in ("natural", "resnet18"):
        r = load(root, name)
        if r is not None:
            print(f"\n{name}: clean acc {r['metrics']['clean_acc']:.3f}")


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/tables")
    for title, fn in (("adversarial", adversarial_table), ("baselines", baseline_table), ("backdoor", backdoor_table),
                      ("transfer", transfer_table)):
        print(f"\n### {title}\n")
        try:
            fn(root)
        except (TypeError, KeyError, StopIteration, ValueError) as exc:
            print(f"(not available yet: {exc!r})")
