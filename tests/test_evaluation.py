"""Held-out evaluation: Wilson intervals, and sequential evaluation that stops once an interval is narrow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from classwise.intervals import half_width, mean_interval, rate_fields, wilson_interval
from classwise.patterns.evaluate import EvalOptions, attack_successes
from classwise.patterns.search import ImageSet

SIDE = 4


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # the textbook 0/10 case
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)
    assert half_width(3600, 7200) == pytest.approx(0.0115, abs=1e-4)
    fields = rate_fields(3, 40, "asr")
    assert fields["asr"] == 0.075 and fields["asr_n"] == 40 and fields["asr_ci"][0] < 0.075 < fields["asr_ci"][1]


@pytest.mark.parametrize("hits,n,z,expected", [
    # The closed form (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), as this module computed it
    # before it called scipy; z = 2.638...: sequential_z(4000), six looks.
    (0, 10, None, (0.0, 0.2775327998628892)),
    (3, 40, None, (0.025836025774588198, 0.19864233524310543)),
    (50, 100, None, (0.4038315303659956, 0.5961684696340044)),
    (127, 128, None, (0.9570737405611394, 0.9986195681071257)),
    (1, 7200, None, (2.451772003292396e-05, 0.000786363370852494)),
    (17, 256, 2.638257273476751, (0.03577942199761731, 0.11998700221144731)),
    (4000, 4000, 2.638257273476751, (0.9982629223292173, 1.0)),
    (0, 1, 2.638257273476751, (0.0, 0.8743781946921859)),
])
def test_wilson_interval_equals_the_closed_form(hits, n, z, expected):
    got = wilson_interval(hits, n) if z is None else wilson_interval(hits, n, z)
    assert got == pytest.approx(expected, abs=1e-12, rel=0)


def test_mean_interval_covers_the_mean_and_narrows_with_images():
    narrow = mean_interval([0.2, 0.6, 0.0], [7200, 7200, 7200])
    wide = mean_interval([0.2, 0.6, 0.0], [300, 300, 300])
    assert narrow[0] < 0.8 / 3 < narrow[1] and wide[0] < narrow[0] and wide[1] > narrow[1]
    assert mean_interval([0.5], [None]) is None


class Threshold(nn.Module):
    """Predicts class 1 when pixel (0, 0) exceeds pixel (0, 1), else class 0.

    Pasting value v at pixel (0, 0) onto images whose pixel (0, 1) is uniform makes the true ASR v.
    """

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        hit = (x[:, 0, 0, 0] > x[:, 0, 0, 1]).float()
        return torch.stack([1 - hit, hit], 1) + 0 * self.p


def _patterns(values):
    canvases = torch.zeros(len(values), 1, SIDE, SIDE)
    canvases[:, 0, 0, 0] = torch.tensor(values)
    pixels = torch.zeros(len(values), 1, SIDE, SIDE, dtype=torch.bool)
    pixels[:, 0, 0, 0] = True
    return canvases, pixels, torch.ones(len(values), dtype=torch.long)


def test_sequential_evaluation_stops_early_and_agrees_with_the_whole_set():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6000, 1, SIDE, SIDE, generator=g)
    labels = torch.zeros(6000, dtype=torch.long)
    labels[:600] = 1  # target-class images never count
    values = [0.0, 0.05, 0.5, 0.9]
    canvases, pixels, targets = _patterns(values)
    model = Threshold()
    whole = attack_successes(model, canvases, pixels, targets, ImageSet(images, labels))
    assert whole.n.tolist() == [5400] * 4
    seq = attack_successes(model, canvases, pixels, targets, ImageSet(images, labels), EvalOptions(half_width=0.03, order_seed=7))
    assert (seq.n < 5400).all() and (seq.half_width() <= 0.03).all()
    assert seq.n[0] <= seq.n[1] < seq.n[2] and seq.n[3] < seq.n[2]  # rates far from 0.5 decide sooner
    for k in range(4):
        lo, hi = wilson_interval(int(seq.hits[k]), int(seq.n[k]))
        assert lo <= float(whole.rate[k]) <= hi
    # A pattern's result does not depend on which others share the call.
    alone = attack_successes(model, canvases[2:3], pixels[2:3], targets[2:3], ImageSet(images, labels),
                             EvalOptions(half_width=0.03, order_seed=7))
    assert alone.hits.item() == seq.hits[2].item() and alone.n.item() == seq.n[2].item()
    # A target no interval can reach runs to the whole set, which is the cap.
    capped = attack_successes(model, canvases, pixels, targets, ImageSet(images, labels), EvalOptions(half_width=1e-4, order_seed=7))
    assert capped.hits.tolist() == whole.hits.tolist() and capped.n.tolist() == whole.n.tolist()


class Counting(Threshold):
    """Threshold that records how many images it was shown."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return super().forward(x)


@pytest.mark.parametrize("max_forward", [8, 16, 64])  # one pattern a pass, and several (GPU-style groups)
def test_target_class_images_are_not_forwarded_and_counts_match_a_per_image_loop(max_forward):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(40, 1, SIDE, SIDE, generator=g)
    labels = torch.tensor([1] * 8 + [0, 1, 2] * 10 + [2, 0])  # the first pass of 8 is all class 1
    canvases, pixels, _ = _patterns([0.3, 0.6, 0.9])
    targets = torch.tensor([1, 0, 1])
    model = Counting()
    got = attack_successes(model, canvases, pixels, targets, ImageSet(images, labels), EvalOptions(max_forward=max_forward))
    for p in range(3):
        pasted = torch.where(pixels[p], canvases[p], images)
        pred = Threshold()(pasted).argmax(1)
        others = labels != targets[p]
        assert got.n[p] == others.sum() and got.hits[p] == ((pred == targets[p]) & others).sum()
    if max_forward == 8:  # one pattern a pass: each pattern's own class is never forwarded
        assert model.seen == sum(int((labels != t).sum()) for t in targets)


def test_base_rates_stop_like_the_patterns_and_agree_with_the_whole_split():
    from classwise.patterns.evaluate import base_rates, held_out_base_rates, predict

    g = torch.Generator().manual_seed(3)
    images = torch.rand(6000, 1, SIDE, SIDE, generator=g)
    images[:3000, 0, 0, 0] = 0.0  # half the images cannot be class 1: base rate of 1 about 0.25
    labels = torch.arange(6000) % 3
    targets = torch.tensor([0, 1, 2])
    model = Threshold()
    whole = base_rates(predict(model, images), labels, targets)
    assert torch.equal(held_out_base_rates(model, ImageSet(images, labels), targets).hits, whole.hits)
    seq = held_out_base_rates(model, ImageSet(images, labels), targets, EvalOptions(max_forward=256, half_width=0.03, order_seed=7))
    assert (seq.n < whole.n).all() and (seq.half_width() <= 0.03).all()
    for k in range(3):
        lo, hi = wilson_interval(int(seq.hits[k]), int(seq.n[k]))
        assert lo <= float(whole.rate[k]) <= hi
    assert seq.rate[2] == 0  # the model never answers 2: zero hits, whatever the order


def test_sequential_stopping_points_do_not_depend_on_the_pass_size():
    """The looks are fixed in images: a CPU pass of 7 images and a GPU pass of 5,000 stop at the same n."""
    from classwise.patterns.evaluate import held_out_base_rates

    g = torch.Generator().manual_seed(2)
    images = torch.rand(3000, 1, SIDE, SIDE, generator=g)
    labels = torch.arange(3000) % 3
    canvases, pixels, _ = _patterns([0.02, 0.3, 0.6, 0.97])
    targets = torch.tensor([1, 0, 1, 2])
    runs = [attack_successes(Threshold(), canvases, pixels, targets, ImageSet(images, labels),
                             EvalOptions(max_forward=size, half_width=0.05, order_seed=7)) for size in (7, 100, 256, 5000)]
    for r in runs[1:]:
        assert r.n.tolist() == runs[0].n.tolist() and r.hits.tolist() == runs[0].hits.tolist()
    assert (runs[0].n < 2000).all()  # it did stop early
    bases = [held_out_base_rates(Threshold(), ImageSet(images, labels), targets,
                                 EvalOptions(max_forward=size, half_width=0.05, order_seed=7))
             for size in (7, 300, 5000)]
    assert all(b.n.tolist() == bases[0].n.tolist() and b.hits.tolist() == bases[0].hits.tolist() for b in bases)


def test_intervals_after_the_stopping_rule_cover_the_true_rate():
    """Simulated coverage of the reported interval where the rule stopped, at rates where stopping is
    most biased (near 0, 0.03, 0.5, 0.97, 1): at least 0.94 at each."""
    from classwise.intervals import look_schedule, sequential_z

    n_images, target, reps = 4000, 0.05, 1500
    looks, z = look_schedule(n_images), sequential_z(n_images)
    g = torch.Generator().manual_seed(0)
    for p in (0.005, 0.03, 0.1, 0.5, 0.97):
        hits_at = (torch.rand(reps, n_images, generator=g) < p).cumsum(1)[:, [n - 1 for n in looks]]  # [reps, looks]
        covered = 0
        for row in hits_at.tolist():
            for hits, n in zip(row, looks, strict=True):
                if half_width(hits, n, z) <= target or n == n_images:
                    lo, hi = wilson_interval(hits, n, z)
                    covered += lo <= p <= hi
                    break
        assert covered / reps >= 0.94, (p, covered / reps)


def test_a_bar_that_stops_early_says_why(monkeypatch, capsys):
    monkeypatch.setenv("CLASSWISE_PROGRESS", "log")
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(3000, 1, SIDE, SIDE, generator=g), torch.zeros(3000, dtype=torch.long)
    canvases, pixels, targets = _patterns([0.0, 1.0])
    rates = attack_successes(Threshold(), canvases, pixels, targets, ImageSet(images, labels),
                             EvalOptions(half_width=0.1, order_seed=1, progress=True, description="evaluating patterns"))
    assert rates.n.tolist() == [128, 128]
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "evaluating patterns" in last and "stopped: interval ±0.1 reached after 128 images" in last
