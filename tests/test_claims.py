"""claims.md's backdoor rows on hand-written runs: most predictive, smallest, on the trigger (beyond chance)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from classwise.reporting.aggregate import estimate
from classwise.reporting.claims import build_claims
from classwise.reporting.runs import Run

BADNETS = {"_target_": "classwise.data.triggers.BadNets", "image_size": 28, "channels": 1, "size": 3,
           "position": "bottom_right", "margin": 1, "content": "white"}
BLEND = {"_target_": "classwise.data.triggers.Blend", "image_size": 28, "channels": 1, "alpha": 0.1, "seed": 1234}


def _run(seed: int, trigger: str, config: dict, target: int, l1: list[float], asr: list[float], on: float) -> Run:
    classes = [{"class_index": i, "class_name": f"c{i}", "mask_l1": l1[i],
                "by_ratio": [{"pattern_ratio": 0.01, "asr": asr[i], "base_rate": 0.0, "baselines": {"random": 0.0}}]}
               for i in range(len(l1))]
    data = {"run": {"setting": "backdoor", "seed": seed, "config": {"trigger": config}},
            "metrics": {"backdoor": {"trigger": trigger, "target_class": target}},
            "classes": classes,
            "detection": {"true_target": target, "predicted_target": target, "flagged": [target],
                          "target_pixels_on_trigger": {"0.01": on}}}
    return Run(run_id=f"{trigger},seed={seed}", slug=f"{trigger}_{seed}", dir=Path("."), data=data)


def test_backdoor_claim_has_smallest_and_on_trigger_rows_by_hand():
    runs = [_run(0, "badnets", BADNETS, 0, [5.0, 40.0, 60.0], [0.9, 0.1, 0.2], 0.625),
            _run(1, "badnets", BADNETS, 2, [50.0, 45.0, 9.0], [0.1, 0.3, 0.95], 0.75),
            _run(0, "blend", BLEND, 0, [70.0, 40.0, 60.0], [0.05, 0.1, 0.2], 1.0)]
    claims, _ = build_claims(runs)
    rows = {c.number: c for c in claims}
    small = rows["3-badnets-small"]
    expected = estimate([math.log(40 / 5), math.log(45 / 9)])
    assert small.value.mean == pytest.approx(expected.mean) and small.value.half == pytest.approx(expected.half)
    area = 9 / 784  # the 3x3 BadNets patch on a 28x28 image
    on = rows["3-badnets-on"]
    assert on.value.mean == pytest.approx((0.625 - area + 0.75 - area) / 2)
    assert on.verdict == ("holds" if on.value.low > 0 else "inconclusive")
    assert rows["3-badnets"].value.mean == pytest.approx(((0.9 - 0.2) + (0.95 - 0.3)) / 2)
    # Blend touches every pixel: being "on the trigger" says nothing, and the row says so.
    assert rows["3-blend-on"].verdict == "inconclusive" and rows["3-blend-on"].value is None
    assert "100%" in rows["3-blend-on"].note
    assert rows["3-blend-small"].value.mean == pytest.approx(math.log(40 / 70))  # not the smallest: < 0


def test_a_backdoor_the_model_did_not_learn_is_left_out_of_claim_3_and_named():
    learned = _run(0, "badnets", BADNETS, 0, [5.0, 40.0, 60.0], [0.9, 0.1, 0.2], 0.625)
    learned.data["metrics"]["backdoor_asr"] = 0.99
    also = _run(1, "badnets", BADNETS, 2, [50.0, 45.0, 9.0], [0.1, 0.3, 0.95], 0.75)
    also.data["metrics"]["backdoor_asr"] = 0.97
    missed = _run(2, "badnets", BADNETS, 1, [50.0, 45.0, 60.0], [0.1, 0.3, 0.05], 0.0)
    missed.data["metrics"]["backdoor_asr"] = 0.12
    rows = {c.number: c for c in build_claims([learned, also, missed])[0]}
    assert rows["3-badnets"].value.n == 2
    assert rows["3-badnets"].value.mean == pytest.approx(((0.9 - 0.2) + (0.95 - 0.3)) / 2)
    assert "1 of 3 seeds left out" in rows["3-badnets"].note and "0.120" in rows["3-badnets"].note
    assert rows["3-badnets-small"].value.n == 2
    only_missed = {c.number: c for c in build_claims([missed])[0]}
    assert only_missed["3-badnets"].verdict == "inconclusive" and only_missed["3-badnets"].value is None


def _member(i, backdoored, verdict, predicted, target=None, asr=0.99, family="badnets"):
    return {"member": i, "backdoored": backdoored, "family": family if backdoored else None, "target": target,
            "backdoor_asr": asr if backdoored else None, "universal_patch.verdict": verdict,
            "universal_patch.predicted_target": predicted}


def test_claims_3_and_5_read_from_a_detector_population():
    """Claim 3: targets named among installed backdoors, against chance; claim 5: clean models flagged against 5%."""
    from classwise.reporting.claims import claims_markdown, population_claims

    clean = [_member(i, False, "clean", None) for i in range(0, 40, 2)]
    clean[3] = _member(6, False, "backdoored", 8)  # one clean model flagged: 1/20, not above the 5% null
    backdoors = [_member(i, True, "backdoored", i % 10, target=i % 10) for i in range(1, 40, 2)]
    backdoors[0] = _member(1, True, "clean", None, target=1)
    backdoors.append(_member(41, True, "clean", None, target=3, asr=0.5))  # not installed: not counted
    summary = {"population": "test", "clean": 20, "backdoored_installed": 20, "members_detail": clean + backdoors}
    rows = {c.number: c for c in population_claims(summary)}
    three, five = rows["3-population-universal_patch"], rows["5-population-universal_patch"]
    assert three.value.startswith("19/20") and three.verdict == "holds" and "badnets 19/20" in three.note
    assert five.value.startswith("1/20") and five.verdict == "does not hold" and "8 x1" in five.note
    # many clean models flagged: the natural-backdoor claim holds
    flagged = [_member(i, False, "backdoored", 2) for i in range(10)] + [_member(i, False, "clean", None) for i in range(10)]
    five = population_claims({"members_detail": flagged})[0]
    assert five.number == "5-population-universal_patch" and five.verdict == "holds"
    assert "From a population" in claims_markdown(list(rows.values()), 0)


def test_report_refuses_a_population_file_that_is_not_there(tmp_path, capsys):
    from classwise.report import main

    assert main([str(tmp_path), "--population", str(tmp_path / "nope.json")]) == 2
    assert "--population=" in capsys.readouterr().err

