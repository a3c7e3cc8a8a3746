"""Model populations for scoring detectors: each member's recipe (clean, or one random backdoor) from its index."""

from __future__ import annotations

import random
from typing import Any

from classwise.errors import ConfigError

# Disjoint training seeds per population: `dev` is for choosing and tuning detectors, `test` only for reporting.
POPULATIONS = {"dev": 10_000, "test": 20_000}
FAMILIES = ("badnets", "trojan", "blend", "wanet")


def check_population(population: str, member: int) -> None:
    if population not in POPULATIONS:
        raise ConfigError(f"population.name={population!r} is unknown; accepted: {', '.join(POPULATIONS)}")
    if not 0 <= int(member) < 10_000:
        raise ConfigError(f"population.member={member}; accepted: 0..9999")


def member_seed(population: str, member: int) -> int:
    """The training seed of a member (its splits, init and batch order): disjoint between populations."""
    check_population(population, member)
    return POPULATIONS[population] + int(member)


def recipe(population: str, member: int, image_size: int, num_classes: int) -> dict[str, Any]:
    """What member `member` of `population` is: even members clean, odd ones backdoored with a random
    target class, trigger family, trigger parameters and poisoning rate (all drawn from the index).

    Clean and backdoored members share everything else (data, architecture, schedule, seed scheme),
    so the poison is the only feature that tells them apart.
    """
    check_population(population, member)
    rng = random.Random(f"classwise-population:{population}:{int(member)}")
    if int(member) % 2 == 0:
        return {"backdoored": False}
    family = rng.choice(FAMILIES)
    rate = round(rng.uniform(0.03, 0.15), 3)
    target = rng.randrange(num_classes)
    if family in ("badnets", "trojan"):
        size = rng.randint(2, 5) if family == "badnets" else rng.randint(3, 6)
        params: dict[str, Any] = {"size": size, "position": [rng.randint(0, image_size - size), rng.randint(0, image_size - size)]}
        if family == "badnets":
            params |= {"content": rng.choice(("white", "checkerboard", "random")), "seed": rng.randrange(10**6)}
    elif family == "blend":
        params = {"alpha": round(rng.uniform(0.08, 0.2), 3), "seed": rng.randrange(10**6)}
    else:
        params = {"k": rng.choice((4, 6)), "strength": round(rng.uniform(1.0, 2.0), 2), "seed": rng.randrange(10**6)}
    return {"backdoored": True, "family": family, "target_class": target, "rate": rate, "trigger": params}


def population_poisoner(population: str, member: int, image_size: int, channels: int, num_classes: int):
    """The member's Poisoner (None for a clean member): what `setting=population` instantiates."""
    from classwise.data import triggers
    from classwise.data.poisoning import Poisoner

    r = recipe(population, member, image_size, num_classes)
    if not r["backdoored"]:
        return None
    cls = {"badnets": triggers.BadNets, "trojan": triggers.Trojan, "blend": triggers.Blend, "wanet": triggers.WaNet}
    trigger = cls[r["family"]](image_size, channels, **r["trigger"])
    return Poisoner(trigger, r["target_class"], r["rate"], num_classes)
