"""Every option of every config group composes and resolves with the real train.yaml / search.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from classwise.config import conf_dir, validate
from classwise.errors import ConfigError

GROUPS = ["dataset", "model", "setting", "trainer", "logger", "callbacks", "search", "debug", "experiment", "claim"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(conf_dir()) / group).glob("*.yaml"))


def compose_train(*overrides: str, name: str = "train"):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/out"
        return cfg


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if option == "imagefolder":
        overrides += ["dataset.root=/tmp", "dataset.num_classes=3", "model=resnet50"]
    if group == "model" and option in ("vgg16_bn", "resnet50", "torchvision"):
        overrides.append("dataset=cifar10")
    if option == "custom":
        overrides.append("model._target_=tests.conftest.PlantedPatchModel")
    cfg = compose_train(*overrides)
    resolved = {k: OmegaConf.select(cfg, k) for k in cfg if k != "hydra"}
    resolved = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in resolved.items()}
    assert resolved["dataset"]["name"] and resolved["model"]["name"]
    validate(cfg)


def test_search_config_composes():
    cfg = compose_train("checkpoint=/tmp/x.ckpt", name="search")
    assert cfg.search.preset == "fast" and cfg.checkpoint == "/tmp/x.ckpt"


def test_paper_preset_has_the_authors_values():
    s = compose_train("search=paper").search
    assert (s["update"], s.step_size, s.alpha, s.batch_size, s.epochs, s.mask_init) == ("sign", 0.02, 0.2, 4, 5, 0.5)
    assert list(s.pattern_ratios) == [0.05]


@pytest.mark.parametrize("override,key", [
    ("module.optimizer.lr=0", "module.optimizer.lr"),
    ("module.optimizer.lr=-1", "module.optimizer.lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("dataset.image_size=16", "dataset.image_size"),  # vgg16_bn needs 32
])
def test_validation_names_the_key(override, key):
    cfg = compose_train("model=vgg16_bn", "dataset=cifar10", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


@pytest.mark.parametrize("overrides,key", [
    (("model=custom",), "model._target_"),
    (("model=timm", "model.input.range=0"), "model.input.range"),
    (("model=torchscript", "model.input.mean=[0.5]"), "model.input.mean"),
])
def test_audit_model_options_are_checked_before_compute(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_train(*overrides, name="search"))


def test_paper_claims_moves_the_backdoor_target_with_the_seed():
    targets = [compose_train("experiment=paper_claims", "claim=blend", f"seed={s}").setting.poisoner.target_class
               for s in (0, 1, 2)]
    assert targets == [1, 4, 7]
    adv = compose_train("experiment=paper_claims", "claim=adversarial")
    assert adv.setting.adversary.method == "fgsm_rs" and list(adv.detector) == ["universal_patch", "patterns", "neural_cleanse"]


def test_a_claim_jobs_own_setting_wins_over_the_experiments():
    # whole-image triggers train 4 epochs, every other job the experiment's 1 (claim follows experiment)
    epochs = {c: compose_train("experiment=paper_claims", f"claim={c}").trainer.max_epochs
              for c in ("natural", "badnets", "blend", "sig", "adversarial")}
    assert epochs == {"natural": 1, "badnets": 1, "blend": 4, "sig": 4, "adversarial": 1}


@pytest.mark.parametrize("claim", ["natural", "badnets", "blend", "trojan", "sig", "adversarial"])
def test_paper_claims_jobs_pass_the_checks_before_compute(claim):
    # Every job of the sweep, Neural Cleanse's settings included (they are only used after training
    # and the search, so a stale key there would fail each job minutes in).
    cfg = compose_train("experiment=paper_claims", f"claim={claim}", "seed=1")
    validate(cfg)
    from classwise.pipeline.detection_step import build_detectors

    nc = build_detectors(OmegaConf.to_container(cfg.detector, resolve=True))[-1].config(seed=1)
    assert (nc.epochs, nc.epoch_size, nc.early_stop) == (10, 320, False)
    assert cfg.threat_model == "training_data"  # the paper's setting: training canvases, said in every block


def test_an_unknown_detector_key_fails_before_compute():
    cfg = compose_train("detector=neural_cleanse", "+detector.neural_cleanse.steps=100")
    with pytest.raises(ConfigError, match=r"detector.neural_cleanse.steps is not a Neural Cleanse setting; accepted: .*epochs"):
        validate(cfg)
    cfg = compose_train("detector.universal_patch.statistic=median")
    with pytest.raises(ConfigError, match=r"detector.universal_patch.statistic='median'; accepted: auto, max_gap"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"threat_model='auditor' is unknown; accepted: clean_data, training_data"):
        validate(compose_train("threat_model=auditor"))


@pytest.mark.parametrize(("override", "message"), [
    # a wrong type: what the target's signature says it takes
    ("trigger.size=abc", r"^trigger.size='abc' cannot be taken by classwise.data.triggers.BadNets; accepted: an integer$"),
    ("setting.poisoner.rate=abc", r"^setting.poisoner.rate='abc' cannot be taken by classwise.data.poisoning.Poisoner; "
                                  r"accepted: a number$"),
    ("trainer.max_epochs=abc", r"^trainer.max_epochs='abc' cannot be taken by lightning.pytorch.Trainer; "
                               r"accepted: an integer, or null$"),
    ("trainer.max_epochs=true", r"^trainer.max_epochs=True cannot be taken by lightning.pytorch.Trainer"),
    ("+trainer.limit_train_batches=abc", r"^trainer.limit_train_batches='abc'; accepted: an integer \(batches\) or a float"),
    ("model.width=abc", r"^model.width='abc' cannot be taken by classwise.models.small_cnn.SmallCNN; accepted: an integer$"),
    ("detector.universal_patch.steps=abc", r"^detector.universal_patch.steps='abc' cannot be taken by "
                                           r"classwise.patterns.detectors.UniversalPatchDetector; accepted: an integer$"),
    ("setting.population=null", None),  # a schema key's own value: accepted
    # a key the target does not take, added with `+`
    ("+trigger.sise=3", r"^trigger.sise is not an argument of classwise.data.triggers.BadNets; did you mean trigger.size\?"),
    ("+setting.poisoner.target=1", r"^setting.poisoner.target is not an argument of classwise.data.poisoning.Poisoner"),
    # WandbLogger passes any other keyword to wandb.init, which takes only its own (a TypeError once logging starts)
    ("+logger.entity=me", None),
    ("+logger.foo=1", r"^logger.foo is not an argument of lightning.pytorch.loggers.WandbLogger"),
    ("+module.optimizer.betas=[0.5,0.9]", None),
    ("+module.optimizer.beta=0.5", r"^module.optimizer.beta is not an argument of torch.optim.Adam; did you mean "
                                   r"module.optimizer.betas\?"),
    ("+callbacks.progress.refresh=5", r"^callbacks.progress.refresh is not an argument of "
                                      r"classwise.callbacks.progress.progress_bar; did you mean callbacks.progress.refresh_rate\?"),
    ("+dataset.colour=1", r"^dataset.colour is not a key of dataset \(DatasetConfig\)"),
    ("reproducible=maybe", r"^reproducible='maybe'; accepted: true or false$"),
    # a value of the right type that the target refuses: the build's own error, still before compute
    ("model.width=-4", r"^model=small_cnn cannot be built from model.width=-4"),
    ("trigger.position=middle", r"^trigger.position='middle' is unknown; accepted: bottom_right, "),
])
def test_a_wrong_key_or_type_in_any_group_is_one_line_before_any_compute(override, message):
    """Every block that builds an object is checked against its target's signature (classwise.schemas), a
    schema's block against its dataclass, and a well-typed value the target still refuses by building it
    (cheap): one line each, not Hydra's or Lightning's traceback minutes in."""
    cfg = compose_train("setting=backdoor", override)
    if message is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_a_run_folder_not_known_yet_is_not_a_wrong_type():
    """`${paths.output_dir}` is Hydra's run folder: outside a run it raises, or reads None where an earlier
    Hydra run in the same process left its state. Either way the run fills it in; only its name is checked."""
    from classwise.schemas import check_targets

    cfg = OmegaConf.create({
        "run_dir": None,
        "callbacks": {"pattern_search": {"_target_": "classwise.callbacks.PatternSearch", "output_dir": "${run_dir}"}},
    })
    check_targets(cfg)
    cfg.callbacks.pattern_search.output_dir = None
    with pytest.raises(ConfigError, match=r"callbacks.pattern_search.output_dir=None cannot be taken"):
        check_targets(cfg)
    cfg.callbacks.pattern_search.output_dir = "${run_dir}"
    cfg.callbacks.pattern_search["output_dri"] = "${run_dir}"
    with pytest.raises(ConfigError, match=r"did you mean callbacks.pattern_search.output_dir"):
        check_targets(cfg)


@pytest.mark.parametrize("argv,flags,overrides", [
    (["--cfg", "job", "seed=1"], {"--cfg": "job"}, ["seed=1"]),
    (["-c", "hydra", "-p", "search", "seed=1"], {"-c": "hydra", "-p": "search"}, ["seed=1"]),
    (["-m", "seed=1,2", "--info"], {"-m": None, "--info": None}, ["seed=1,2"]),
    (["--info", "defaults", "seed=1"], {"--info": "defaults"}, ["seed=1"]),
    (["--info", "seed=1"], {"--info": None}, ["seed=1"]),
    (["-cn", "search", "--config-dir=/x", "a=b"], {"-cn": "search", "--config-dir": "/x"}, ["a=b"]),
    (["--info", "-m", "model=x"], {"--info": None, "-m": None}, ["model=x"]),
])
def test_hydra_flags_and_their_values_are_not_overrides(argv, flags, overrides):
    from classwise.config import split_command_line

    assert split_command_line(argv) == (flags, overrides)


def test_a_run_recorded_before_models_named_their_target_is_the_same_run():
    """results.json and checkpoints written before conf/model options had a `_target_` built the shipped
    architecture of their name: a rerun sweep skips them as finished, and the report groups them with new runs."""
    from classwise.reporting.results import first_difference

    new = OmegaConf.to_container(compose_train(), resolve=False)
    old = {**new, "model": {k: v for k, v in new["model"].items() if k != "_target_"}}
    assert new["model"]["_target_"] == "classwise.models.small_cnn.SmallCNN"
    assert first_difference(old, new) is None and first_difference(new, old) is None
    wider = {**old, "model": {**old["model"], "width": 64}}
    assert first_difference(wider, new) == ("model.width", 64, new["model"]["width"])
    other = {**new, "model": {**new["model"], "_target_": "my_pkg.Net", "name": "mine"}}
    assert first_difference(old, other)[0] == "model.name"


def test_each_baseline_runs_once_whatever_the_list_repeats():
    from classwise.patterns import BaselinesConfig

    assert BaselinesConfig(["uap", "random", "uap"]).methods == ["uap", "random"]
