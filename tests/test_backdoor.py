"""Backdoor setting: triggers, poisoning, the anomaly index, and detection on quickly trained models."""

from __future__ import annotations

import pytest
import torch

from classwise.data.poisoning import Poisoner
from classwise.data.sources import TensorImages
from classwise.data.triggers import SIG, BadNets, Blend, Trojan
from classwise.errors import ConfigError
from classwise.patterns.classwise import ClassPattern
from classwise.patterns.detection import MADRule, anomaly_indices, detect, pattern_detection
from classwise.pipeline.search_step import SearchJob
from tests.conftest import read_json


def gray(n=4, c=3, s=16):
    return torch.full((n, c, s, s), 0.5)


@pytest.mark.parametrize("position,corner", [("bottom_right", (12, 12)), ("top_left", (1, 1)), ([5, 7], (5, 7))])
def test_badnets_stamps_its_square_where_configured(position, corner):
    t = BadNets(16, 3, size=3, position=position, margin=1)
    out = t.apply(gray())
    r, c = corner
    assert out[:, :, r : r + 3, c : c + 3].eq(1).all()
    changed = (out != 0.5).any(1)[0]
    assert changed.sum() == 9 and torch.equal(changed, t.region[0])


def test_checkerboard_trojan_blend_sig_shapes_and_range():
    x = torch.rand(5, 1, 28, 28)
    cb = BadNets(28, 1, size=4, content="checkerboard").apply(x)
    assert set(cb[0, 0, 23:27, 23:27].unique().tolist()) == {0.0, 1.0}
    for trig in (Trojan(28, 1), Blend(28, 1, alpha=0.2), SIG(28, 1)):
        a, b = trig.apply(x), trig.apply(x)
        assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1 and torch.equal(a, b)
    blend = Blend(28, 1, alpha=0.2)
    assert torch.allclose(blend.apply(x), 0.8 * x + 0.2 * blend.pattern)
    sig = SIG(28, 1, delta=0.1).apply(torch.full((1, 1, 28, 28), 0.5))
    assert torch.allclose(sig[0, 0, 0], sig[0, 0, 27])  # horizontal: every row the same
    assert sig.max() == pytest.approx(0.6, abs=0.01) and sig.min() == pytest.approx(0.4, abs=0.01)


def test_bad_trigger_settings_fail_with_the_key():
    with pytest.raises(ConfigError, match="trigger.position"):
        BadNets(16, 1, size=3, position="middle")
    with pytest.raises(ConfigError, match="does not fit"):
        BadNets(16, 1, size=5, position=[14, 14])
    with pytest.raises(ConfigError, match="rate"):
        Poisoner(BadNets(16, 1), rate=1.5)


def _dataset(n=200, classes=4):
    g = torch.Generator().manual_seed(0)
    return TensorImages(torch.randint(0, 200, (n, 1, 16, 16), generator=g, dtype=torch.uint8), torch.arange(n) % classes)


@pytest.mark.parametrize("trigger,clean_label", [(BadNets(16, 1), False), (SIG(16, 1), True)])
def test_poisoning_rate_labels_and_determinism(trigger, clean_label):
    base = _dataset()
    train_idx = torch.arange(0, 160)
    p = Poisoner(trigger, target_class=2, rate=0.1)
    poisoned = p.poison_dataset(base, train_idx, seed=3)
    idx = p.poison_idx
    assert len(idx) == 16 and set(idx.tolist()) <= set(train_idx.tolist())
    if clean_label:
        assert (base.targets[idx] == 2).all() and torch.equal(poisoned.targets, base.targets)
    else:
        assert (base.targets[idx] != 2).all() and (poisoned.targets[idx] == 2).all()
    x, _ = poisoned.batch(idx)
    assert torch.allclose(x, trigger.apply(base.batch(idx)[0]))
    untouched = torch.tensor([i for i in range(200) if i not in set(idx.tolist())])
    assert torch.equal(poisoned.batch(untouched)[0], base.batch(untouched)[0])
    again = Poisoner(trigger, target_class=2, rate=0.1)
    again.poison_dataset(base, train_idx, seed=3)
    assert torch.equal(again.poison_idx, idx)


def test_median_and_anomaly_index_by_hand():
    # the detector's median is the statistical one, not torch.median's lower middle (2)
    assert detect([3, 1, 2], MADRule("x"))["median"] == 2 and detect([4, 1, 3, 2], MADRule("x"))["median"] == 2.5
    # odd: values 1..5 and 20 -> median 3.5 ... use 5 values: [1, 2, 3, 4, 10]: median 3, |dev| [2,1,0,1,7], MAD 1
    idx = anomaly_indices([1, 2, 3, 4, 10])
    assert idx == pytest.approx([2 / 1.4826, 1 / 1.4826, 0, 1 / 1.4826, 7 / 1.4826])
    # even: [1, 2, 4, 5, 6, 30]: median 4.5, |dev| [3.5, 2.5, .5, .5, 1.5, 25.5] -> MAD (1.5 + 2.5) / 2 = 2
    idx = anomaly_indices([1, 2, 4, 5, 6, 30])
    assert idx[5] == pytest.approx(25.5 / (1.4826 * 2))
    block = detect([1, 2, 4, 5, 6, 30], MADRule("x", "large"))
    assert block["flagged"] == [5] and block["predicted_target"] == 5
    assert detect([1, 2, 4, 5, 6, 30], MADRule("x", "small"))["flagged"] == []


# Masks of 8 classes: class 2 small (a trigger-like pattern), the others spread multiplicatively.
L1 = [60.0, 90.0, 5.0, 45.0, 150.0, 70.0, 110.0, 80.0]
WORKS = [0.6, 0.7, 0.99, 0.55, 0.8, 0.65, 0.9, 0.75]


def test_working_small_pattern_is_flagged_by_both_statistics():
    block = pattern_detection(L1, WORKS, gate_ratio=0.05)
    assert block["primary"] == "log_mask_l1" and set(block["statistics"]) == {"log_mask_l1", "mask_l1"}
    assert {k: block[k] for k in block["statistics"]["log_mask_l1"]} == block["statistics"]["log_mask_l1"]
    assert block["flagged"] == [2] and block["predicted_target"] == 2 and block["not_scored"] == []
    assert block["asr_gate"] == {"threshold": 0.5, "pattern_ratio": 0.05, "asr": WORKS}
    assert block["statistics"]["mask_l1"]["predicted_target"] == 2


def test_pattern_below_the_asr_gate_is_not_scored_and_never_flagged():
    asr = list(WORKS)
    asr[2] = 0.3  # the small mask does not work: it is not a trigger
    block = pattern_detection(L1, asr)
    for stat in block["statistics"].values():
        # it still enters the median and MAD (its index is shown), but cannot be flagged
        assert stat["not_scored"] == [2] and stat["anomaly_index"][2] > 2 and 2 not in stat["flagged"]
    # the gate is what keeps it out: with the gate at 0.3 it is scored and flagged
    assert pattern_detection(L1, asr, asr_gate=0.3)["flagged"] == [2]


@pytest.mark.parametrize("asr_gate", [0.5, 0.0])
def test_collapsed_search_is_never_flagged(asr_gate):
    """An empty mask (L1 0, ASR 0) is the smallest of all; it must not be named the target, even ungated."""
    l1, asr = [0.0, *L1[:2], *L1[3:]], [0.0, *WORKS[:2], *WORKS[3:]]
    block = pattern_detection(l1, asr, asr_gate=asr_gate)
    for stat in block["statistics"].values():
        assert 0 in stat["not_scored"] and stat["flagged"] == [] and stat["predicted_target"] is None
        assert stat["anomaly_index"][0] is None  # an empty mask enters nothing


def _records(l1s, asrs, size=10):
    out = []
    for c, (l1, asr) in enumerate(zip(l1s, asrs, strict=True)):
        mask = torch.zeros(1, size, size)
        mask.view(-1)[: int(l1)] = 1.0
        out.append(ClassPattern(c, "search", c, torch.zeros(1, size, size), mask,
                                [{"pattern_ratio": 0.01, "asr": 0.0}, {"pattern_ratio": 0.05, "asr": asr}]))
    return out


def _data(**kw):
    from classwise.patterns.detectors import DetectionData

    return DetectionData(clean=(torch.zeros(1, 1, 10, 10), torch.zeros(1)), held_out=(torch.zeros(1, 1, 10, 10), torch.zeros(1)),
                         num_classes=8, class_names=[f"class {c}" for c in range(8)], **kw)


def test_a_model_with_one_working_class_gets_a_verdict():
    """Only the small pattern works: it is judged against every non-empty mask, and flagged."""
    from classwise.patterns.detectors import PatternDetector

    asr = [0.0] * len(L1)
    asr[2] = 0.9
    block = PatternDetector().decide(None, _records(L1, asr), _data())
    assert block["verdict"] == "backdoored" and block["predicted_target"] == 2 and block["score"] > 2
    # ... and when the one working class is not small, the verdict is clean, never an abstention
    asr = [0.0] * len(L1)
    asr[4] = 0.9
    block = PatternDetector().decide(None, _records(L1, asr), _data())
    assert block["verdict"] == "clean" and block["predicted_target"] is None and block["reason"]


def test_detector_abstains_with_a_reason_never_as_clean():
    from classwise.patterns.detectors import PatternDetector

    two = PatternDetector().decide(None, _records(L1[:2], WORKS[:2]), _data())
    assert two["verdict"] == "abstained" and "3 or more" in two["reason"] and two["score"] is None
    collapsed = PatternDetector().decide(None, _records([0, 0, 0, 5], [0, 0, 0, 0.9]), _data())
    assert collapsed["verdict"] == "abstained" and "non-empty" in collapsed["reason"]
    poisoned = PatternDetector().decide(None, _records(L1, WORKS), _data(canvas_poisoned=True))
    assert poisoned["verdict"] == "abstained" and "clean_data" in poisoned["reason"]
    # the same canvases are allowed where the threat model says the training data may be read
    allowed = PatternDetector().decide(None, _records(L1, WORKS), _data(canvas_poisoned=True, threat_model="training_data"))
    assert allowed["verdict"] == "backdoored" and allowed["threat_model"] == "training_data"


def test_detection_step_writes_every_verdict_and_the_first_as_the_runs(tmp_path, capsys):
    """results.json: `detectors.<name>` for each, `detection` = the first; one printed line per detector."""
    from classwise.patterns.detectors import PatternDetector
    from classwise.pipeline.detection_step import run_detection

    records = _records([0.0, *L1[1:]], [0.0, *WORKS[1:]])
    run_detection(SearchJob(detectors=[PatternDetector()]), {}, records, _data(), tmp_path)
    res = read_json(tmp_path / "results.json")
    det = res["detection"]
    assert det == res["detectors"]["patterns"] and det["verdict"] == "backdoored" and det["predicted_target"] == 2
    assert det["asr_gate"]["pattern_ratio"] == 0.05 and det["not_scored"] == [0] and det["threat_model"] == "clean_data"
    assert "detector patterns (clean_data): BACKDOORED, target 2 (class 2)" in capsys.readouterr().out
    # gated at 1%, where nothing works: a clean verdict that says why
    run_detection(SearchJob(detectors=[PatternDetector(gate_ratio=0.01)]), {}, records, _data(), tmp_path)
    det = read_json(tmp_path / "results.json")["detection"]
    assert det["verdict"] == "clean" and det["flagged"] == [] and "no pattern reaches" in det["reason"]


def test_detection_settings_are_checked_before_compute():
    from classwise.patterns.detectors import PatternDetector
    from classwise.pipeline.settings import parse_settings

    with pytest.raises(ConfigError, match="search.detection_gate_ratio has moved; accepted: detector.patterns.gate_ratio"):
        parse_settings({"pattern_ratios": [0.01, 0.05], "detection_gate_ratio": 0.02})
    with pytest.raises(ConfigError, match="detector.patterns.asr_gate"):
        PatternDetector(asr_gate=1.5)
    with pytest.raises(ConfigError, match="gate_ratio=0.02 is not searched"):
        PatternDetector(gate_ratio=0.02).decide(None, _records(L1, WORKS), _data())


# debug=fast searches 20 steps: the clean classes' patterns stay far below the 0.5 ASR gate, which
# would leave fewer than 3 scored classes; the gate is set to 0 here (empty masks still never score)
# and has its own tests in test_patterns.py / test_search_contract.py. The model stays at width 32:
# at the default width 24 this 20-step synthetic search missed the trigger (target ASR 0.14); on the
# real Fashion-MNIST runs at width 24 the search found BadNets and Trojan on every seed (docs/results/paper-claims.md).
TRAIN = ("debug=fast", "dataset.num_classes=8", "dataset.num_train=3000", "trainer.max_epochs=3",
         "trainer.limit_train_batches=1.0", "detector=[default,neural_cleanse_fast]",
         "detector.neural_cleanse.epochs=12", "detector.patterns.asr_gate=0", "model.width=32", "threat_model=training_data")


@pytest.fixture(scope="module")
def backdoor_and_clean(tmp_path_factory):
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("bd")
    run_cli("train", *TRAIN, "setting=backdoor", "setting.poisoner.target_class=3", "trigger.position=top_left",
            root=root, run_dir=root / "backdoor")
    run_cli("train", *TRAIN, root=root, run_dir=root / "clean")
    return read_json(root / "backdoor" / "results.json"), read_json(root / "clean" / "results.json"), root


def test_backdoor_training_reports_clean_acc_and_backdoor_asr(backdoor_and_clean):
    bd, _, root = backdoor_and_clean
    assert bd["metrics"]["clean_acc"] > 0.9 and bd["metrics"]["backdoor_asr"] > 0.9
    assert bd["metrics"]["backdoor"]["poisoned"] == round(0.1 * 2700)
    assert (root / "backdoor" / "poison.safetensors").exists()
    assert (root / "backdoor" / "patterns" / "trigger_vs_pattern.png").exists()


def test_detection_flags_the_target_and_not_a_clean_model(backdoor_and_clean):
    bd, clean, _ = backdoor_and_clean
    d = bd["detectors"]["patterns"]
    target_index = d["anomaly_index"][3]
    scored = [a for a in d["anomaly_index"] if a is not None]
    assert d["predicted_target"] == 3 and target_index > 2 and target_index == max(scored)
    assert d["target_pixels_on_trigger"]["0.05"] >= 0.5
    assert max((a for a in clean["detectors"]["patterns"]["anomaly_index"] if a is not None), default=0) < target_index
    nc_bd = bd["detectors"]["neural_cleanse"]
    nc_clean = clean["detectors"]["neural_cleanse"]
    assert nc_bd["predicted_target"] == 3
    # Not compared across models: on this 3-epoch synthetic clean model the short-budget NC finds a
    # natural outlier of its own in some runs (index 4.4 against the backdoor target's 3.9, seen
    # with torch's default threads), so only "NC names the planted target" is asserted for it.
    assert nc_clean["classes"] == list(range(8))


def test_universal_patch_names_the_target_from_clean_data_and_calls_the_twin_clean(backdoor_and_clean):
    """The run's verdict (the first detector, reading only the clean split): the planted target, by score."""
    bd, clean, _ = backdoor_and_clean
    up_bd, up_clean = bd["detection"], clean["detection"]
    assert up_bd["detector"] == "universal_patch" and up_bd == bd["detectors"]["universal_patch"]
    assert up_bd["verdict"] == "backdoored" and up_bd["predicted_target"] == 3 and up_bd["true_target"] == 3
    assert up_clean["verdict"] == "clean" and up_clean["predicted_target"] is None
    assert up_bd["score"] > up_clean["score"] and up_bd["threat_model"] == "training_data"
    # The callback passed the architecture on: no clean reference exists for it on this dataset.
    assert up_bd["reference"] is None and up_bd["statistic"] == "max_gap"
    assert up_bd["reference_note"].startswith("no shipped reference for dataset 'synthetic' and model 'small_cnn'")


def test_a_detector_that_would_read_poisoned_training_canvases_is_refused_under_clean_data(refused):
    proc = refused("train", "debug=fast", "setting=backdoor", "search.canvas.source=train")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "threat_model=clean_data forbids detector 'patterns'" in proc.stderr
    # the same canvases for the figures alone are fine: no detector reads them
    from classwise.config import validate
    from tests.test_configs import compose_train

    validate(compose_train("setting=backdoor", "search.canvas.source=train", "detector=universal_patch"))
    validate(compose_train("setting=backdoor", "search.canvas.source=train", "threat_model=training_data"))


def test_detector_none_still_writes_a_verdict_of_abstention(tmp_path, capsys):
    from classwise.auditing import Audit
    from classwise.pipeline.detection_step import run_detection

    run_detection(SearchJob(), {}, _records(L1, WORKS), _data(), tmp_path)
    det = read_json(tmp_path / "results.json")["detection"]
    assert det["verdict"] == "abstained" and det["reason"] == "no detector ran (detector=none)" and det["score"] is None
    assert "ABSTAINED" in capsys.readouterr().out
    assert Audit({"detection": det, "classes": []}, {}, {}, tmp_path).verdict.startswith("abstained:")
