"""The compact tables of the paper-claims sweep (on docs/results/paper-claims.md), from its report's seed tables.

    python experiments/paper_claims_readme.py outputs/sweeps/paper_claims/report

Reads `summary_seeds.csv` and `detection_seeds.csv` (written by `classwise-report`) and prints three
Markdown tables: accuracy and pattern ASR per ratio, the baselines at 5%, and detection. Every cell is
the mean over seeds ± the half-width of its 95% t-interval, as in the report.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def cell(row: dict[str, str], col: str, digits: int = 3) -> str:
    value = row.get(col, "")
    if value in ("", None):
        return ""
    try:
        mean = float(value)
    except ValueError:
        return value
    half = row.get(f"{col}_ci95", "")
    text = f"{mean:.{digits}f}"
    return text if half in ("", None) else f"{text} ± {float(half):.{digits}f}"


def table(rows: list[dict[str, str]], columns: list[tuple[str, str]], digits: int = 3) -> str:
    head = "| " + " | ".join(title for title, _ in columns) + " |"
    rule = "|" + "---|" * len(columns)
    body = ["| " + " | ".join(r.get(col, "") if col in ("config", "n", "trigger", "true_target", "predicted_target",
                                                             "nc_predicted_target")
                              else cell(r, col, digits) for _, col in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def main(report: str) -> None:
    folder = Path(report)
    summary = [r for r in read(folder / "summary_seeds.csv") if r["config"].startswith("claim=")]
    print(table(summary, [("configuration", "config"), ("seeds", "n"), ("clean acc", "clean_acc"),
                          ("PGD-20 acc", "robust_acc"), ("backdoor ASR", "backdoor_asr"),
                          ("ASR 1%", "mean_asr@0.01"), ("ASR 2%", "mean_asr@0.02"), ("ASR 5%", "mean_asr@0.05"),
                          ("ASR 10%", "mean_asr@0.1"), ("components 5%", "mean_components@0.05")]))
    print()
    print(table(summary, [("configuration", "config"), ("pattern", "mean_asr@0.05"), ("random", "mean_random@0.05"),
                          ("Grad-CAM", "mean_gradcam@0.05"), ("saliency", "mean_saliency@0.05"),
                          ("UAP top-k", "mean_uap_topk@0.05"), ("universal patch", "mean_universal_patch@0.05"),
                          ("UAP dense (every pixel)", "mean_uap_dense@0.05"), ("base rate", "mean_base_rate@0.05")]))
    print()
    detection = read(folder / "detection_seeds.csv")
    print(table(detection, [("configuration", "config"), ("seeds", "n"), ("target", "true_target"),
                            ("ours: named", "predicted_target"), ("ours: target index", "target_anomaly_index"),
                            ("ours: max index", "max_anomaly_index"), ("NC: named", "nc_predicted_target"),
                            ("NC: target index", "nc_target_anomaly_index"), ("NC: max index", "nc_max_anomaly_index"),
                            ("NC s", "nc_seconds")], digits=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/sweeps/paper_claims/report")
