"""W&B logging: online only when the configured server answers, a browsable `patterns` table, summary scalars."""

from __future__ import annotations

import logging
import os
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.wandb.ai"
CHECK_TIMEOUT = 3.0


def wandb_base_url() -> str:
    """The W&B server a run would talk to: WANDB_BASE_URL, else the user's wandb settings, else W&B's cloud."""
    url = os.environ.get("WANDB_BASE_URL")
    if not url:
        try:
            # The settings wandb.init would use (`wandb login --host` writes base_url into the settings
            # file); the singleton reads files and environment without starting wandb's service.
            from wandb.sdk.wandb_setup import singleton

            url = singleton().settings.base_url
        except Exception:  # noqa: BLE001 - an unreadable settings file: wandb's default server
            url = DEFAULT_BASE_URL
    return url.rstrip("/")


def server_answers(base_url: str, timeout: float = CHECK_TIMEOUT) -> bool:
    """True when the server gives an HTTP answer below 500 to GET <base_url>/healthz within `timeout` seconds.

    An HTTP request, not a TCP connect: a server (or proxy) that accepts connections but never
    answers would pass a connect and then hang wandb.init; a proxy's 502/503 says the server is down;
    and urllib takes the same HTTP(S)_PROXY variables as wandb. Any status below 500 (also 401 or 404)
    proves a live server. The request runs in a daemon thread so that name lookup, which socket
    timeouts do not cover, cannot hold the run either.
    """
    answers: list[bool] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=timeout) as response:
                answers.append(response.status < 500)
        except urllib.error.HTTPError as err:
            answers.append(err.code < 500)
        except urllib.error.URLError as err:
            # A TLS handshake that fails on the certificate still came from a live server; whether to
            # trust it is wandb's business (it may have REQUESTS_CA_BUNDLE where urllib has not).
            answers.append(isinstance(err.reason, ssl.SSLError))
        except (OSError, ValueError):  # refused, timed out, reset, or not a URL
            answers.append(False)

    thread = threading.Thread(target=ask, name="wandb-server-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answers[:1]) and answers[0]


def wandb_mode(requested: str | None, timeout: float = CHECK_TIMEOUT) -> str:
    """`online` only when the configured W&B server answers within `timeout` s; else `offline` with a warning."""
    if requested == "online":
        url = wandb_base_url()
        if not server_answers(url, timeout):
            log.warning("W&B server %s did not answer within %gs: logging offline instead; upload later with "
                        "`wandb sync <run folder>/wandb/offline-run-*`", url, timeout)
            return "offline"
    return requested or "offline"


def is_wandb(logger: Any) -> bool:
    return type(logger).__name__ == "WandbLogger"


def _image(tensor, caption: str | None = None):
    import wandb

    arr = tensor.detach().cpu().float().clamp(0, 1)
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    return wandb.Image((arr * 255).astype("uint8"), caption=caption)


def _bounds(ci: list[float] | None) -> tuple[float | None, float | None]:
    return (ci[0], ci[1]) if ci else (None, None)


def log_patterns(logger: Any, run_dir: str | Path, results: dict[str, Any]) -> None:
    """One `patterns` table row per (class, ratio) with images and numbers, plus search summary scalars."""
    if not is_wandb(logger) or "classes" not in results:
        return
    import torch
    from safetensors.torch import load_file

    from classwise.patterns.search import mask_pixels
    from classwise.reporting.figures import pattern_on_gray

    run = logger.experiment
    tensors = load_file(str(Path(run_dir) / results["search"]["masks_file"]))
    from classwise.reporting.results import detector_blocks

    detection = detector_blocks(results).get("patterns") or {}
    det_index = dict(zip(detection.get("classes", []), detection.get("anomaly_index", []), strict=False))
    flagged = set(detection.get("flagged", []))
    baseline_names = sorted({k for c in results["classes"] for b in c["by_ratio"] for k in b["baselines"]})
    # Each rate with its 95% interval as two numeric columns (`_lo`, `_hi`), so W&B can sort and plot them.
    columns = ["class_index", "class_name", "pattern_ratio", "pixels", "canvas", "mask", "pattern", "asr", "asr_lo", "asr_hi",
               "asr_n", "base_rate", *[f"baseline_{n}{s}" for n in baseline_names for s in ("", "_lo", "_hi")],
               "mask_l1", "anomaly_index", "flagged"]
    rows, gallery = [], {"canvas": [], "mask": [], "pattern": []}
    for c in results["classes"]:
        i = c["class_index"]
        mask, canvas = tensors[f"class_{i}"], tensors[f"canvas_{i}"]
        first = c["by_ratio"][0]
        caption = f"{c['class_name']}: ASR {first['asr']:.2f} at {first['pattern_ratio']:.0%}"
        score = tensors.get(f"score_{i}")  # absent in runs saved before tie-break scores
        pix0 = mask_pixels(mask, first["pattern_ratio"], score)
        for key, img in (("canvas", canvas), ("mask", mask), ("pattern", pattern_on_gray(canvas, pix0))):
            gallery[key].append(_image(img, caption))
        for b in c["by_ratio"]:
            pix = mask_pixels(mask, b["pattern_ratio"], score)
            rows.append([
                i, c["class_name"], b["pattern_ratio"], b["pixels"], _image(canvas), _image(mask),
                _image(pattern_on_gray(canvas, pix)), b["asr"], *_bounds(b.get("asr_ci")), b.get("asr_n"), b["base_rate"],
                *[v for n in baseline_names for v in (b["baselines"].get(n), *_bounds((b.get("baselines_ci") or {}).get(n)))],
                c["mask_l1"], det_index.get(i), i in flagged,
            ])
    import wandb

    run.define_metric("search/step")
    run.define_metric("search/*", step_metric="search/step")
    run.log({"patterns": wandb.Table(columns=columns, data=rows)})
    # The same images as media panels too: W&B writes a table's images only when online
    # (wandb/wandb#4611), so an offline run would otherwise keep no picture of its patterns.
    run.log({f"patterns/{key}": images for key, images in gallery.items()})
    summary: dict[str, Any] = {"search/step": 0}
    for idx, r in enumerate(results["search"]["pattern_ratios"]):
        summary[f"search/mean_asr@{r}"] = float(torch.tensor([c["by_ratio"][idx]["asr"] for c in results["classes"]]).mean())
    if detection:
        summary["search/predicted_target"] = -1 if detection.get("predicted_target") is None else detection["predicted_target"]
        # Classes the detection gate left unscored have index None.
        summary["search/max_anomaly_index"] = max((v for v in detection.get("anomaly_index") or [] if v is not None), default=0)
    run.log(summary)
    grid = Path(run_dir) / results["search"].get("figure", "patterns/grid.png")
    if grid.exists():
        run.log({"search/grid": wandb.Image(str(grid))})


def log_summary(logger: Any, metrics: dict[str, Any]) -> None:
    if not is_wandb(logger):
        return
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            logger.experiment.summary[key] = value


def log_run(logger: Any, run_dir: str | Path, metrics: dict[str, Any]) -> None:
    """End of a train or search run: the patterns table, summary scalars, then finish the W&B run."""
    if not is_wandb(logger):
        return
    from classwise.reporting.results import read_results

    results = read_results(run_dir)
    log_patterns(logger, run_dir, results)
    verdict = results.get("detection") or {}
    summary = {f"detection/{k}": verdict[k] for k in ("verdict", "score", "probability", "predicted_target", "threat_model")
               if verdict.get(k) is not None}
    log_summary(logger, {**metrics, **summary})
    finish(logger)


def finish(logger: Any) -> None:
    """End the W&B run, so the next job of a multirun starts a fresh one."""
    if is_wandb(logger):
        import wandb

        wandb.finish()
