"""L-infinity and L2 PGD (Madry et al. 2018) in [0, 1] pixel space; FGSM with random start is PGD with one step."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from classwise.errors import ConfigError

NORMS = ("linf", "l2")
MODES = ("eval", "train")


def _l2_normalise(v: torch.Tensor) -> torch.Tensor:
    return v / v.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *[1] * (v.ndim - 1))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / delta.flatten(1).norm(dim=1).clamp(min=1e-12)).clamp(max=1.0)
    return delta * scale.view(-1, *[1] * (delta.ndim - 1))


@dataclass(frozen=True)
class PGDBudget:
    """What one attack may do: `steps` steps of `step_size` inside the `norm` ball of radius `eps`
    (and [0, 1]), from a uniform random point of the ball (`random_start`) or from the input."""

    eps: float
    step_size: float
    steps: int
    norm: str = "linf"
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"attack norm={self.norm!r} is unknown; accepted: {', '.join(NORMS)}")
        if self.eps < 0 or self.step_size < 0 or self.steps < 0:
            raise ConfigError(f"attack eps={self.eps}, step_size={self.step_size}, steps={self.steps} must be >= 0")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    budget: PGDBudget,
    generator: torch.Generator | None = None,
    mode: str = "eval",
) -> torch.Tensor:
    """Untargeted PGD examples for (x, y): maximise cross-entropy inside the `budget`'s ball and [0, 1].

    `mode`: `eval` for evaluation attacks (the deployed function: batch norm on running
    statistics, no dropout); `train` for adversarial training, which must attack the function
    being trained (batch norm on the batch's own statistics, as in the training step). In `train`
    mode the running statistics are put back afterwards, so only the training step's own forward
    moves them. The model's mode is restored in `finally`, also when the attack raises. No
    gradient reaches the weights; works inside Lightning's inference mode too.
    """
    if mode not in MODES:
        raise ConfigError(f"attack mode={mode!r} is unknown; accepted: {', '.join(MODES)}")
    was_training = model.training
    model.train(mode == "train")
    # Batch-norm running statistics (and counters) to put back after a train-mode attack.
    saved = {k: b.clone() for k, b in model.named_buffers()} if mode == "train" else {}
    try:
        return _pgd_steps(model, x, y, budget, generator)
    finally:
        if saved:
            with torch.no_grad():
                for k, b in model.named_buffers():
                    b.copy_(saved[k])
        model.train(was_training)


def _pgd_steps(model, x, y, budget: PGDBudget, generator) -> torch.Tensor:
    eps, norm = budget.eps, budget.norm
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()
        y = y.detach().clone()
        delta = torch.zeros_like(x)
        if budget.random_start and budget.steps > 0 and eps > 0:
            noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
            if norm == "linf":
                delta = (2 * noise - 1) * eps
            else:
                delta = _l2_normalise(torch.randn(x.shape, generator=generator).to(x.device)) * eps * noise.flatten(1)[:, :1].view(-1, *[1] * (x.ndim - 1))
            delta = (x + delta).clamp(0, 1) - x
        for _ in range(budget.steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                step = grad.sign() if norm == "linf" else _l2_normalise(grad)
                delta = _project(delta + budget.step_size * step, eps, norm)
                delta = (x + delta).clamp(0, 1) - x
        return (x + delta).detach()


@torch.no_grad()
def robust_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    budget: PGDBudget,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Accuracy under the `budget`'s PGD on images [N, C, H, W] (the random starts seeded by `seed`)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    correct = 0
    was_training = model.training
    try:
        for i in range(0, len(images), batch_size):
            x, y = images[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)
            adv = pgd(model, x, y, budget, g)
            model.eval()
            correct += int((model(adv).argmax(1) == y).sum())
    finally:
        model.train(was_training)
    return correct / max(1, len(images))


class AdversarialTraining:
    """The adversarial setting: training examples from PGD or FGSM-RS, and PGD-20 robust accuracy.

    `method`: `pgd` (Madry et al.: `steps` steps of `step_size`) or `fgsm_rs` (Wong et al. 2020:
    one step of `fgsm_step` from a random start in the eps-ball).
    """

    METHODS = ("pgd", "fgsm_rs")

    def __init__(self, method: str = "pgd", eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 10,
                 fgsm_step: float | None = None, norm: str = "linf", eval_steps: int = 20,
                 eval_step_size: float | None = None, eval_max_images: int | None = 2000, seed: int = 0):
        if method not in self.METHODS:
            raise ConfigError(f"setting.adversary.method={method!r} is unknown; accepted: {', '.join(self.METHODS)}")
        if norm not in NORMS:
            raise ConfigError(f"setting.adversary.norm={norm!r} is unknown; accepted: {', '.join(NORMS)}")
        if not eps > 0 or not step_size > 0 or steps < 1:
            raise ConfigError(f"setting.adversary eps={eps}, step_size={step_size}, steps={steps}: accepted eps > 0, step_size > 0, steps >= 1")
        self.method = method
        fgsm_step = fgsm_step if fgsm_step is not None else 1.25 * eps
        # The training attack; FGSM-RS is PGD with one step of fgsm_step.
        self.attack = PGDBudget(eps, fgsm_step, 1, norm) if method == "fgsm_rs" else PGDBudget(eps, step_size, steps, norm)
        self.eval_attack = PGDBudget(eps, eval_step_size if eval_step_size is not None else 2.5 * eps / eval_steps,
                                     eval_steps, norm)
        self.eval_max_images = eval_max_images
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed

    def training_examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack on the function being trained: train mode (see `pgd`'s `mode`)."""
        return pgd(model, x, y, self.attack, self.generator, mode="train")

    def attack_settings(self) -> dict:
        return asdict(self.eval_attack)

    def evaluate(self, model: nn.Module, dm) -> dict:
        """`robust_acc`: PGD accuracy on the test set (the first `eval_max_images` of it)."""
        images, labels = dm.source.test.batch(torch.arange(len(dm.source.test))[: self.eval_max_images])
        acc = robust_accuracy(model, images, labels, self.eval_attack, seed=self.seed)
        return {"robust_acc": acc, "robust_attack": {**self.attack_settings(), "images": len(labels)}}


def robust_evaluation(adversarial: Mapping[str, Any], seed: int) -> AdversarialTraining:
    """The `robust_eval=true` evaluation of a naturally trained model: PGD robust accuracy at the
    dataset's `adversarial` budget (`eps`, `step_size`, `steps`), through the same `evaluate` an
    adversarially trained model reports with, so the two settings' numbers compare."""
    return AdversarialTraining(eps=adversarial["eps"], step_size=adversarial["step_size"], steps=adversarial["steps"],
                               seed=seed)
