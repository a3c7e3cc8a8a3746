"""PGD and the adversarial setting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from classwise.attacks.pgd import (
    AdversarialTraining,
    PGDBudget,
    pgd,
    robust_accuracy,
    robust_evaluation,
)
from classwise.data.synthetic import make_synthetic
from tests.conftest import read_json


@pytest.fixture(scope="module")
def trained_model():
    """A small CNN trained for a few seconds on synthetic data (about 100% clean accuracy)."""
    torch.manual_seed(0)
    tr_x, tr_y, te_x, te_y = make_synthetic(1200, 300, 16, 1, 4, seed=0)
    tr_x, te_x = tr_x.float() / 255, te_x.float() / 255
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 64, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        for i in range(0, 1200, 100):
            opt.zero_grad()
            F.cross_entropy(model(tr_x[i : i + 100]), tr_y[i : i + 100]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), te_x, te_y


class _BNNet(torch.nn.Module):
    """Conv + BatchNorm; records the batch norm's mode at every forward, raises on call `fail_at`."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.fc = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Linear(4 * 64, 3)
        self.modes: list[bool] = []
        self.fail_at = fail_at

    def forward(self, x):
        self.modes.append(self.bn.training)
        if self.fail_at is not None and len(self.modes) >= self.fail_at:
            raise RuntimeError("forward failed")
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def _bn_batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("start_training", [True, False])
def test_training_attack_runs_in_train_mode_and_restores_mode_and_statistics(start_training):
    model = _BNNet().train(start_training)
    x, y = _bn_batch()
    before = {k: b.clone() for k, b in model.named_buffers()}
    adv = AdversarialTraining(method="pgd", eps=0.1, step_size=0.05, steps=3).training_examples(model, x, y)
    assert model.modes == [True] * 3  # every attack forward saw batch statistics, as in the training step
    assert model.training is start_training and model.bn.training is start_training
    assert all(torch.equal(b, before[k]) for k, b in model.named_buffers())  # running stats untouched
    assert (adv - x).abs().max() <= 0.1 + 1e-6


def test_evaluation_attack_runs_in_eval_mode_and_restores_train_mode():
    model = _BNNet().train()
    x, y = _bn_batch()
    pgd(model, x, y, PGDBudget(eps=0.1, step_size=0.05, steps=2))
    assert model.modes == [False, False] and model.training and model.bn.training


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("start_training", [True, False])
def test_attack_restores_mode_and_statistics_when_the_forward_raises(mode, start_training):
    model = _BNNet(fail_at=2).train(start_training)
    x, y = _bn_batch()
    before = {k: b.clone() for k, b in model.named_buffers()}
    with pytest.raises(RuntimeError, match="forward failed"):
        pgd(model, x, y, PGDBudget(eps=0.1, step_size=0.05, steps=3), mode=mode)
    assert model.training is start_training and model.bn.training is start_training
    assert all(torch.equal(b, before[k]) for k, b in model.named_buffers())


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_stays_in_the_ball_and_raises_the_loss(trained_model, norm, eps):
    model, x, y = trained_model
    adv = pgd(model, x, y, PGDBudget(eps=eps, step_size=eps / 4, steps=10, norm=norm))
    delta = (adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())


def test_pgd_with_zero_steps_returns_the_input(trained_model):
    model, x, y = trained_model
    assert torch.equal(pgd(model, x, y, PGDBudget(eps=0.1, step_size=0.01, steps=0)), x)


def test_pgd_works_under_inference_mode(trained_model):
    model, x, y = trained_model
    with torch.inference_mode():
        adv = pgd(model, x[:8], y[:8], PGDBudget(eps=0.1, step_size=0.05, steps=2))
    assert not torch.equal(adv, x[:8])


def test_pgd_drops_accuracy_well_below_clean(trained_model):
    model, x, y = trained_model
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    robust = robust_accuracy(model, x, y, PGDBudget(eps=0.15, step_size=0.02, steps=20))
    assert clean > 0.9 and robust < clean - 0.4


def test_robust_evaluation_reads_the_dataset_budget_from_a_config_or_a_checkpoint_dict():
    """classwise-train passes cfg.dataset.adversarial, classwise-search the dict a checkpoint stored."""
    from omegaconf import OmegaConf

    budget = {"eps": 0.1, "step_size": 0.025, "steps": 5}
    settings = [robust_evaluation(b, seed=3).attack_settings() for b in (budget, OmegaConf.create(budget))]
    assert settings[0] == settings[1] == {"norm": "linf", "eps": 0.1, "step_size": pytest.approx(2.5 * 0.1 / 20),
                                          "steps": 20, "random_start": True}


def test_adversarial_training_run_writes_robust_acc(cli, tmp_path):
    cli("train", "debug=fast", "setting=adversarial", "setting.adversary.steps=2",
        "setting.adversary.eval_max_images=128", "search.pattern_ratios=[0.05]")
    res = read_json(tmp_path / "run" / "results.json")
    m = res["metrics"]
    assert 0 <= m["robust_acc"] <= m["clean_acc"] <= 1
    assert m["robust_attack"]["steps"] == 20 and m["robust_attack"]["eps"] == pytest.approx(0.1)
    assert res["run"]["setting"] == "adversarial" and len(res["classes"]) == 4


def test_unknown_adversarial_method_fails_fast(refused):
    proc = refused("train", "debug=fast", "setting=adversarial", "setting.adversary.method=trades")
    assert proc.returncode == 2 and "setting.adversary.method" in proc.stderr
