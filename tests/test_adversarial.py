"""PGD and the adversarial setting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from classwise.attacks.pgd import pgd, robust_accuracy
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


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_stays_in_the_ball_and_raises_the_loss(trained_model, norm, eps):
    model, x, y = trained_model
    adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=10, norm=norm)
    delta = (adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())


def test_pgd_with_zero_steps_returns_the_input(trained_model):
    model, x, y = trained_model
    assert torch.equal(pgd(model, x, y, eps=0.1, step_size=0.01, steps=0), x)


def test_pgd_works_under_inference_mode(trained_model):
    model, x, y = trained_model
    with torch.inference_mode():
        adv = pgd(model, x[:8], y[:8], eps=0.1, step_size=0.05, steps=2)
    assert not torch.equal(adv, x[:8])


def test_pgd_drops_accuracy_well_below_clean(trained_model):
    model, x, y = trained_model
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    robust = robust_accuracy(model, x, y, eps=0.15, step_size=0.02, steps=20)
    assert clean > 0.9 and robust < clean - 0.4


def test_adversarial_training_run_writes_robust_acc(cli, tmp_path):
    cli("train", "debug=fast", "setting=adversarial", "setting.adversary.steps=2",
        "setting.adversary.eval_max_images=128", "search.pattern_ratios=[0.05]")
    res = read_json(tmp_path / "run" / "results.json")
    m = res["metrics"]
    assert 0 <= m["robust_acc"] <= m["clean_acc"] <= 1
    assert m["robust_attack"]["steps"] == 20 and m["robust_attack"]["eps"] == pytest.approx(0.1)
    assert res["run"]["setting"] == "adversarial" and len(res["classes"]) == 4


def test_unknown_adversarial_method_fails_fast(cli):
    proc = cli("train", "debug=fast", "setting=adversarial", "setting.adversary.method=trades", check=False)
    assert proc.returncode == 2 and "setting.adversary.method" in proc.stderr
