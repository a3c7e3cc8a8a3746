"""The detector benchmark: populations from their index, WaNet, and the field's measures (ROC-AUC, TPR at FPR)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from classwise.data.triggers import WaNet
from classwise.errors import ConfigError
from classwise.population import FAMILIES, member_seed, recipe
from classwise.reporting import detection_bench as bench


def test_a_population_is_made_from_the_index_half_clean_half_random_backdoors():
    dev = [recipe("dev", i, 28, 10) for i in range(40)]
    assert dev == [recipe("dev", i, 28, 10) for i in range(40)]  # the index is the whole recipe
    assert all(not r["backdoored"] for r in dev[::2]) and all(r["backdoored"] for r in dev[1::2])
    backdoored = dev[1::2]
    assert {r["family"] for r in backdoored} == set(FAMILIES)
    assert len({r["target_class"] for r in backdoored}) > 3 and all(0.03 <= r["rate"] <= 0.15 for r in backdoored)
    for r in backdoored:
        if r["family"] in ("badnets", "trojan"):
            row, col = r["trigger"]["position"]
            assert 0 <= row and 0 <= col and row + r["trigger"]["size"] <= 28 and col + r["trigger"]["size"] <= 28
    assert recipe("test", 1, 28, 10) != recipe("dev", 1, 28, 10)
    assert not {member_seed("dev", i) for i in range(100)} & {member_seed("test", i) for i in range(100)}
    with pytest.raises(ConfigError, match="population.name='train' is unknown; accepted: dev, test"):
        recipe("train", 0, 28, 10)


def test_wanet_warps_the_whole_image_smoothly_and_repeatably():
    x = torch.rand(3, 1, 28, 28)
    t = WaNet(28, 1, k=4, strength=1.5, seed=3)
    a, b = t.apply(x), t.apply(x)
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert (a - x).abs().mean() > 0.01  # it moves pixels ...
    flat = torch.full((1, 1, 28, 28), 0.4)
    assert torch.allclose(t.apply(flat), flat, atol=1e-6)  # ... but adds none: a flat image stays flat
    assert not torch.equal(WaNet(28, 1, seed=4).apply(x), WaNet(28, 1, seed=3).apply(x))
    with pytest.raises(ConfigError, match="trigger.k=1"):
        WaNet(28, 1, k=1)


def test_roc_auc_tpr_and_logistic_by_hand():
    assert bench.roc_auc([3, 2], [1, 2]) == pytest.approx(3.5 / 4)  # one tie counts a half
    assert bench.roc_auc([5, 6], [1, 2]) == 1.0 and bench.roc_auc([1], [5]) == 0.0
    neg = list(range(20))  # 5% of 20 clean models: one may sit above the threshold
    assert bench.tpr_at_fpr([17.5, 18.5, 30], neg) == pytest.approx(2 / 3)  # the threshold: 18, the 2nd highest
    lo, hi = bench.auc_interval([3, 4, 5, 1], [0, 2, 1, 0.5])
    assert 0 <= lo <= bench.roc_auc([3, 4, 5, 1], [0, 2, 1, 0.5]) <= hi <= 1
    a, b = bench.fit_logistic([0, 1, 2, 3, 4, 5], [0, 0, 1, 0, 1, 1])
    assert a > 0 and -b / a == pytest.approx(2.5, abs=0.6)
    assert bench.cross_entropy([0.5, 0.5], [1, 0]) == pytest.approx(math.log(2))


def _member(root, population, n, blocks, backdoor_asr=None):
    folder = root / population / "default" / f"member_{n}"
    folder.mkdir(parents=True)
    metrics = {"clean_acc": 0.85, **({"backdoor_asr": backdoor_asr} if backdoor_asr is not None else {})}
    folder.joinpath("results.json").write_text(json.dumps({
        "run": {"config": {"dataset": {"image_size": 28, "num_classes": 10}}}, "metrics": metrics,
        "detection": blocks["universal_patch"], "detectors": blocks}))


def _patch_block(easy_class: int, easy: float, others: float = 0.1):
    asr = [[others] * 3 for _ in range(10)]
    asr[easy_class] = [easy] * 3
    return {"detector": "universal_patch", "verdict": "clean", "score": 0.0, "predicted_target": None,
            "threshold": 3.0, "classes": list(range(10)), "ratios": [0.01, 0.02, 0.04], "asr": asr,
            "asr_n": [[300] * 3] * 10, "gap": [0.0] * 3, "seconds": 1.0}


def test_the_report_scores_a_population_lists_uninstalled_triggers_and_standardises_easy_classes(tmp_path):
    """Clean models where class 8 is naturally easy, backdoored ones whose target is easier still: the
    reference z (per class, against the clean models) names the target; an uninstalled trigger is listed."""
    for n in range(0, 12, 2):  # clean: class 8 at 0.6-0.7
        b = _patch_block(8, 0.6 + 0.02 * n)
        b["score"] = bench.patch_variants(b)["universal_patch[max_gap]"]["score"]
        _member(tmp_path, "dev", n, {"universal_patch": b})
    for n in range(1, 12, 2):
        target = recipe("dev", n, 28, 10)["target_class"]
        b = _patch_block(target, 0.99)
        b["score"], b["verdict"], b["predicted_target"] = 9.0, "backdoored", target
        _member(tmp_path, "dev", n, {"universal_patch": b}, backdoor_asr=0.5 if n == 11 else 0.99)
    members = bench.collect(tmp_path, "dev", with_variants=True)
    bench.add_reference_z(members, None, leave_one_out=True)
    rows = {(r["detector"], r["group"]): r for r in bench.score_table(members)}
    assert rows[("universal_patch", "pooled")]["backdoored"] == 5 and rows[("universal_patch", "pooled")]["clean"] == 6
    z = rows[("universal_patch[reference_z]", "pooled")]
    assert z["roc_auc"] == 1.0 and z["tpr_at_5fpr"] == 1.0
    named = [m for m in members if m.installed]
    assert all(m.detectors["universal_patch[reference_z]"]["predicted_target"] == m.target for m in named)
    summary = bench.write_report(members, tmp_path / "report", bench.calibrate(members))
    assert [m["member"] for m in summary["not_installed"]] == [11]
    md = (tmp_path / "report" / "detection_bench.md").read_text()
    assert "member 11" in md and "| universal_patch | pooled | 6 | 5 |" in md
    assert (tmp_path / "report" / "roc.png").stat().st_size > 5000
    assert (tmp_path / "report" / "detection_bench.csv").read_text().startswith("detector,group,")
    bench.log_to_wandb(summary, tmp_path / "report", "disabled")  # the W&B table and plot, never blocking


def test_the_subset_report_scores_only_the_members_a_detector_ran_on(tmp_path):
    """`--only-with neural_cleanse`: every detector on the members Neural Cleanse ran on, nothing else."""
    for n in range(6):
        blocks = {"universal_patch": _patch_block(8, 0.6)}
        if n < 4:
            blocks["neural_cleanse"] = {"detector": "neural_cleanse", "verdict": "clean", "score": 1.0 + n % 2,
                                        "predicted_target": None, "threshold": 2.0, "seconds": 500.0}
        _member(tmp_path, "test", n, blocks, backdoor_asr=0.99 if n % 2 else None)
    bench.main([str(tmp_path), "--population", "test", "--only-with", "neural_cleanse", "--out", str(tmp_path / "sub")])
    summary = json.loads((tmp_path / "sub" / "detection_bench.json").read_text())
    assert summary["members"] == 4 and [m["member"] for m in summary["members_detail"]] == [0, 1, 2, 3]
    assert {r["detector"] for r in summary["rows"]} == {"universal_patch", "neural_cleanse"}


def _measured(asr: list[list[float]], n: int = 300) -> dict:
    return {"classes": list(range(len(asr))), "hits": [[round(a * n) for a in row] for row in asr],
            "n": [[n] * len(asr[0])] * len(asr), "seconds": 1.0}


def test_a_dev_reference_carries_what_it_was_measured_on_and_auto_applies_it_only_there(tmp_path, monkeypatch):
    """`--population dev` writes reference.json with the dataset, model, shape and detector settings it was
    measured on, and reference_z's threshold and calibration from dev; `reference: auto` standardises a run
    of that dataset and model against it, and tells any other run why it fell back to max_gap."""
    from classwise.patterns import references
    from classwise.patterns.detectors import DetectionData, UniversalPatchDetector

    settings = {"ratios": [0.01, 0.02, 0.04], "steps": 80, "finetune_steps": 0, "batch_size": 32, "lr": 0.1, "alpha": 0.2,
                "eval_images": 300}
    for n in range(12):
        backdoored = n % 2 == 1
        target = recipe("dev", n, 28, 10)["target_class"] if backdoored else 8
        b = _patch_block(target, 0.99 if backdoored else 0.6 + 0.02 * n)
        _member(tmp_path, "dev", n, {"universal_patch": b}, backdoor_asr=0.99 if backdoored else None)
        path = tmp_path / "dev" / "default" / f"member_{n}" / "results.json"
        data = json.loads(path.read_text())
        data["run"] = {"dataset": "fashion_mnist", "model": "small_cnn", "config": {
            "dataset": {"name": "fashion_mnist", "image_size": 28, "num_classes": 10, "channels": 1},
            "detector": {"universal_patch": {"_target_": "x", **settings}}}}
        path.write_text(json.dumps(data))
    bench.main([str(tmp_path), "--population", "dev", "--variants"])
    ref = json.loads((tmp_path / "report" / "dev" / "reference.json").read_text())
    assert {k: ref[k] for k in ("dataset", "model", "num_classes", "image_shape", "population", "models")} == {
        "dataset": "fashion_mnist", "model": "small_cnn", "num_classes": 10, "image_shape": [1, 28, 28],
        "population": "dev", "models": 6}
    assert ref["members"] == [0, 2, 4, 6, 8, 10] and ref["steps"] == 80 and ref["eval_images"] == 300
    assert len(ref["mean"]) == 10 and len(ref["mean"][0]) == 3 and len(ref["calibration"]) == 2
    members = bench.collect(tmp_path, "dev")
    bench.add_reference_z(members, None, leave_one_out=True)
    clean_z = [m.detectors["universal_patch[reference_z]"]["score"] for m in members if not m.backdoored]
    assert ref["threshold"] == pytest.approx(max(clean_z))  # the highest dev clean score, each against the others

    # These members have no run folders: the recipe they were trained by is unknown, so none is recorded,
    # and such a reference applies to no run.
    assert ref["recipe"] is None
    trained = {"trainer.max_epochs": 1, "data.train_subset": 30000, "model": {"name": "small_cnn", "width": 24}}
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "fashion_mnist-small_cnn.json").write_text(json.dumps(ref))
    monkeypatch.setattr(references, "REFERENCE_DIR", shipped)
    images = (torch.zeros(4, 1, 28, 28), torch.arange(4))

    def data(**kw):
        return DetectionData(clean=images, held_out=images, num_classes=10, **{"recipe": dict(trained), **kw})

    asr = [[0.1] * 3 for _ in range(10)]
    asr[3] = [0.95] * 3
    unrecorded = UniversalPatchDetector().decide(_measured(asr), [], data(dataset="fashion_mnist", model="small_cnn"))
    assert unrecorded["statistic"] == "max_gap" and "the reference records none" in unrecorded["reference_note"]
    (shipped / "fashion_mnist-small_cnn.json").write_text(json.dumps({**ref, "recipe": trained}))

    det = UniversalPatchDetector()
    block = det.decide(_measured(asr), [], data(dataset="fashion_mnist", model="small_cnn"))
    assert block["statistic"] == "reference_z" and block["reference"] == "fashion_mnist-small_cnn"
    assert block["threshold"] == pytest.approx(ref["threshold"]) and block["verdict"] == "backdoored"
    assert block["predicted_target"] == 3 and "reference fashion_mnist-small_cnn: 6 clean" in block["reason"]
    assert block["probability"] is not None  # the reference's dev calibration

    other = det.decide(_measured(asr), [], data(dataset="fashion_mnist", model="resnet18"))
    assert other["statistic"] == "max_gap" and other["reference"] is None and other["threshold"] == 3.7
    assert "no shipped reference for dataset 'fashion_mnist' and model 'resnet18'" in other["reference_note"]
    longer = UniversalPatchDetector(eval_images=100).decide(_measured(asr), [], data(dataset="fashion_mnist", model="small_cnn"))
    assert longer["statistic"] == "max_gap" and "eval_images 100, not 300" in longer["reference_note"]
    assert UniversalPatchDetector(reference=None).rule(None) == ("max_gap", 3.7, None)
    # A reference holds for its population's training recipe: another recipe, or an unknown one, falls back.
    same = det.decide(_measured(asr), [], data(dataset="fashion_mnist", model="small_cnn", recipe=dict(trained)))
    assert same["statistic"] == "reference_z" and same["reference_note"] is None
    longer_trained = det.decide(_measured(asr), [], data(dataset="fashion_mnist", model="small_cnn",
                                                         recipe={**trained, "trainer.max_epochs": 2}))
    assert longer_trained["statistic"] == "max_gap"
    assert "another training recipe: trainer.max_epochs 2, not trainer.max_epochs 1" in longer_trained["reference_note"]
    unknown = det.decide(_measured(asr), [], data(dataset="fashion_mnist", model="small_cnn", recipe=None))
    assert unknown["statistic"] == "max_gap" and "an unknown training recipe" in unknown["reference_note"]
    with pytest.raises(ConfigError, match="reference=fashion_mnist-small_cnn was measured on other runs: this one has steps 40"):
        UniversalPatchDetector(statistic="reference_z", steps=40).measure(None, [0], data(dataset="fashion_mnist", model="small_cnn"))
    with pytest.raises(ConfigError, match="statistic=reference_z: no shipped reference for dataset 'cifar10'"):
        UniversalPatchDetector(statistic="reference_z").measure(None, [0], data(dataset="cifar10", model="resnet18"))
    with pytest.raises(ConfigError, match="mean_gap has no dev threshold"):
        UniversalPatchDetector(statistic="mean_gap")
    with pytest.raises(ConfigError, match="reference=nope does not exist; accepted: auto, null, a shipped reference"):
        UniversalPatchDetector(reference="nope")


def test_a_dev_calibration_is_applied_only_where_the_detector_decided_by_the_same_statistic(capsys):
    """Dev ran the universal patch by max_gap; test by reference_z (a reference applied): the dev max_gap
    threshold must not judge reference_z scores, and a reference_z dev run is not refitted in-sample."""
    def member(n, statistic, score):
        block = {"detector": "universal_patch", "verdict": "clean", "score": score, "statistic": statistic, "seconds": 1.0}
        return bench.Member("dev", n, n % 2 == 1, "badnets" if n % 2 else None, 0 if n % 2 else None,
                            0.99 if n % 2 else None, 0.9, {"universal_patch": block})

    dev = [member(n, "max_gap", 1.0 + n) for n in range(6)]
    fitted = bench.calibrate(dev)
    assert fitted["universal_patch"]["statistic"] == "max_gap" and fitted["universal_patch"]["threshold"] == 5.0
    assert bench.applicable(fitted, [member(n, "max_gap", 2.0) for n in range(4)]) == fitted
    assert bench.applicable(fitted, [member(n, "reference_z", 2.0) for n in range(4)]) == {}
    assert "decided by reference_z here and by max_gap on dev" in capsys.readouterr().out
    assert bench.calibrate([member(n, "reference_z", 1.0 + n) for n in range(6)]) == {}


def test_the_training_recipe_of_a_checkpoint_comes_from_its_run_folder(tmp_path):
    """What a reference is matched on: the run's schedule, data, optimiser and model, not its setting or seed."""
    from classwise.patterns.references import recipe_of_checkpoint, training_recipe

    config = {"trainer": {"max_epochs": 1}, "data": {"train_subset": 30000, "batch_size": 128, "augment": False},
              "module": {"optimizer": {"lr": 0.001}, "scheduler": None}, "model": {"name": "small_cnn", "width": 24,
              "input": {"range": 1}}, "setting": {"name": "population"}, "seed": 20001}
    run = tmp_path / "member_1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "results.json").write_text(json.dumps({"run": {"config": config}}))
    want = {"trainer.max_epochs": 1, "trainer.max_steps": None, "trainer.limit_train_batches": None,
            "trainer.accumulate_grad_batches": None, "trainer.devices": None, "trainer.num_nodes": None,
            "data.train_subset": 30000, "data.val_fraction": None, "data.batch_size": 128, "data.augment": False,
            "module.optimizer": {"lr": 0.001}, "module.scheduler": None, "setting.adversary": None,
            "model": {"name": "small_cnn", "width": 24}}
    assert training_recipe(config) == want
    assert recipe_of_checkpoint(run / "checkpoints" / "last.ckpt") == want == recipe_of_checkpoint(run)
    assert training_recipe({**config, "seed": 3, "setting": {"name": "natural"}}) == want
    # Lightning's defaults spelled out are the same recipe; adversarial training is another one.
    assert training_recipe({**config, "trainer": {"max_epochs": 1, "max_steps": -1, "accumulate_grad_batches": 1}}) == want
    assert training_recipe({**config, "setting": {"adversary": {"eps": 0.1}}})["setting.adversary"] == {"eps": 0.1}
    assert recipe_of_checkpoint(tmp_path / "elsewhere.ckpt") is None and recipe_of_checkpoint(None) is None
    (tmp_path / "list" / "checkpoints").mkdir(parents=True)
    (tmp_path / "list" / "results.json").write_text("[]")
    assert recipe_of_checkpoint(tmp_path / "list" / "checkpoints" / "last.ckpt") is None


def test_mixed_statistics_are_scored_apart_and_a_hand_named_reference_that_does_not_fit_is_refused_first(tmp_path, capsys):
    """Where a reference fit some members and not others, one ROC-AUC must not pool reference_z and max_gap
    scores; and a reference named by hand that the run does not fit is refused before training or searching."""
    from classwise.pipeline.search_step import SearchJob

    def member(n, statistic):
        block = {"detector": "universal_patch", "verdict": "clean", "score": 1.0, "statistic": statistic, "seconds": 1.0}
        return bench.Member("test", n, False, None, None, None, 0.9, {"universal_patch": block})

    split = bench.separate_statistics([member(0, "reference_z"), member(1, "max_gap")])
    assert [list(m.detectors) for m in split] == [["universal_patch<reference_z>"], ["universal_patch<max_gap>"]]
    assert "scored per statistic" in capsys.readouterr().out
    same = bench.separate_statistics([member(0, "max_gap"), member(1, "max_gap")])
    assert [list(m.detectors) for m in same] == [["universal_patch"], ["universal_patch"]]

    ref = {"dataset": "fashion_mnist", "model": "small_cnn", "num_classes": 10, "ratios": [0.01, 0.02, 0.04],
           "mean": [[0.0] * 3] * 10, "sd": [[1.0] * 3] * 10, "threshold": 3.0, "recipe": {"trainer.max_epochs": 1}}
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(ref))
    detector = {"universal_patch": {"_target_": "classwise.patterns.detectors.UniversalPatchDetector", "reference": str(path)}}
    job = SearchJob.of({}, detector, model_name="small_cnn", recipe={"trainer.max_epochs": 2})
    fashion = {"name": "fashion_mnist", "image_size": 28, "channels": 1, "num_classes": 10}
    with pytest.raises(ConfigError, match=r"was measured on other runs: this one has another training recipe: trainer.max_epochs 2"):
        job.check_references(fashion)
    SearchJob.of({}, detector, model_name="small_cnn", recipe={"trainer.max_epochs": 1}).check_references(fashion)
    with pytest.raises(ConfigError, match="num_classes 5, not 10"):
        job.check_references({**fashion, "num_classes": 5})
