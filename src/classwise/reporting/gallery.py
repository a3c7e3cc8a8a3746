"""A static HTML gallery of every run's class-wise patterns: `gallery/index.html` and `gallery/img/`.

No server and nothing fetched from the network: inline CSS and JS, images copied next to the page,
relative links only, so it opens from file:// (and can be zipped and sent).
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from classwise.reporting.aggregate import config_groups
from classwise.reporting.formats import cell_pretty
from classwise.reporting.plots import grid_source
from classwise.reporting.runs import Run, baselines_of, by_ratio, natural_key

FILTERS = ("dataset", "model", "setting")
CLASS_PNG = re.compile(r"class_\d+\.png")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2rem; color: #222; background: #fafafa; }
h1 { margin: 0 0 .3rem 0; }
#filters { position: sticky; top: 0; background: #fafafa; padding: .6rem 0; border-bottom: 1px solid #ddd; z-index: 1; }
#filters label { margin-right: 1rem; }
#count { color: #555; }
section.run { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 1rem 0; padding: .6rem 1rem; }
section.run h2 { font-size: 1.1rem; margin: .2rem 0; font-family: ui-monospace, monospace; }
.meta, .det { color: #444; font-size: .9rem; margin: .2rem 0; }
.tag { display: inline-block; background: #eef; border-radius: 3px; padding: 0 .35rem; margin-right: .3rem; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; margin-top: .5rem; }
figure.card { margin: 0; width: 360px; border: 1px solid #e2e2e2; border-radius: 4px; padding: .3rem; background: #fff; }
figure.card.target { border: 2px solid #c33; }
figure.card.flagged { background: #fff4f4; }
figure.card img, details img { max-width: 100%; height: auto; image-rendering: pixelated; display: block; }
figcaption { font-size: .85rem; }
figcaption table { border-collapse: collapse; margin-top: .2rem; }
figcaption td, figcaption th { padding: 0 .45rem 0 0; text-align: right; font-variant-numeric: tabular-nums; }
figcaption th:first-child, figcaption td:first-child { text-align: left; }
.badge { color: #fff; background: #c33; border-radius: 3px; padding: 0 .3rem; font-size: .75rem; margin-left: .3rem; }
.missing { color: #999; font-style: italic; padding: 1rem 0; }
details { margin-top: .5rem; }
"""

SCRIPT = """
(function () {
  var selects = document.querySelectorAll('#filters select');
  var runs = document.querySelectorAll('section.run');
  function apply() {
    var shown = 0;
    runs.forEach(function (run) {
      var ok = true;
      selects.forEach(function (s) {
        if (s.value !== '' && run.getAttribute('data-' + s.name) !== s.value) { ok = false; }
      });
      run.style.display = ok ? '' : 'none';
      if (ok) { shown += 1; }
    });
    document.getElementById('count').textContent = shown + ' of ' + runs.length + ' runs shown';
    document.getElementById('none').style.display = shown ? 'none' : '';
  }
  selects.forEach(function (s) { s.addEventListener('change', apply); });
  document.getElementById('reset').addEventListener('click', function () {
    selects.forEach(function (s) { s.value = ''; });
    apply();
  });
  apply();
})();
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _url(*parts: str) -> str:
    return "/".join(quote(p) for p in parts)


def _copy(src: Path, img_dir: Path, slug: str, name: str) -> str:
    dst = img_dir / slug / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return _url("img", slug, name)


def _fmt(value: object) -> str:
    return cell_pretty(value) if not isinstance(value, int | float) or isinstance(value, bool) else f"{value:.3f}"


def _class_card(run: Run, cls: dict, img_dir: Path, target: object, flagged: list) -> str:
    idx = cls.get("class_index")
    name = cls.get("class_name", "")
    classes = ["card"]
    badges = ""
    if target is not None and idx == target:
        classes.append("target")
        badges += '<span class="badge">backdoor target</span>'
    if idx in flagged:
        classes.append("flagged")
        badges += '<span class="badge">flagged</span>'
    src = run.dir / "patterns" / f"class_{idx:03d}.png" if isinstance(idx, int) else None
    if src is not None and src.is_file():
        url = _copy(src, img_dir, run.slug, src.name)
        img = f'<img src="{_e(url)}" alt="{_e(f"class {idx} {name}: canvas, mask, pattern, pasted example")}">'
    else:
        img = '<div class="missing">no image</div>'
    entries = by_ratio(cls)
    names = sorted({b for e in entries.values() for b in baselines_of(e)}, key=lambda n: (n != "random", n))
    head = "<tr><th>ratio</th><th>ASR</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "<th>base</th></tr>"
    body = "".join(
        f"<tr><td>{_e(r)}</td><td><b>{_e(_fmt(e.get('asr')))}</b></td>"
        + "".join(f"<td>{_e(_fmt(baselines_of(e).get(n)))}</td>" for n in names)
        + f"<td>{_e(_fmt(e.get('base_rate')))}</td></tr>"
        for r, e in entries.items()
    )
    table = f"<table>{head}{body}</table>" if entries else ""
    l1 = cls.get("mask_l1")
    l1_text = f" · mask L1 {l1:.1f}" if isinstance(l1, int | float) and not isinstance(l1, bool) else ""
    return (f'<figure class="{" ".join(classes)}">{img}<figcaption><b>{_e(idx)} · {_e(name)}</b>{badges}'
            f'<span class="meta">{_e(l1_text)}</span>{table}</figcaption></figure>')


def _run_section(run: Run, img_dir: Path) -> str:
    m = run.metrics
    tags = "".join(f'<span class="tag">{f}: {_e(getattr(run, f) or "?")}</span>' for f in FILTERS)
    meta = []
    for key in ("clean_acc", "robust_acc", "backdoor_asr"):
        if isinstance(m.get(key), int | float):
            meta.append(f"{key} {m[key]:.4f}")
    search = run.data.get("search") if isinstance(run.data.get("search"), dict) else {}
    for key in ("preset", "canvas", "seconds"):
        if search.get(key) is not None:
            meta.append(f"search.{key} {search[key]}")
    blocks = run.detectors
    det = blocks.get("patterns") or {}
    backdoor = m.get("backdoor") if isinstance(m.get("backdoor"), dict) else {}
    target = det.get("true_target")
    if target is None:
        target = backdoor.get("target_class")
    flagged = det.get("flagged") if isinstance(det.get("flagged"), list) else []
    det_html = ""
    if blocks:
        parts = [f"{name} ({b['threat_model']}): {b['verdict']}, target {cell_pretty(b.get('predicted_target')) or 'none'}"
                 for name, b in blocks.items() if "verdict" in b]
        if det:
            parts.append(f"patterns: predicted target {cell_pretty(det.get('predicted_target')) or 'none'}, "
                         f"flagged {cell_pretty(flagged)}")
        parts.append(f"true target {cell_pretty(target) or '?'}")
        if backdoor.get("trigger"):
            parts.insert(0, f"trigger {backdoor['trigger']}")
        nc = blocks.get("neural_cleanse")
        if isinstance(nc, dict) and "verdict" not in nc:
            parts.append(f"Neural Cleanse: predicted {cell_pretty(nc.get('predicted_target')) or 'none'}, "
                         f"flagged {cell_pretty(nc.get('flagged'))}, {cell_pretty(nc.get('seconds')) or '?'} s")
        det_html = f'<p class="det">{_e(" · ".join(parts))}</p>'
    if run.has_classes:
        cards = "".join(_class_card(run, c, img_dir, target, flagged) for c in run.classes)
        cards = f'<div class="cards">{cards}</div>'
    else:
        cards = '<p class="missing">no class-wise patterns in this run\'s results.json</p>'
    figures = []
    grid = grid_source(run)
    extra = [grid] if grid is not None else []
    patterns = run.dir / "patterns"
    if patterns.is_dir():
        extra += sorted(p for p in patterns.glob("*.png")
                        if not CLASS_PNG.fullmatch(p.name) and (grid is None or p.resolve() != grid.resolve()))
    for src in extra:
        url = _copy(src, img_dir, run.slug, src.name)
        figures.append(f'<p>{_e(src.name)}</p><img src="{_e(url)}" alt="{_e(src.name)}">')
    figs = f"<details><summary>figures ({len(figures)})</summary>{''.join(figures)}</details>" if figures else ""
    attrs = " ".join(f'data-{f}="{_e(getattr(run, f))}"' for f in FILTERS)
    return (f'<section class="run" id="{_e(run.slug)}" {attrs}><h2>{_e(run.run_id)}</h2>'
            f'<p class="meta">{tags} {_e(" · ".join(meta))}</p>{det_html}{cards}{figs}</section>')


def write_gallery(runs: Sequence[Run], out: str | Path, root: str | Path | None = None) -> Path:
    """`<out>/gallery/index.html` with every run, filterable by dataset / model / setting."""
    gallery = Path(out) / "gallery"
    img_dir = gallery / "img"
    if img_dir.exists():
        shutil.rmtree(img_dir)
    img_dir.mkdir(parents=True)
    selects = []
    for f in FILTERS:
        values = sorted({getattr(r, f) for r in runs}, key=natural_key)
        options = '<option value="">all</option>' + "".join(
            f'<option value="{_e(v)}">{_e(v) if v else "(none)"}</option>' for v in values)
        selects.append(f'<label>{f} <select name="{f}">{options}</select></label>')
    # A configuration's seeds side by side, under one heading (aggregate.config_of: the folder minus its seed).
    sections = "".join(
        (f'<h2 class="config">{_e(config)} <span class="meta">({len(group)} runs)</span></h2>' if len(group) > 1 else "")
        + "".join(_run_section(r, img_dir) for r in group)
        for config, group in config_groups(runs).items())
    where = f" under <code>{_e(root)}</code>" if root is not None else ""
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>class-wise patterns: {len(runs)} runs</title>
<style>{STYLE}</style>
</head>
<body>
<h1>Class-wise patterns</h1>
<p class="meta">{len(runs)} runs{where}; generated {_e(datetime.now().isoformat(timespec="seconds"))} by classwise-report.
Each image: canvas, mask, pattern (its top-k pixels on gray), a pasted example. ASR: share of other classes'
eval images predicted as the class after the paste; random: k random pixels of the same canvas; base: no paste.</p>
<div id="filters">{"".join(selects)}<button id="reset" type="button">show all</button> <span id="count"></span></div>
<p id="none" class="missing" style="display:none">no run matches the filters</p>
{sections}
<script>{SCRIPT}</script>
</body>
</html>
"""
    index = gallery / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
