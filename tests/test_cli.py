"""The real command lines end to end on synthetic data: train, resume, search a checkpoint, bad input."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import read_json

FAST = ("debug=fast",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One debug=fast training run shared by the tests below."""
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("trained")
    run_cli("train", *FAST, "search.pattern_ratios=[0.02,0.05]", root=root, run_dir=root / "run")
    return root / "run"


def test_train_writes_results_and_patterns(trained):
    res = read_json(trained / "results.json")
    assert res["schema_version"] == 3
    assert res["run"]["dataset"] == "synthetic" and res["run"]["model"] == "small_cnn" and res["run"]["setting"] == "natural"
    assert res["run"]["config"]["seed"] == 0
    assert 0.5 < res["metrics"]["clean_acc"] <= 1.0
    assert [c["class_index"] for c in res["classes"]] == [0, 1, 2, 3]
    for c in res["classes"]:
        assert [b["pattern_ratio"] for b in c["by_ratio"]] == [0.02, 0.05]
        assert all(0 <= b["asr"] <= 1 and "random" in b["baselines"] for b in c["by_ratio"])
        for b in c["by_ratio"]:  # every rate with its 95% interval and the images it was measured on
            for name in ("asr", "base_rate"):
                lo, hi = b[f"{name}_ci"]
                assert lo <= b[name] <= hi and b[f"{name}_n"] > 0
            lo, hi = b["baselines_ci"]["random"]
            assert lo <= b["baselines"]["random"] <= hi and 0 < b["baselines_n"]["random"] <= res["search"]["eval_size"]
        assert c["canvas_split"] == "search" and c["canvas_index"] >= 0  # threat_model=clean_data: the clean split
    s = res["search"]
    assert s["preset"] == "fast" and s["world_size"] == 1 and s["pool_size"] > 0 and s["eval_size"] > 0
    splits = load_file(str(trained / s["splits_file"]))
    assert not set(splits["search"].tolist()) & set(splits["eval"].tolist())
    masks = load_file(str(trained / "patterns" / "masks.safetensors"))
    assert masks["class_0"].shape == (1, 16, 16)
    assert (trained / "patterns" / "grid.png").stat().st_size > 5000
    assert (trained / "checkpoints" / "last.ckpt").exists()
    timing = res["timing"]
    for phase in ("train", "test", "canvas", "search", "evaluation", "search_step"):
        assert timing[phase] >= 0, phase
    assert set(timing["detector"]) == {"universal_patch", "patterns"} and min(timing["detector"].values()) >= 0
    assert set(timing["baselines"]) == {"random"}
    assert timing["search_step"] >= timing["search"] + timing["evaluation"]


def test_search_on_checkpoint_reproduces_the_train_search(trained, cli, tmp_path):
    cli("search", *FAST, f"checkpoint={trained}", "search.pattern_ratios=[0.02,0.05]")
    res = read_json(tmp_path / "run" / "results.json")
    ref = read_json(trained / "results.json")
    assert res["run"]["dataset"] == "synthetic" and res["run"]["setting"] == "natural"
    for a, b in zip(res["classes"], ref["classes"], strict=True):
        assert a["canvas_index"] == b["canvas_index"]
        assert a["by_ratio"][1]["asr"] == pytest.approx(b["by_ratio"][1]["asr"], abs=0.02)


def test_resume_continues_from_last_checkpoint(cli, tmp_path):
    first = tmp_path / "interrupted"
    cli("train", *FAST, "trainer.max_epochs=1", "search.enabled=false", run_dir="interrupted")
    cli("train", *FAST, "trainer.max_epochs=2", "search.enabled=false", f"resume={first}", run_dir="resumed")
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    interrupted = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    # debug=fast: 8 batches an epoch, so a straight 2-epoch run ends at epoch 1, step 16; the resumed
    # run gets there from the interrupted one's step 8 (not 8 + 16: it continued, it did not restart)
    assert (interrupted["epoch"], interrupted["global_step"]) == (0, 8)
    assert (resumed["epoch"], resumed["global_step"]) == (1, 16)
    assert read_json(tmp_path / "resumed" / "results.json")["run"]["resumed_from"].endswith("last.ckpt")


def test_an_architecture_of_ones_own_trains_and_its_checkpoint_is_searched(cli, tmp_path):
    """A model config is a `_target_` and its arguments: any class taking in_channels and num_classes trains with
    the dataset's normalisation inside, its checkpoint names it, and classwise-search rebuilds it from there."""
    own = ("model.name=tiny", "model._target_=tests.conftest.TinyNet", "~model.width", "+model.hidden=8")
    cli("train", *FAST, *own, "search.pattern_ratios=[0.05]", "detector=none")
    res = read_json(tmp_path / "run" / "results.json")
    assert (res["run"]["model"], res["run"]["architecture"]) == ("tiny", "tests.conftest.TinyNet")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["classwise"]["model"] == {"name": "tiny", "_target_": "tests.conftest.TinyNet", "hidden": 8}
    cli("search", *FAST, f"checkpoint={tmp_path / 'run'}", "detector=none", run_dir=tmp_path / "searched")
    searched = read_json(tmp_path / "searched" / "results.json")
    assert searched["run"]["architecture"] == "tests.conftest.TinyNet"
    assert searched["metrics"]["clean_acc"] == pytest.approx(res["metrics"]["clean_acc"], abs=1e-6)


@pytest.mark.parametrize("overrides,needle", [
    (("dataset=imagenet21k",), "dataset=imagenet21k is unknown; accepted: cifar10, fashion_mnist"),
    (("-m", "search=fast,nope"), "search=nope is unknown; accepted: fast, paper"),
    (("model.name=alexnet9",), "model.name"),
    (("module.optimizer.lr=0",), "module.optimizer.lr"),
    (("data.batch_size=-4",), "data.batch_size"),
    (("dataset.root=/no/such/folder", "dataset=fashion_mnist"), "dataset.root"),
    (("model=vgg16_bn",), "dataset.image_size"),
    (("search.pattern_ratios=[0]",), "search.pattern_ratios"),
    (("search.canvas.strategy=best",), "search.canvas.strategy"),
    # the `search` group's schema: a wrong key or type fails when Hydra composes, said in one line
    (("search.foo=1",), "Key 'foo' not in 'SearchSettings'"),
    (("search.canvas.sorce=train",), "Key 'sorce' not in 'CanvasConfig'"),
    (("search.steps=abc",), "search.steps"),
    (("dataset.foo=1",), "Key 'foo' not in 'DatasetConfig'"),
    (("dataset.image_size=big",), "dataset.image_size"),
    (("data.foo=2",), "Key 'foo' not in 'DataConfig'"),
    (("data.batch_size=abc",), "could not be converted to Integer (data.batch_size)"),
    # a `+` key is added even to a schema's block by Hydra: refused all the same
    (("+search.foo=1",), "search.foo is not a key of search (SearchSettings)"),
    (("+setting.foo=1",), "setting.foo is not a key of setting (SettingConfig)"),
    # every block that builds an object, against its target's signature
    (("+trainer.max_epoch=3",), "trainer.max_epoch is not an argument of lightning.pytorch.Trainer; "
                                "did you mean trainer.max_epochs?"),
    (("trainer.max_epochs=abc",), "trainer.max_epochs='abc' cannot be taken by lightning.pytorch.Trainer; "
                                  "accepted: an integer, or null"),
    (("setting=backdoor", "trigger.size=abc"), "trigger.size='abc' cannot be taken by classwise.data.triggers.BadNets"),
    (("model.name=tiny",), "model.name=tiny with model._target_=classwise.models.small_cnn.SmallCNN: the shipped "
                           "architectures keep their names; accepted: model=small_cnn"),
    (("model.name=resnet18",), "accepted: model=resnet18 (the group option)"),
    (("model.name=tiny", "model._target_=tests.conftest.NoSuchNet"), "model._target_=tests.conftest.NoSuchNet cannot be imported"),
    (("+model.depth=3",), "model.depth is not an argument of classwise.models.small_cnn.SmallCNN; did you mean model.width? accepted: width, hidden, image_size"),
    (("+detector.universal_patch.stps=9",), "did you mean detector.universal_patch.steps?"),
    (("+callbacks.checkpoint.monitr=val/acc",), "did you mean callbacks.checkpoint.monitor?"),
    (("seed=abc",), "seed='abc'; accepted: an integer"),
    # the plain blocks of train.yaml and the paths group have schemas too
    (("+module.foo=1",), "module.foo is not a key of module (ModuleConfig); accepted: channels_last, optimizer, scheduler"),
    (("module.channels_last=abc",), "module.channels_last"),
    (("+paths.dta_dir=/tmp",), "paths.dta_dir is not a key of paths (PathsConfig); did you mean paths.data_dir?"),
    (("~module.scheduler",), "~module.scheduler: a key of a schema's block cannot be deleted; accepted: module.scheduler=null"),
    # a Hydra flag's value is not an override: the check still sees the overrides around it
    (("--cfg", "job", "search.foo=1"), "Key 'foo' not in 'SearchSettings'"),
    # keys of the old flat block: where they went
    (("search.eval_ci=0.1",), "search.eval_ci has moved; accepted: search.evaluation.ci"),
    (("search.canvas=best_of_k",), "accepted: search.canvas.strategy=best_of_k"),
    (("search.baselines=[random]",), "accepted: search.baselines.methods=[random]"),
])
def test_bad_train_input_fails_fast_with_one_line(refused, overrides, needle):
    proc = refused("train", *FAST, *overrides)
    assert proc.returncode == 2
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command,overrides,needle", [
    # a misspelt key: Hydra's message, then the key meant and what the block accepts
    ("train", ("search.stepz=3",), "Key 'stepz' not in 'SearchSettings' (search.stepz); did you mean search.steps? accepted: "),
    ("train", ("model.widht=3",), "did you mean model.width? accepted: name, width"),
    ("train", ("trainer.strategy=ddp",), "trainer.strategy is not set in this config, and Hydra changes only a key that is; "
                                         "accepted: +trainer.strategy=ddp"),
    ("train", ("+seedz=1",), "+seedz=1 adds seedz, which classwise-train's config does not have; did you mean seed?"),
    ("search", ("+bench.member=3",), "adds bench, which classwise-search's config does not have; "),
    ("search", ("setting=backdoor",), "setting= is not a group of classwise-search's config; accepted: "),
    ("train", ("setting.population.member=3",), "setting.population is null in this config, so it has no member; "
                                                "accepted: the option of setting that fills it"),
    ("train", ("~search.classes",), "~search.classes: search.classes is null already; accepted: leave it out, or search.classes=null"),
    # Hydra's own groups and keys
    ("train", ("hydra/launcher=nosuch",), "Could not find 'hydra/launcher/nosuch'; accepted: basic, joblib"),
    ("train", ("hydra.job.chdir=maybe",), "Value 'maybe' is not a valid bool (type str) (hydra.job.chdir)"),
    # values only a build or Lightning's registries refuse, at composition
    ("train", ("setting=adversarial", "setting.adversary.method=bogus"), "setting.adversary.method='bogus' is unknown"),
    ("train", ("setting=backdoor", "+setting.adversary.eps=0.1"), "setting.adversary has nothing to build (no _target_) "
                                                                  "under setting=backdoor; accepted: setting=adversarial"),
    ("train", ("trainer.precision=17",), "trainer.precision=17 is unknown; accepted: 64, 32, 16,"),
    ("train", ("trainer.accelerator=gpus",), "trainer.accelerator='gpus' is unknown; accepted: auto, gpu, "),
    ("train", ("trainer.devices=[a]",), "trainer.devices=['a']; accepted: a count, auto"),
    ("search", ("trainer.accelerator=gpus",), "trainer.accelerator='gpus' is unknown"),
    ("search", ("model=timm", "model.arch=resnett50"), "model.arch='resnett50' is not a timm model; accepted e.g.: resnet50,"),
    ("train", ("detector.patterns.calibration=abc",), "detector.patterns.calibration='abc'; accepted: [a, b], two numbers"),
    ("train", ("trainer.max_epochs=${oops}",), "trainer.max_epochs='${oops}': Interpolation key 'oops' not found"),
    ("train", ("module.optimizer._target_=torch.optim.Adamm",), "module.optimizer._target_=torch.optim.Adamm does not exist "
                                                                "(module 'torch.optim' has no attribute 'Adamm'); did you mean "
                                                                "module.optimizer._target_=torch.optim.Adam?"),
    # every value of a sweep, before its first job: past the eighth, and values only `validate` refuses
    ("train", ("-m", "seed=0,1,2,3,4,5,6,7,8,abc"), "seed='abc'; accepted: an integer"),
    ("train", ("-m", "search.canvas.strategy=most_confident,bogus"), "search.canvas.strategy='bogus' is unknown"),
    ("train", ("-m", "model=small_cnn,resnet18", "model.width=4,x"), "model.width"),
])
def test_a_bad_command_line_is_one_line_before_hydra_starts_a_job(refused, command, overrides, needle):
    proc = refused(command, *FAST, *overrides)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (proc.stdout or "").strip()  # nothing ran: no job, no Lightning banner


def test_a_printed_config_is_checked_for_keys_and_types_not_for_what_this_machine_has(refused):
    """`--cfg job` runs nothing: a data folder only the cluster has is no reason to refuse printing the config."""
    proc = refused("train", "--cfg", "job", *FAST, "dataset=fashion_mnist", "dataset.root=/only/on/the/cluster")
    assert proc.returncode == 0 and "root: /only/on/the/cluster" in proc.stdout
    proc = refused("train", "--cfg", "job", *FAST, "dataset=fashion_mnist", "dataset.root=/only/on/the/cluster", "seed=abc")
    assert proc.returncode == 2 and "seed='abc'" in proc.stderr


@pytest.mark.parametrize("overrides,needle", [
    # WandbLogger passes unknown keywords on to wandb.init: a key is checked against both
    (("+logger.projet=x",), "logger.projet is not an argument of lightning.pytorch.loggers.WandbLogger; did you mean "
                            "logger.project?"),
    (("logger.mode=onlin",), "logger.mode='onlin' is unknown; accepted: offline, online, disabled"),
    (("logger.server_timeout=-1",), "logger.server_timeout=-1; accepted: a positive number of seconds"),
    (("logger.server_timeout=null",), "logger.server_timeout=None; accepted: a positive number of seconds"),
    # hydra-zen leaves WandbLogger's arguments untyped (a forward reference in its signature): each plain
    # annotation is read on its own
    (("logger.project=[1,2]",), "logger.project=[1, 2] cannot be taken by lightning.pytorch.loggers.WandbLogger; "
                                "accepted: a string, or null"),
])
def test_bad_logger_input_fails_fast_with_one_line(refused, overrides, needle):
    proc = refused("train", "dataset=synthetic", *overrides)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert needle in proc.stderr


def test_bad_input_through_the_installed_command(cli):
    """The refusal above, in a new interpreter as a user runs it: exit status 2, one line, no compute."""
    start = time.perf_counter()
    proc = cli("train", *FAST, "dataset=imagenet21k", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("error: dataset=imagenet21k is unknown; accepted: "
                                                          "cifar10, fashion_mnist, gtsrb, imagefolder, mnist, synthetic")
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - start < 60


def test_checkpoint_of_another_model_is_refused(trained, refused):
    proc = refused("search", *FAST, f"checkpoint={trained / 'checkpoints' / 'last.ckpt'}", "dataset=synthetic",
                   "dataset.channels=3", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.2,0.2,0.2]")
    assert proc.returncode == 2 and "dataset.channels" in proc.stderr
    proc = refused("search", *FAST, "checkpoint=/no/such.ckpt")
    assert proc.returncode == 2 and "checkpoint=" in proc.stderr


@pytest.mark.parametrize("overrides,needle", [
    (("bench.member=abc",), "could not be converted to Integer (bench.member)"),
    (("+bench.membr=1",), "bench.membr is not a key of bench (BenchConfig); did you mean bench.member?"),
    (("bench.population=prod",), "bench.population='prod' is unknown; accepted: dev, test"),
])
def test_a_bad_population_bench_is_refused_in_one_line(refused, overrides, needle):
    proc = refused("search", *FAST, "bench=population", *overrides)
    assert proc.returncode == 2 and needle in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "error" in line]) == 1 and "Traceback" not in proc.stderr


def test_search_rejects_class_and_canvas_index_out_of_range(trained, refused):
    proc = refused("search", *FAST, f"checkpoint={trained}", "search.classes=[9]")
    assert proc.returncode == 2 and "search.classes" in proc.stderr
    proc = refused("search", *FAST, f"checkpoint={trained}", "search.canvas.strategy=index", "search.canvas.index=99999")
    assert proc.returncode == 2 and "search.canvas.index" in proc.stderr


def test_transfer_from_a_run_to_itself_reproduces_its_asr(trained, cli, refused, tmp_path):
    cli("search", *FAST, f"checkpoint={trained}", f"patterns_from={trained}")
    transfer = read_json(tmp_path / "run" / "results.json")["transfer"]
    ref = read_json(trained / "results.json")
    assert transfer["pattern_ratios"] == [0.02, 0.05]
    for t, c in zip(transfer["classes"], ref["classes"], strict=True):
        for a, b in zip(t["by_ratio"], c["by_ratio"], strict=True):
            assert a["asr"] == pytest.approx(b["asr"], abs=1e-6) and a["source_asr"] == b["asr"]
    proc = refused("search", *FAST, f"checkpoint={trained}", "patterns_from=/no/run")
    assert proc.returncode == 2 and "patterns_from" in proc.stderr


def test_resume_from_another_model_is_refused(trained, refused):
    proc = refused("train", *FAST, "model=resnet18", f"resume={trained}")
    assert proc.returncode == 2 and "model.name=small_cnn" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [
    ("model='resnet18'",),  # quoted, as Hydra's grammar allows
    ("-m", "model='resnet18','small_cnn'"),
    ("-m", "detector=[default,neural_cleanse],all"),  # a sweep of a list and an option
    ("-m", "model=sort(small_cnn,resnet18)"),
    ("hydra/launcher='joblib'",),
    ("+tag=abc", "hydra.run.dir=/tmp/runs/${tag}"),  # an added key that an interpolation reads
])
def test_valid_command_lines_hydra_accepts_are_not_refused(argv):
    """The one-line checks read overrides with Hydra's own parser: what Hydra runs, they let through."""
    from hydra.core.global_hydra import GlobalHydra

    from classwise.config import check_composition, check_group_choices

    GlobalHydra.instance().clear()  # composed here as the CLI does, not skipped as inside a Hydra app
    args = ["--cfg", "job", "debug=fast", *argv]
    check_group_choices(args)
    check_composition("train", args)
