"""Decoding strategies, by name: what one engine step costs and what it emits.

STRATEGIES maps (strategy, draft placement) to a builder of the per-replica strategy object;
a new design registers itself here, and the engine never branches on names.
"""
from __future__ import annotations

from typing import Callable

from simulator.engine.strategies.base import Outcome, RunBatch, StepBatch, Strategy
from simulator.engine.strategies.dedicated import DedicatedDraftSD
from simulator.engine.strategies.sd import SpeculativeStrategy
from simulator.engine.strategies.ssd import SSDStrategy, make_ssd_strategy

__all__ = ["STRATEGIES", "DedicatedDraftSD", "Outcome", "RunBatch", "SSDStrategy", "SpeculativeStrategy",
           "StepBatch", "Strategy", "make_strategy"]


def _shared_alpha(dep) -> float | None:
    """The alpha every request shares (the samplers' fast path), or None for per-request or
    per-position acceptance."""
    acc = dep.acceptance
    return acc.alpha if acc.alpha is not None and acc.heterogeneity is None else None


def _sd(dep) -> Strategy:
    return SpeculativeStrategy(dep.target_latency, dep.draft_latency, dep.gamma, _shared_alpha(dep),
                               dep.acceptance.per_position, dep.draft_first_q)


def _sd_dedicated(dep) -> Strategy:
    return DedicatedDraftSD(dep.target_latency, dep.draft_latency, dep.gamma, dep.handshake,
                            _shared_alpha(dep), dep.acceptance.per_position)


# (strategy, draft placement) -> builder of one replica's strategy object (state is per replica).
STRATEGIES: dict[tuple[str, str | None], Callable[..., Strategy]] = {
    ("ar", None): lambda dep: Strategy(dep.target_latency),
    ("sd", "colocated"): _sd,
    ("sd", "dedicated"): _sd_dedicated,
    ("ssd", "dedicated"): lambda dep: make_ssd_strategy(dep, _shared_alpha(dep)),
}


def make_strategy(dep) -> Strategy:
    """The strategy object for one replica of a resolved deployment."""
    build = STRATEGIES.get((dep.strategy, dep.draft_placement))
    if build is None:
        raise ValueError(f"no strategy registered for {dep.strategy!r} with draft placement "
                         f"{dep.draft_placement!r}; registered: {sorted(map(str, STRATEGIES))}")
    return build(dep)
