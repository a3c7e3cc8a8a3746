"""Reruns and sweeps at scale: a finished folder is reused only for its own config, every swept key names
its folder, every rank logs to its own file."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from classwise.config import conf_dir
from classwise.errors import ConfigError
from classwise.train import already_done


def _finished(folder, config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"run": {"config": config}, "metrics": {"clean_acc": 0.9}}))


def test_a_finished_folder_is_reused_only_for_the_config_it_recorded(tmp_path):
    recorded = {"seed": 0, "paths": {"output_dir": "/old"}, "trainer": {"max_epochs": 2}, "logger": {"mode": "offline"}}
    _finished(tmp_path, recorded)
    same = OmegaConf.create({**recorded, "paths": {"output_dir": str(tmp_path)}, "logger": None})
    assert already_done(tmp_path, same)["metrics"]["clean_acc"] == 0.9  # where it reports is no difference
    edited = OmegaConf.create({**recorded, "trainer": {"max_epochs": 5}})
    with pytest.raises(ConfigError) as err:
        already_done(tmp_path, edited)
    message = str(err.value)
    assert "\n" not in message and "trainer.max_epochs=2, not 5" in message and "hydra.run.dir=" in message


@pytest.mark.parametrize("experiment", ["pattern_size", "natural_datasets", "cpu_demo"])
def test_every_swept_key_names_the_job_folder(experiment):
    """`-m trainer=cpu,gpu` (or debug, logger) must give two folders, not one that the second job skips."""
    names = set()
    for overrides in (["trainer=cpu"], ["trainer=gpu"], ["trainer=cpu", "debug=fast"], ["trainer=cpu", "logger=csv"]):
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *overrides],
                          return_hydra_config=True)
        names.add(cfg.hydra.job.override_dirname)
    assert len(names) == 4


def test_every_rank_logs_to_its_own_file(monkeypatch):
    from classwise.launch import rank_log_suffix

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    assert rank_log_suffix() == ""
    seen = set()
    for env in ({"RANK": "0"}, {"RANK": "3"}, {"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}, {"LOCAL_RANK": "1"},
                {"LOCAL_RANK": "1", "NODE_RANK": "1"}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            seen.add(rank_log_suffix())
    assert seen == {"", ".rank3", ".rank2", ".rank1", ".rank1.1"}
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    assert "classwise_rank_log" in OmegaConf.to_yaml(cfg.hydra.job_logging, resolve=False)


def test_an_interrupted_checkpoint_write_keeps_the_previous_file_and_fails_in_one_line(tmp_path, monkeypatch):
    import errno

    import torch

    from classwise.checkpoints import AtomicCheckpointIO
    from classwise.errors import RunFailed

    io, target = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, target)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 a quarter of a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(RunFailed) as err:
        io.save_checkpoint({"epoch": 2}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert str(target) in str(err.value) and "No space left" in str(err.value) and "\n" not in str(err.value)
    assert torch.load(target, weights_only=True) == {"epoch": 1}  # the previous checkpoint, whole
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind
