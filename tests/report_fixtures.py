"""Synthetic results for the report tests: many sites and units without running a model."""

from __future__ import annotations

import numpy as np

from deadrelu.judge.verdicts import judge_site
from deadrelu.result import ScanResult, SiteResult, Summary
from deadrelu.settings import ScanSettings
from deadrelu.stats import SiteStats

KINDS = ("ReLU", "ELU", "LeakyReLU", "ReLU6", "SELU", "PReLU")
SATURATION = {"ELU": "floor", "SELU": "floor", "ReLU6": "bounds"}


def synthetic_stats(units: int, dead: int, observations: int = 1000, saturated: int = 0,
                    rng: np.random.Generator | None = None) -> SiteStats:
    """Per-unit statistics with exactly ``dead`` never-active units (the first ones) and ``saturated``
    units at the floor (the next ones); the rest are active on a random share of observations."""
    rng = rng or np.random.default_rng(0)
    obs = np.full(units, float(observations))
    rate = rng.uniform(0.05, 0.95, units)
    rate[:dead] = 0.0
    active = np.round(rate * observations)
    active[dead:] = np.maximum(active[dead:], 1.0)
    at_floor = np.zeros(units)
    at_floor[dead:dead + saturated] = observations
    mean_abs = rng.uniform(0.2, 2.0, units)
    mean_abs[:dead] = 0.0
    total = mean_abs * observations * rate
    return SiteStats(observations=obs, active=active, total=total, total_sq=total * 2.0,
                     total_abs=mean_abs * observations, minimum=np.where(rate > 0, -0.5, 0.0),
                     maximum=np.where(rate > 0, 3.0, 0.0), at_floor=at_floor, at_ceiling=np.zeros(units),
                     nonfinite=np.zeros(units))


def synthetic_result(sites: int = 150, units: int = 64, seed: int = 0, names: list[str] | None = None,
                     dead_growing: bool = True) -> ScanResult:
    """``sites`` sites of ``units`` units; site k has ``k % units`` dead units when ``dead_growing``."""
    rng = np.random.default_rng(seed)
    settings = ScanSettings()
    built = []
    for k in range(sites):
        kind = KINDS[k % len(KINDS)]
        saturation = SATURATION.get(kind)
        dead = (k * units // max(sites, 1)) if dead_growing else 0
        stats = synthetic_stats(units, dead, saturated=3 if saturation == "floor" else 0, rng=rng)
        name = names[k] if names else f"blocks.{k // 3}.layer{k % 3}.act"
        built.append(SiteResult(name=name, module=name, call_index=0, function=None, kind=kind, unit_dim=1,
                                stats=stats, verdict=judge_site(stats, saturation, settings.thresholds),
                                saturation=saturation,
                                prelu_slopes={"min": -0.2, "mean": 0.2, "max": 0.3, "count": units, "nonpositive": 2}
                                if kind == "PReLU" else None))
    return ScanResult(sites=tuple(built), summary=Summary.of(built), settings=settings,
                      model={"source": "synthetic.pt", "format": "state_dict", "parameters": 123, "class": "Synth",
                             "sha256": "ab" * 32},
                      data={"source": "synthetic.npy", "samples": 1000, "nonfinite": 0, "sha256": "cd" * 32},
                      environment={"deadrelu": "0.1.0", "torch": "2.13.0", "device": "cpu",
                                   "date": "2025-01-01T00:00:00+00:00"})
