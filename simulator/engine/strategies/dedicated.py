"""Standard SD with the draft on its own GPU(s) (`draft_placement: dedicated`): per round the
draft's gamma steps, the handshake and the target's verify run in sequence."""
from __future__ import annotations

from simulator.engine.strategies.base import Outcome, StepBatch, Strategy
from simulator.engine.strategies.sd import SpeculativeStrategy
from simulator.latency.base import LatencyModel, charge, total
from simulator.physics.handshake import Handshake
from simulator.physics.rounds import sd_round


class DedicatedDraftSD(SpeculativeStrategy):
    """Standard SD with the draft on its own GPU(s) (`draft_placement: dedicated`): no
    pre-speculation, so per round draft (gamma steps) + handshake + verify, in sequence. Steps
    with only prompt chunks run them on both GPUs at once."""

    name = "sd"

    def __init__(self, target: LatencyModel, draft: LatencyModel, gamma: int,
                 handshake: Handshake, alpha: float | None = None,
                 per_position: list[float] | None = None):
        super().__init__(target, draft, gamma, alpha, per_position)
        self.handshake = handshake

    def prefill_only(self, b: StepBatch) -> float:
        """A step with only prompt chunks: both GPUs prefill them at once."""
        d = self._draft_forward(1, b.dec_ctx, b.dec_ctx_sum, b.pre_q, b.pre_ctx, b.n_pre_done)
        return max(self.target_time(b), charge(self.draft_busy, d))

    def step_time(self, b: StepBatch, out: Outcome) -> float:
        if b.n_dec == 0:
            return self.prefill_only(b)
        return sd_round(self.draft_time(b), self.target_time(b),
                        handshake_s=self.handshake.time(b.n_dec))

    def run_times_many(self, r):
        d = self._draft_many(r)
        t = None if d is None else self._target_many(r)
        if t is None:
            return None
        return (sd_round(total(d), total(t), handshake_s=self.handshake.time(r.n)),
                {"target": t, "draft": d})

    def summary(self, replicas: list[Strategy], duration: float) -> dict:
        busy = sum(sum(s.draft_busy) for s in replicas)
        return {"draft_gpu_busy_fraction": busy / (len(replicas) * duration) if duration > 0 else 0.0}
