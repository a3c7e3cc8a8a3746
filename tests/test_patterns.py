"""The search itself: ground truth on a planted patch, batching invariance, extraction and paste."""

from __future__ import annotations

import pytest
import torch

from classwise.data.synthetic import make_synthetic
from classwise.errors import ConfigError
from classwise.patterns import (
    BaselinesConfig,
    CanvasConfig,
    CanvasPool,
    SearchConfig,
    SearchData,
    SearchSettings,
    classwise_patterns,
    paste,
    search_patterns,
    top_pixels,
)
from classwise.patterns.chunking import RunOptions
from classwise.patterns.search import ImageSet, SearchOptions, pattern_pixel_count
from tests.conftest import PlantedPatchModel, stamp

SIZE, CLASSES, PATCH = 16, 4, 4


def synthetic(seed=0):
    tr_x, tr_y, te_x, te_y = make_synthetic(400, 800, SIZE, 1, CLASSES, seed)
    return tr_x.float() / 255, tr_y, te_x.float() / 255, te_y


@pytest.mark.parametrize("target,top,left", [(2, 3, 9), (0, 11, 1)])
def test_search_finds_the_planted_patch(target, top, left):
    """The ground truth: >= 80% of the top-k pixels on the patch, ASR >= 0.9 on held-out images."""
    tr_x, tr_y, te_x, te_y = synthetic()
    model = PlantedPatchModel(1, SIZE, CLASSES, target, top, left, PATCH)
    canvas_images = tr_x.clone()
    canvas_images[tr_y == target] = stamp(tr_x[tr_y == target], top, left, PATCH)  # every class-t canvas carries it
    pool = CanvasPool("train", torch.arange(len(tr_y)), tr_y, lambda i: canvas_images[i])
    search_set, eval_set = (te_x[:400], te_y[:400]), (te_x[400:], te_y[400:])
    ratio = PATCH * PATCH / SIZE**2
    (result,) = classwise_patterns(
        model, [target], SearchData(CLASSES, pool, search_set, eval_set),
        SearchSettings(epochs=2, pattern_ratios=[ratio], canvas=CanvasConfig(strategy="index")), progress=False,
    )
    pix = result.pixels(ratio)[0]
    on_patch = pix[top : top + PATCH, left : left + PATCH].sum().item()
    assert on_patch / pix.sum().item() >= 0.8
    entry = result.by_ratio[0]
    assert entry["asr"] >= 0.9
    assert entry["base_rate"] < 0.1
    assert entry["baselines"]["random"] < entry["asr"]


@pytest.mark.parametrize("update", ["sign", "adam"])
def test_batched_search_equals_per_class_search(update):
    tr_x, tr_y, te_x, te_y = synthetic(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * SIZE * SIZE, CLASSES))
    cfg = SearchConfig(update=update, step_size=0.02 if update == "sign" else 0.1, steps=15, batch_size=8, seed=3)
    targets = [0, 1, 2, 3]
    canvases = torch.stack([tr_x[tr_y == t][0] for t in targets])
    together = search_patterns(model, canvases, targets, ImageSet(te_x, te_y), cfg, SearchOptions(progress=False))
    for k, t in enumerate(targets):
        alone = search_patterns(model, canvases[k : k + 1], [t], ImageSet(te_x, te_y), cfg, SearchOptions(progress=False))
        assert torch.allclose(alone.masks[0], together.masks[k], atol=1e-4)
    # Chunked (few images per forward) equals one big batch too: classes are independent.
    chunked = search_patterns(model, canvases, targets, ImageSet(te_x, te_y), SearchConfig(**{**cfg.__dict__, "max_forward": 8}),
                              SearchOptions(progress=False))
    assert torch.allclose(chunked.masks, together.masks, atol=1e-4)


def test_steps_follow_the_paper_schedule():
    labels = torch.arange(40) % 4  # 10 per class, 30 other-class images per target
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 4))
    res = search_patterns(model, torch.rand(1, 1, SIZE, SIZE), [0], ImageSet(torch.rand(40, 1, SIZE, SIZE), labels),
                          SearchConfig(), SearchOptions(progress=False))
    assert res.steps == 5 * 30 // 4 + 1  # 5 passes, batch 4, ceil(150 / 4) = 38
    assert res.masks.min() >= 0 and res.masks.max() <= 1


def test_top_pixels_and_paste():
    mask = torch.zeros(1, 1, 10, 10)
    mask[0, 0, 2, 3] = 0.9
    mask[0, 0, 7, 7] = 0.8
    pix = top_pixels(mask, 0.02)
    assert pix.sum() == 2 and pix[0, 0, 2, 3] and pix[0, 0, 7, 7]
    assert pattern_pixel_count(0.001, 10, 10) == 1
    canvas = torch.ones(3, 10, 10)
    images = torch.zeros(5, 3, 10, 10)
    out = paste(images, canvas, pix[0])
    assert out[:, :, 2, 3].eq(1).all() and out.sum() == 5 * 3 * 2


def test_top_pixels_ties_go_to_the_score_then_the_index():
    """Equal mask values are ordered by the score (higher first), equal scores by the lower pixel index."""
    from classwise.patterns.search import tie_counts

    mask = torch.zeros(1, 1, 10, 10)
    mask[0, 0, 5, 5] = 1.0
    mask[0, 0, 0, 0] = mask[0, 0, 9, 9] = mask[0, 0, 4, 4] = 0.5  # three tied for two slots
    score = torch.zeros_like(mask)
    score[0, 0, 9, 9] = 2.0
    pix = top_pixels(mask, 0.03, score)[0, 0]
    assert pix[5, 5] and pix[9, 9] and pix[0, 0] and not pix[4, 4]
    pix = top_pixels(mask, 0.03)[0, 0]  # no score: index order, as in runs saved before scores
    assert pix[5, 5] and pix[0, 0] and pix[4, 4] and not pix[9, 9]
    nonzero, tied = tie_counts(mask, 0.03)
    assert nonzero.tolist() == [3] and tied.tolist() == [2]
    # Fewer non-zero pixels than k: the score picks among the zeros, still exactly k pixels.
    score[0, 0, 3, 1] = 5.0
    pix = top_pixels(mask, 0.06, score)[0, 0]
    assert pix.sum() == 6 and pix[3, 1] and pix[0, 0] and pix[4, 4] and pix[9, 9]
    nonzero, tied = tie_counts(mask, 0.06)
    assert nonzero.tolist() == [4] and tied.tolist() == [2]


def test_search_scores_are_the_unclipped_mask():
    """The tie-break score is mask_init plus every signed update: beyond the clip where the mask sits on it."""
    tr_x, tr_y, te_x, te_y = synthetic(1)
    model = PlantedPatchModel(1, SIZE, CLASSES, 1, 2, 2, PATCH)
    res = search_patterns(model, tr_x[:2], [1, 2], ImageSet(te_x[:200], te_y[:200]), SearchConfig(steps=40, batch_size=4),
                          SearchOptions(progress=False))
    assert res.scores.shape == res.masks.shape
    at_one, at_zero = res.masks == 1, res.masks == 0
    assert at_one.any() and (res.scores[at_one] >= 1 - 1e-6).all()
    assert at_zero.any() and (res.scores[at_zero] <= 1e-6).all()
    assert res.scores[at_zero].unique().numel() > 1  # pixels tied at 0 differ in how far they were pushed
    assert ((res.scores - 0.5) / 0.02).sub(((res.scores - 0.5) / 0.02).round()).abs().max() < 1e-3  # on the step grid


@pytest.mark.parametrize("kwargs,match", [
    ({"ratios": [0.0]}, "pattern_ratios"),
    ({"ratios": [1.5]}, "pattern_ratios"),
    ({"targets": [7]}, "search.classes"),
    ({"canvas": CanvasConfig(strategy="index", index=10_000)}, "canvas.index"),
])
def test_bad_search_inputs_fail_before_compute(kwargs, match):
    tr_x, tr_y, te_x, te_y = synthetic()
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            return torch.zeros(len(x), CLASSES)

    spy = Spy()
    spy.p = torch.nn.Parameter(torch.zeros(1))
    pool = CanvasPool("train", torch.arange(len(tr_y)), tr_y, lambda i: tr_x[i])
    with pytest.raises(ConfigError, match=match):
        settings = SearchSettings(pattern_ratios=kwargs.get("ratios", [0.05]), canvas=kwargs.get("canvas", CanvasConfig()))
        classwise_patterns(spy, kwargs.get("targets", [0, 1]), SearchData(CLASSES, pool, (te_x, te_y), (te_x, te_y)),
                           settings, progress=False)
    assert not calls


def test_search_config_rejects_unknown_update():
    with pytest.raises(ConfigError, match="search.update"):
        SearchConfig(update="sgd")


def test_baselines_on_the_planted_patch():
    """Our pattern beats random and matches or beats Grad-CAM; the UAP stays in its eps ball."""
    from classwise.patterns.baselines import UAPConfig, targeted_uaps

    target, top, left = 1, 2, 2
    tr_x, tr_y, te_x, te_y = synthetic()
    torch.manual_seed(0)
    model = PlantedPatchModel(1, SIZE, CLASSES, target, top, left, PATCH)
    # A conv front so Grad-CAM has a layer to look at: identity 1x1 conv.
    conv = torch.nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    net = torch.nn.Sequential(conv, model)
    canvas_images = tr_x.clone()
    canvas_images[tr_y == target] = stamp(tr_x[tr_y == target], top, left, PATCH)
    pool = CanvasPool("train", torch.arange(len(tr_y)), tr_y, lambda i: canvas_images[i])
    ratio = PATCH * PATCH / SIZE**2
    (res,) = classwise_patterns(
        net, [target], SearchData(CLASSES, pool, (te_x[:400], te_y[:400]), (te_x[400:], te_y[400:])),
        SearchSettings(epochs=2, pattern_ratios=[ratio], canvas=CanvasConfig(strategy="index"),
                       baselines=BaselinesConfig(["random", "gradcam", "saliency", "uap"], uap=UAPConfig(eps=0.1, steps=30))),
        progress=False,
    )
    b = res.by_ratio[0]
    assert b["asr"] > b["baselines"]["random"] + 0.5
    assert b["asr"] >= b["baselines"]["gradcam"] - 1e-9
    assert set(b["baselines"]) == {"random", "gradcam", "saliency", "uap_topk", "uap_dense"}
    deltas = targeted_uaps(net, [target], ImageSet(te_x[:400], te_y[:400]), UAPConfig(eps=0.05, steps=5), RunOptions(progress=False))
    assert deltas.abs().max() <= 0.05 + 1e-6


def test_universal_patch_finds_the_planted_patch():
    """k free-valued pixels on the same pool: they land on the planted patch and beat random by far."""
    from classwise.patterns.baselines import PatchConfig, universal_patches

    target, top, left = 3, 9, 4
    tr_x, tr_y, te_x, te_y = synthetic()
    model = PlantedPatchModel(1, SIZE, CLASSES, target, top, left, PATCH)
    pool = CanvasPool("train", torch.arange(len(tr_y)), tr_y, lambda i: tr_x[i])
    ratio = PATCH * PATCH / SIZE**2
    values, pixels = universal_patches(model, [target], [ratio], ImageSet(te_x[:400], te_y[:400]),
                                       PatchConfig(steps=60, finetune_steps=20), RunOptions(progress=False))
    assert values.shape == (1, 1, 1, SIZE, SIZE) and 0 <= values.min() and values.max() <= 1
    pix = pixels[0, 0, 0]
    assert pix.sum() == PATCH * PATCH
    assert pix[top : top + PATCH, left : left + PATCH].sum() / pix.sum() >= 0.8
    (res,) = classwise_patterns(
        model, [target], SearchData(CLASSES, pool, (te_x[:400], te_y[:400]), (te_x[400:], te_y[400:])),
        SearchSettings(steps=5, pattern_ratios=[ratio], canvas=CanvasConfig(strategy="index"),
                       baselines=BaselinesConfig(["random", "universal_patch"],
                                                 universal_patch=PatchConfig(steps=60, finetune_steps=20))),
        progress=False,
    )
    b = res.by_ratio[0]["baselines"]
    assert b["universal_patch"] >= 0.9 and b["universal_patch"] > b["random"] + 0.5


def test_neural_cleanse_flags_the_planted_class():
    """Reference settings (random init, cost from 0, x2 schedule, early stop) on short epochs: a 2x2 planted
    patch is the smallest trigger of any class, so its class is the one flagged. The linear part is
    made zero-mean per class so no class wins on the mean image (else that class needs an empty mask).
    Eight classes, not the module's four: short epochs leave the clean classes' L1 spread out, and a
    MAD over three clean values is set by whichever one came out largest, so the verdict would rest
    on the seed more than on the trigger."""
    from classwise.patterns.neural_cleanse import NeuralCleanseConfig, neural_cleanse

    target, top, left, classes = 2, 3, 9, 8
    _, _, te_x, te_y = make_synthetic(400, 800, SIZE, 1, classes, 0)
    te_x = te_x.float() / 255
    model = PlantedPatchModel(1, SIZE, classes, target, top, left, 2)
    with torch.no_grad():
        model.linear.weight -= model.linear.weight.mean(1, keepdim=True)
    block = neural_cleanse(model, list(range(classes)), ImageSet(te_x[:400], te_y[:400]),
                           NeuralCleanseConfig(epochs=80, epoch_size=64, patience=2, early_stop_patience=4), RunOptions(progress=False))
    assert block["flagged"] == [target] and block["predicted_target"] == target
    assert all(block["reached_threshold"])
    assert block["values"][target] < 0.5 * min(v for i, v in enumerate(block["values"]) if i != target)
    assert max(block["epochs_run"]) < 80  # early stop ended every class


PLANTED = (1, 2, 2)  # target, top, left of the toy model below


def planted_patch_baseline(task):
    """A baseline of the user's own (by its dotted path): the planted patch itself, pasted on each canvas."""
    from classwise.patterns.evaluate import Rates

    _, top, left = PLANTED
    pix = torch.zeros(len(task.targets), len(task.ratios), 1, SIZE, SIZE, dtype=torch.bool)
    pix[..., top : top + PATCH, left : left + PATCH] = True
    rates = task.evaluate(stamp(task.canvases, top, left, PATCH), pix, what="planted patch")
    return {"planted": rates, "bad_shape": Rates(rates.hits[:, :1], rates.n[:, :1])} if task.settings.seed == 7 else {
        "planted": rates}


def test_a_baseline_of_ones_own_runs_beside_the_registered_ones():
    """`search.baselines.methods` takes a registered name or a function's dotted path: it is evaluated held out
    like the others (same images and stopping rule) and lands in by_ratio; a misfit is one line."""
    target, top, left = PLANTED
    tr_x, tr_y, te_x, te_y = synthetic()
    model = PlantedPatchModel(1, SIZE, CLASSES, target, top, left, PATCH)
    pool = CanvasPool("train", torch.arange(len(tr_y)), tr_y, lambda i: tr_x[i])
    data = SearchData(CLASSES, pool, (te_x[:400], te_y[:400]), (te_x[400:], te_y[400:]))
    mine = "tests.test_patterns.planted_patch_baseline"
    res = classwise_patterns(model, [0, target], data, SearchSettings(steps=5, pattern_ratios=[0.05, 0.1], baselines=
                             BaselinesConfig([mine, "random"])), progress=False)
    for r in res:
        for b in r.by_ratio:
            assert set(b["baselines"]) == {"planted", "random"}
            assert b["baselines_n"]["planted"] > 0
            # the model answers `target` exactly on the planted patch: 1 for its class, 0 for the other
            assert b["baselines"]["planted"] == (1.0 if r.class_index == target else 0.0)
    with pytest.raises(ConfigError, match=r"returned 'bad_shape' as Rates \(2, 1\); accepted: Rates of shape \[classes, ratios\] = \[2, 2\]"):
        classwise_patterns(model, [0, target], data, SearchSettings(steps=5, seed=7, pattern_ratios=[0.05, 0.1],
                           baselines=BaselinesConfig([mine])), progress=False)
    for bad, why in (("tests.test_patterns.no_such_fn", "cannot be imported"), ("edges", "accepted: random, gradcam"),
                     ("tests.test_patterns.PLANTED", "a tuple")):
        with pytest.raises(ConfigError, match=why):
            BaselinesConfig([bad])
