"""What the search promises beyond the planted patch: the model left as it was, RGB, canvases chosen as
named, ASR and base rate as defined, k pixels even from a mask with fewer non-zero ones."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from classwise.attacks.pgd import PGDBudget, robust_accuracy
from classwise.data.synthetic import make_synthetic
from classwise.patterns import (
    BaselinesConfig,
    CanvasConfig,
    CanvasPool,
    EvalConfig,
    SearchConfig,
    SearchData,
    SearchSettings,
    classwise_patterns,
    search_patterns,
    top_pixels,
)
from classwise.patterns.baselines import UAPConfig
from classwise.patterns.canvas import choose_candidates
from classwise.patterns.chunking import RunOptions
from classwise.patterns.evaluate import EvalOptions, attack_success_rates, base_rates, predict
from classwise.patterns.neural_cleanse import NeuralCleanseConfig, neural_cleanse
from classwise.patterns.search import ImageSet, SearchOptions
from tests.conftest import read_json, stamp

SIZE, CLASSES, PATCH, TOP, LEFT = 16, 4, 4, 3, 9
RATIO = PATCH * PATCH / SIZE**2


def synthetic(channels=1, seed=0):
    tr_x, tr_y, te_x, te_y = make_synthetic(400, 800, SIZE, channels, CLASSES, seed)
    return tr_x.float() / 255, tr_y, te_x.float() / 255, te_y


# ---- the model is left exactly as it was: mode, weights, buffers, gradients ---------------------

class BatchNormDropoutNet(nn.Module):
    """A small CNN with the two layers whose behaviour depends on train/eval mode."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * SIZE * SIZE, CLASSES))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def bn_net():
    """Trained a few steps, so the running statistics are not their initial values; left in train mode."""
    tr_x, tr_y, _, _ = synthetic()
    torch.manual_seed(0)
    net = BatchNormDropoutNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for i in range(0, 320, 64):
        opt.zero_grad()
        nn.functional.cross_entropy(net(tr_x[i : i + 64]), tr_y[i : i + 64]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    net.train()
    return net


def _snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _modes_seen(net):
    """Every forward of a BatchNorm or Dropout layer records its `training` flag."""
    seen, handles = [], []
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d | nn.Dropout):
            handles.append(m.register_forward_pre_hook(lambda mod, _inp: seen.append(mod.training)))
    return seen, handles


def _assert_untouched(net, before):
    after = net.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():  # weights and buffers (running mean / var, num_batches_tracked), bit for bit
        assert torch.equal(after[k], v), k
    assert net.training and all(m.training for m in net.modules())  # train mode given back
    assert all(p.requires_grad and p.grad is None for p in net.parameters())  # trainable, no stale gradients


def _tiny_neural_cleanse() -> NeuralCleanseConfig:
    """A few steps of Neural Cleanse, whichever budget keys it has (steps; or epochs of epoch_size images)."""
    small = {"steps": 6, "epochs": 2, "epoch_size": 24, "batch_size": 8}
    return NeuralCleanseConfig(**{f.name: small[f.name] for f in fields(NeuralCleanseConfig) if f.name in small})


def test_search_baselines_and_neural_cleanse_run_in_eval_mode_and_leave_the_model_bit_identical(bn_net):
    tr_x, tr_y, te_x, te_y = synthetic()
    before = _snapshot(bn_net)
    seen, handles = _modes_seen(bn_net)
    try:
        pool = CanvasPool("train", torch.arange(len(tr_y)), tr_y, lambda i: tr_x[i])
        # best_of_k: the canvas margins and the search-pool ASR of every candidate pass through the model too.
        patterns = classwise_patterns(
            bn_net, [0, 1, 2], SearchData(CLASSES, pool, (te_x[:200], te_y[:200]), (te_x[200:400], te_y[200:400])),
            SearchSettings(steps=6, batch_size=4, pattern_ratios=[RATIO], canvas=CanvasConfig(strategy="best_of_k", k=2),
                           baselines=BaselinesConfig(["random", "gradcam", "saliency", "uap"], uap=UAPConfig(eps=0.1, steps=3))),
            progress=False,
        )
        assert len(patterns) == 3 and all(len(p.candidates) == 2 for p in patterns)
        _assert_untouched(bn_net, before)
        neural_cleanse(bn_net, [0, 1, 2], ImageSet(te_x[:200], te_y[:200]), _tiny_neural_cleanse(), RunOptions(progress=False))
        _assert_untouched(bn_net, before)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) > 20 and not any(seen)  # BatchNorm and Dropout never ran in train mode


class FakeCudaMemory:
    """A device that reports memory, so the probe of every pass runs on a CPU: 1 GiB free, 1 MiB per probe."""

    def __init__(self):
        self.probes = 0

    def free_total(self, device):
        return 2**30, 2**31

    def peak_bytes(self, device, fn):
        self.probes += 1
        fn()
        return 2**20


@pytest.fixture
def probed(monkeypatch):
    from classwise.patterns import chunking

    memory = FakeCudaMemory()
    monkeypatch.setattr(chunking, "memory_source", lambda device: memory)
    return memory


def test_the_memory_probe_of_every_pass_runs_in_eval_mode_on_a_model_left_in_train_mode(bn_net, probed):
    """After `fit` the model is in train mode; measuring memory must not move BatchNorm's statistics."""
    tr_x, tr_y, te_x, te_y = synthetic()
    before = _snapshot(bn_net)
    seen, handles = _modes_seen(bn_net)
    try:
        pool = CanvasPool("train", torch.arange(len(tr_y)), tr_y, lambda i: tr_x[i])
        classwise_patterns(
            bn_net, [0, 1], SearchData(CLASSES, pool, (te_x[:100], te_y[:100]), (te_x[200:400], te_y[200:400])),
            SearchSettings(steps=4, batch_size=4, pattern_ratios=[RATIO], canvas=CanvasConfig(strategy="best_of_k", k=2),
                           baselines=BaselinesConfig(["random", "gradcam", "uap"], uap=UAPConfig(eps=0.1, steps=2)),
                           evaluation=EvalConfig(ci=0.1)),
            progress=False,
        )
        predict(bn_net, te_x[:50])
        robust_accuracy(bn_net, te_x[:20], te_y[:20], PGDBudget(eps=0.03, step_size=0.01, steps=2))  # PGD-20 after `test`
        neural_cleanse(bn_net, [0, 1], ImageSet(te_x[:100], te_y[:100]), _tiny_neural_cleanse(), RunOptions(progress=False))
    finally:
        for h in handles:
            h.remove()
    assert probed.probes >= 5  # the search, its evaluations, the baselines and Neural Cleanse all measured
    _assert_untouched(bn_net, before)
    assert seen and not any(seen)


def test_the_model_is_given_back_when_the_search_fails(bn_net):
    tr_x, tr_y, te_x, te_y = synthetic()
    before = _snapshot(bn_net)
    calls = []

    def fail_on_third(_mod, _inp):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (simulated)")

    handle = bn_net.register_forward_pre_hook(fail_on_third)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            search_patterns(bn_net, tr_x[:2], [0, 1], ImageSet(te_x[:100], te_y[:100]), SearchConfig(steps=10),
                            SearchOptions(progress=False))
    finally:
        handle.remove()
    _assert_untouched(bn_net, before)


# ---- RGB: the mask is shared by the channels, the paste carries all three ------------------------

class RedPatchModel(nn.Module):
    """Answers `target` exactly when the patch at (TOP, LEFT) is red (R high, G and B low).

    A white or gray patch does not do: the pattern must copy the canvas's three channels together.
    """

    def __init__(self, target: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.linear = nn.Linear(3 * SIZE * SIZE, CLASSES)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(CLASSES, 3 * SIZE * SIZE, generator=g) * 0.05)
            self.linear.bias.zero_()
        self.target = target

    def forward(self, x):
        region = x[:, :, TOP : TOP + PATCH, LEFT : LEFT + PATCH].mean((2, 3))  # [N, 3]
        redness = region[:, 0] - (region[:, 1] + region[:, 2]) / 2
        logits = self.linear(x.flatten(1))
        bonus = torch.zeros_like(logits)
        bonus[:, self.target] = 60 * (redness - 0.85)
        return logits + bonus


def test_rgb_search_finds_a_coloured_patch():
    target = 1
    tr_x, tr_y, te_x, te_y = synthetic(channels=3)
    model = RedPatchModel(target)
    canvases = tr_x.clone()
    red = canvases[tr_y == target]
    red[:, :, TOP : TOP + PATCH, LEFT : LEFT + PATCH] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    canvases[tr_y == target] = red
    pool = CanvasPool("train", torch.arange(len(tr_y)), tr_y, lambda i: canvases[i])
    (res,) = classwise_patterns(model, [target], SearchData(CLASSES, pool, (te_x[:400], te_y[:400]), (te_x[400:], te_y[400:])),
                                SearchSettings(epochs=2, pattern_ratios=[RATIO], canvas=CanvasConfig(strategy="index")),
                                progress=False)
    assert res.canvas.shape == (3, SIZE, SIZE) and res.mask.shape == (1, SIZE, SIZE)
    pix = res.pixels(RATIO)[0]
    assert pix[TOP : TOP + PATCH, LEFT : LEFT + PATCH].sum() / pix.sum() >= 0.8
    entry = res.by_ratio[0]
    assert entry["asr"] >= 0.9 and entry["base_rate"] < 0.1 and entry["baselines"]["random"] < 0.1


def test_rgb_run_end_to_end(cli, tmp_path):
    """classwise-train on 3-channel images: every class searched, masks one channel, canvases three, figures drawn."""
    cli("train", "debug=fast", "dataset.channels=3", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]",
        "trainer.max_epochs=1", "search.steps=5")
    run = tmp_path / "run"
    res = read_json(run / "results.json")
    assert [c["class_index"] for c in res["classes"]] == [0, 1, 2, 3]
    assert all(0 <= c["by_ratio"][0]["asr"] <= 1 for c in res["classes"])
    saved = load_file(str(run / "patterns" / "masks.safetensors"))
    assert saved["class_0"].shape == (1, SIZE, SIZE) and saved["canvas_0"].shape == (3, SIZE, SIZE)
    assert (run / "patterns" / "grid.png").stat().st_size > 5000


# ---- canvas choice: most_confident and best_of_k choose what they say ----------------------------

class TwoCuesModel(nn.Module):
    """Class `target` from either of two cues, the rest of the logits 0.

    - a white patch at (TOP, LEFT): `60 * (patch mean - 0.85)`; a pattern can carry it;
    - an almost white image: `2000 * relu(image mean - 0.9)`; k pasted pixels cannot carry it.
    """

    def __init__(self, target: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so the model has a device
        self.target = target

    def forward(self, x):
        patch = x[:, :, TOP : TOP + PATCH, LEFT : LEFT + PATCH].mean((1, 2, 3))
        bright = torch.relu(x.mean((1, 2, 3)) - 0.9)
        logits = torch.zeros(len(x), CLASSES, device=x.device)
        logits[:, self.target] = self.scale * (60 * (patch - 0.85) + 2000 * bright)
        return logits


@pytest.fixture(scope="module")
def two_cues():
    """Class 2's most confident image is an almost white one whose patch region is gray (margin about 116);
    the second most confident carries the white patch (margin about 9); the others have neither."""
    target = 2
    tr_x, tr_y, te_x, te_y = synthetic()
    members = (tr_y == target).nonzero().flatten()
    bright, patched, other_bright = int(members[5]), int(members[2]), int((tr_y == 1).nonzero()[0])
    images = tr_x.clone()
    images[bright] = 1.0
    images[bright, :, TOP : TOP + PATCH, LEFT : LEFT + PATCH] = 0.5
    images[patched] = stamp(tr_x[patched : patched + 1], TOP, LEFT, PATCH)[0]
    images[other_bright] = 1.0  # the most confident image of all, but labelled 1: never a class-2 canvas
    pool = CanvasPool("train", torch.arange(len(tr_y)), tr_y, lambda i: images[i])
    return TwoCuesModel(target), pool, (te_x[:400], te_y[:400]), (te_x[400:], te_y[400:]), target, bright, patched


def test_most_confident_takes_the_largest_margin_of_the_class(two_cues):
    model, pool, search_set, eval_set, target, bright, _ = two_cues
    assert choose_candidates(model, pool, target, CanvasConfig(strategy="most_confident"), seed=0) == [bright]
    (res,) = classwise_patterns(model, [target], SearchData(CLASSES, pool, search_set, eval_set),
                                SearchSettings(steps=3, pattern_ratios=[RATIO], canvas=CanvasConfig(strategy="most_confident")),
                                progress=False)
    assert res.canvas_index == bright and res.candidates == []


def test_best_of_k_takes_the_candidate_whose_pattern_works_on_the_search_pool(two_cues):
    model, pool, search_set, eval_set, target, bright, patched = two_cues
    (res,) = classwise_patterns(model, [target], SearchData(CLASSES, pool, search_set, eval_set),
                                SearchSettings(epochs=2, pattern_ratios=[RATIO], canvas=CanvasConfig(strategy="best_of_k", k=3)),
                                progress=False)
    cands = res.candidates
    assert len(cands) == 3 and [c["canvas_index"] for c in cands[:2]] == [bright, patched]  # in order of margin
    by_index = {c["canvas_index"]: c for c in cands}
    assert by_index[patched]["search_asr"] >= 0.9 and by_index[bright]["search_asr"] < 0.1
    assert res.canvas_index == patched
    assert res.by_ratio[0]["asr"] >= 0.9  # and the choice holds on the held-out images


# ---- ASR and base rate, checked by hand ----------------------------------------------------------

def _reader():
    """logit_c = 10 * pixel c (c = 0, 1, 2) of a 1x2x2 image; pixel 3 is read by no class."""
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(10 * torch.eye(3, 4))
    return nn.Sequential(nn.Flatten(), lin)


#            pixel 0  1    2    3    label  prediction (argmax of pixels 0-2)
IMAGES = [([0.9, 0.1, 0.0, 0.0], 0),  # 0
          ([0.0, 0.8, 0.1, 0.0], 1),  # 1
          ([0.2, 0.0, 0.7, 0.0], 2),  # 2
          ([0.0, 0.0, 0.6, 0.5], 1),  # 2: already predicted 2 without any pattern
          ([0.0, 0.3, 0.0, 0.9], 0)]  # 1


def test_asr_and_base_rate_by_hand():
    model = _reader()
    x = torch.tensor([p for p, _ in IMAGES]).view(-1, 1, 2, 2)
    y = torch.tensor([label for _, label in IMAGES])

    def one(pixel: int, value: float) -> tuple[torch.Tensor, torch.Tensor]:
        canvas = torch.zeros(1, 2, 2)
        canvas.view(-1)[pixel] = value
        pix = torch.zeros(1, 2, 2, dtype=torch.bool)
        pix.view(-1)[pixel] = True
        return canvas, pix

    # target 2, pixel 2 := 0.5: flips image 4 (0.5 > 0.3), not 0 or 1 (0.9, 0.8 stay larger); image 3 was 2
    # already and counts; image 2 is of the target class and is left out: 2 of 4.
    # target 0, pixel 0 := 0.75: images 1, 2, 3 are of other classes; flips 2 and 3, not 1 (0.8): 2 of 3.
    # target 1, pixel 3 := 1.0: a pixel no class reads changes nothing; image 4 was 1 already: 1 of 3.
    patterns = [one(2, 0.5), one(0, 0.75), one(3, 1.0)]
    canvases = torch.stack([c for c, _ in patterns])
    pixels = torch.stack([p for _, p in patterns])
    targets = torch.tensor([2, 0, 1])
    expected = [2 / 4, 2 / 3, 1 / 3]
    assert attack_success_rates(model, canvases, pixels, targets, ImageSet(x, y)).tolist() == pytest.approx(expected)
    # One image and one pattern per forward pass: the same numbers.
    assert attack_success_rates(model, canvases, pixels, targets, ImageSet(x, y), EvalOptions(max_forward=1)).tolist() == pytest.approx(expected)
    # Additive (the UAP's evaluation): pixel 2 += 0.35 flips image 4 (0.35 > 0.3), not 1 (0.45 < 0.8): 2 of 4.
    delta, pix = one(2, 0.35)
    assert attack_success_rates(model, delta[None], pix[None], torch.tensor([2]), ImageSet(x, y),
                                EvalOptions(additive=True)).tolist() == [0.5]

    pred = predict(model, x)
    assert pred.tolist() == [0, 1, 2, 2, 1]
    # Non-target images already predicted as the target, without a pattern: the floor under the ASR.
    assert base_rates(pred, y, targets).rate.tolist() == pytest.approx([1 / 4, 0.0, 1 / 3])


# ---- top-k when the mask has fewer non-zero pixels than k ----------------------------------------

def test_top_pixels_always_gives_k_pixels_and_keeps_every_non_zero_one():
    masks = torch.zeros(2, 1, 10, 10)
    masks[0, 0, 4, 4], masks[0, 0, 9, 9] = 0.3, 0.02  # two non-zero pixels for k = 5; mask 1 collapsed to 0
    pix = top_pixels(masks, 0.05)
    assert pix.flatten(1).sum(1).tolist() == [5, 5]
    assert pix[0, 0, 4, 4] and pix[0, 0, 9, 9]
