"""Ideal backend: SDSL's cost model (MODEL.md section 5), for checking against closed forms.

Every forward pass of a model costs 2 * params / peak FLOPs, whatever its batch and however many
query tokens it carries: one target pass verifies gamma+1 tokens for the price of one. With
this backend SD's batch-1 speedup is Leviathan's formula and tokens per FLOP equal SDSL's T(gamma).
"""
from __future__ import annotations

import numpy as np

from simulator.hardware.gpus import GPU
from simulator.hardware.models import ModelArch
from simulator.latency.base import Stateless


class IdealLatency(Stateless):
    source = "law"
    source_note = "SDSL cost model: time proportional to FLOPs (MODEL.md section 5)"
    step_overhead_s = 0.0

    def __init__(self, model: ModelArch, gpu: GPU, tp: int = 1, dtype: str = "bf16"):
        self.peak_flops = gpu.peak_flops(dtype) * tp
        self.flops_per_forward = 2.0 * model.params
        self._t = np.array([self.flops_per_forward / self.peak_flops, 0.0, 0.0, 0.0])

    def forward(self, q: np.ndarray, ctx: np.ndarray, n_logits: int) -> np.ndarray:
        return self._t.copy()

    def decode_steps(self, ctx: np.ndarray, steps: int, n_logits: int,
                     ctx_sum: int | None = None, start: int = 0) -> np.ndarray:
        return self._t * steps

    def forward_decode_many(self, q_dec, n, ctx_sums, n_logits, shift=0, ctx_max=None,
                            pending=None) -> tuple:
        """Every step of a run costs one forward (simulator/latency/base.py forward_decode_many)."""
        return tuple(self._t.tolist())

    def decode_steps_many(self, n, ctx_sums, steps, n_logits, start=0, ctx_max=None) -> tuple:
        return tuple((self._t * steps).tolist())
