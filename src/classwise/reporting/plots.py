"""The report's plots: mean ASR against the pattern ratio (one line per run), and each run's pattern grid."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from classwise.reporting.aggregate import config_groups, estimate  # noqa: E402
from classwise.reporting.runs import Run, all_ratios, natural_key, run_means  # noqa: E402

SETTING_MARKERS = {"natural": "o", "adversarial": "s", "backdoor": "^"}
OTHER_MARKERS = ("D", "v", "P", "X", "*", "h")


def _marker(setting: str, seen: dict[str, str]) -> str:
    if setting in SETTING_MARKERS:
        return SETTING_MARKERS[setting]
    if setting not in seen:
        seen[setting] = OTHER_MARKERS[len(seen) % len(OTHER_MARKERS)]
    return seen[setting]


def asr_vs_ratio(runs: Sequence[Run], path: str | Path) -> Path:
    """Mean ASR over classes against the pattern ratio; the random baseline of the same run dashed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ratios = all_ratios(runs)
    with_classes = sorted((r for r in runs if r.has_classes),
                          key=lambda r: (r.setting, r.dataset, r.model, natural_key(r.run_id)))
    groups = config_groups(with_classes)
    if any(len(g) > 1 for g in groups.values()):
        return _asr_bands(groups, ratios, path)
    n = len(with_classes)
    fig, ax = plt.subplots(figsize=(10.0 if n <= 8 else 13.0, 5.5))
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    other_markers: dict[str, str] = {}
    plotted_random = False
    for i, run in enumerate(with_classes):
        means = run_means(run, ratios, ["random"])
        pts = [(float(r), means[f"asr@{r}"]) for r in ratios if means.get(f"asr@{r}") is not None]
        rnd = [(float(r), means[f"random@{r}"]) for r in ratios if means.get(f"random@{r}") is not None]
        color = cmap(i % cmap.N)
        marker = _marker(run.setting, other_markers)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=marker, color=color, linewidth=1.8, label=run.label())
        if rnd:
            ax.plot(*zip(*rnd, strict=True), marker=marker, color=color, linestyle="--", linewidth=1.2,
                    alpha=0.75, markerfacecolor="none")
            plotted_random = True
    if not with_classes:
        ax.text(0.5, 0.5, "no run holds class-wise pattern results", ha="center", va="center",
                transform=ax.transAxes)
    _ratio_axis(ax, ratios)
    _finish(ax)
    ax.set_title("Attack success rate of class-wise patterns vs pattern size")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if plotted_random:
        handles.append(Line2D([], [], color="gray", linestyle="--", label="random pixels, same k (dashed)"))
        labels.append("random pixels, same k (dashed)")
    if handles:
        ax.legend(handles, labels, fontsize=7 if n > 6 else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  title="setting · dataset/model (run)", title_fontsize=8, ncol=1 if n <= 20 else 2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ratio_axis(ax, ratios: Sequence[str]) -> None:
    numeric = [float(r) for r in ratios]
    if numeric and min(numeric) > 0 and max(numeric) / min(numeric) >= 5:
        ax.set_xscale("log")
    if numeric:
        ax.set_xticks(numeric)
        ax.set_xticklabels([f"{x:g}" for x in numeric])
        ax.minorticks_off()


def _finish(ax) -> None:
    ax.set_ylim(bottom=0)
    ax.set_xlabel("pattern ratio (share of the image's pixels pasted)")
    ax.set_ylabel("mean ASR over classes")


def _asr_bands(groups: dict[str, list[Run]], ratios: Sequence[str], path: Path) -> Path:
    """One line per configuration: mean over its seeds, a band for the 95% t-interval; random pixels dashed."""
    n = len(groups)
    fig, ax = plt.subplots(figsize=(10.0 if n <= 8 else 13.0, 5.5))
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    other_markers: dict[str, str] = {}
    for i, (config, runs) in enumerate(sorted(groups.items(), key=lambda kv: (kv[1][0].setting, natural_key(kv[0])))):
        means = [run_means(r, ratios, ["random"]) for r in runs]
        color, marker = cmap(i % cmap.N), _marker(runs[0].setting, other_markers)
        for key, style in (("asr", "-"), ("random", "--")):
            pts = [(float(r), estimate(m.get(f"{key}@{r}") for m in means)) for r in ratios]
            pts = [(x, e) for x, e in pts if e is not None]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            label = f"{config} (n={len(runs)})" if key == "asr" else None
            ax.plot(xs, [e.mean for _, e in pts], marker=marker, color=color, linestyle=style,
                    linewidth=1.8 if key == "asr" else 1.1, alpha=1.0 if key == "asr" else 0.7, label=label,
                    markerfacecolor=None if key == "asr" else "none")
            if all(e.half is not None for _, e in pts):
                ax.fill_between(xs, [e.low for _, e in pts], [e.high for _, e in pts], color=color,
                                alpha=0.18 if key == "asr" else 0.07, linewidth=0)
    _ratio_axis(ax, ratios)
    _finish(ax)
    ax.set_title("ASR of class-wise patterns vs pattern size: mean over seeds, 95% t-interval bands")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="gray", linestyle="--", label="random pixels, same k (dashed)"))
    labels.append("random pixels, same k (dashed)")
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="configuration (seeds)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def grid_source(run: Run) -> Path | None:
    """The run's pattern grid figure: search.figure, else patterns/grid.png."""
    search = run.data.get("search") if isinstance(run.data.get("search"), dict) else {}
    for rel in (search.get("figure"), "patterns/grid.png"):
        if isinstance(rel, str) and rel:
            p = Path(rel) if Path(rel).is_absolute() else run.dir / rel
            if p.is_file():
                return p
    return None


def copy_pattern_grids(runs: Sequence[Run], out: str | Path) -> list[Path]:
    """`pattern_grid_<run>.png`: a copy (not a link) of each run's grid.png, where it has one."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        src = grid_source(run)
        if src is not None:
            dst = out / f"pattern_grid_{run.slug}.png"
            shutil.copyfile(src, dst)
            written.append(dst)
    return written

