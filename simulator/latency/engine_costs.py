"""A latency backend as a serving engine runs it: kernels from the wrapped backend, everything the
engine's implementation adds on top from its EngineCosts (simulator/latency/serving.py).

Per forward pass:
- the kernels (linear, attention, communication) are the wrapped backend's, priced at the
  padded token count when a captured CUDA graph pads the batch (padding costs linear and
  all-reduce work; padded rows attend over nothing);
- the backend's own per-forward overhead constant is replaced by the launch cost: one graph
  replay when the batch is captured, one launch per kernel when it runs eager;
- a verify pass under batch expansion is scored as b*(gamma+1) one-token sequences, row j of a
  sequence over its cache plus j tokens, so attention reads each cache gamma+1 times.
Per engine step (`step_cost`, charged once by the strategy): the CPU time the step exposes
(scheduling, input preparation, sampling bookkeeping; hidden behind the GPU when the engine
overlaps them), the memory-bound sampling and rejection passes of a verify step, and the
proposer's bookkeeping per draft step.

The "ideal" preset is never wrapped: the backend's own constants then apply unchanged.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from simulator.latency import serving
from simulator.latency.base import (ATTENTION, COMMUNICATION, LINEAR, decode_steps, decode_steps_many,
                                    forward_batch, forward_decode_many)


class EngineLatency:
    """`inner` (any latency backend of one model) as engine `costs` runs it. `role` is "target"
    or "draft"; `gamma` the lookahead of the deployment (0 for AR); `bandwidth` the GPU's HBM
    bytes/s for the sampling passes; `vocab` the model's vocabulary."""

    def __init__(self, inner, costs: serving.EngineCosts, *, n_layers: int, tp: int, vocab: int,
                 bandwidth: float, role: str = "target", gamma: int = 0):
        self.inner, self.costs, self.role, self.gamma = inner, costs, role, gamma
        self.n_layers, self.tp, self.vocab, self.bandwidth = n_layers, tp, vocab, bandwidth
        self.speculative = gamma > 0
        self.source = inner.source
        self.source_note = getattr(inner, "source_note", None)
        self.step_overhead_s = 0.0  # replaced by step_cost
        self._kernel_memo: dict[int, float] = {}
        self._extra_memo: dict[tuple, tuple[float, float]] = {}
        self._expand = role == "target" and costs.verify_scoring == "batch_expansion"
        self._eager = replace(costs, cuda_graphs=False)

    # ---- what the wrapped backend keeps ----------------------------------------------------
    def __getattr__(self, name):  # stats, params, peak_flops, ... of the wrapped backend
        return getattr(self.inner, name)

    @property
    def stats(self):
        return self.inner.stats

    def reset_stats(self) -> None:
        self.inner.reset_stats()

    # ---- forward passes ---------------------------------------------------------------------
    def _token_kernels(self, t: int) -> float:
        """Linear + all-reduce time of a forward over t tokens (what padding rows cost)."""
        v = self._kernel_memo.get(t)
        if v is None:
            own = getattr(self.inner, "token_kernels_s", None)
            if own is not None:
                v = own(t)
            else:
                f = self.inner.forward(np.array([t], np.int64), np.array([0], np.int64), 0)
                v = float(f[LINEAR] + f[COMMUNICATION])
            self._kernel_memo[t] = v
        return v

    def _extra(self, n_seqs: int, q: int, uniform: bool) -> tuple[float, float]:
        """(padding seconds, launch seconds) of one forward of n_seqs sequences x q tokens
        (memoised: a pure function of its arguments, called several times per step)."""
        key = (n_seqs, q, uniform)
        got = self._extra_memo.get(key)
        if got is None:
            got = self._extra_memo[key] = self._extra_of(n_seqs, q, uniform)
        return got

    def _extra_of(self, n_seqs: int, q: int, uniform: bool) -> tuple[float, float]:
        c = self.costs
        launch = serving.forward_launch_s(n_seqs, self.n_layers, c, q, self.tp, self.speculative)
        if not uniform:  # mixed prefill + decode batches are not captured whole
            if c.cuda_graphs and c.piecewise_kernels_per_layer:
                return 0.0, c.launch_s * c.piecewise_kernels_per_layer * self.n_layers
            return 0.0, serving.forward_launch_s(n_seqs, self.n_layers, self._eager, q, self.tp,
                                                 self.speculative)
        t = n_seqs * q
        tp = serving.padded_tokens(n_seqs, q, c, self.speculative)
        pad = self._token_kernels(tp) - self._token_kernels(t) if tp > t else 0.0
        return pad, launch

    def _with(self, t, pad: float, launch: float) -> tuple:
        return (t[0] + pad, t[ATTENTION], t[2], launch)

    def forward(self, q: np.ndarray, ctx: np.ndarray, n_logits: int) -> np.ndarray:
        n = q.shape[0]
        uniform = n > 0 and bool((q == q[0]).all())
        return np.array(self._with(self.inner.forward(q, ctx, n_logits),
                                   *self._extra(n, int(q[0]) if uniform else 1, uniform)))

    def forward_batch(self, q_dec: int, dec_ctx: np.ndarray, dec_ctx_sum: int, pre_q, pre_ctx,
                      n_logits: int, shift: int = 0) -> tuple:
        """latency.base.forward_batch as the engine runs it (see the module docstring)."""
        n = dec_ctx.shape[0]
        if self._expand and q_dec > 1 and n:
            # Batch expansion: each of the q_dec positions of a sequence becomes a one-token
            # sequence over the cache plus the positions before it.
            dec_ctx = (np.repeat(dec_ctx, q_dec) + np.tile(np.arange(q_dec), n)).astype(np.int64)
            dec_ctx_sum = q_dec * dec_ctx_sum + n * q_dec * (q_dec - 1) // 2
            n, q_dec = n * q_dec, 1
        t = forward_batch(self.inner, q_dec, dec_ctx, dec_ctx_sum, pre_q, pre_ctx, n_logits, shift)
        uniform = not pre_q
        rows = n + len(pre_q)
        return self._with(t, *self._extra(rows, q_dec if uniform else 1, uniform))

    def decode_steps(self, ctx: np.ndarray, steps: int, n_logits: int, ctx_sum: int | None = None,
                     start: int = 0) -> tuple:
        t = decode_steps(self.inner, ctx, steps, n_logits, ctx_sum, start)
        pad, launch = self._extra(ctx.shape[0], 1, True)
        return (t[0] + steps * pad, t[ATTENTION], t[2], steps * launch)

    def forward_decode_many(self, q_dec: int, n: int, ctx_sums: np.ndarray, n_logits: int,
                            shift: int = 0, ctx_max=None, pending=None):
        """forward_batch for each step of a run of decode steps (simulator/latency/base.py
        forward_decode_many); None when the wrapped backend cannot price a run at once."""
        if self._expand and q_dec > 1 and n:
            # The expanded rows' sums are known, their longest context is not: a backend that
            # prices from it returns None (the run is then priced step by step).
            ctx_sums = q_dec * ctx_sums + n * q_dec * (q_dec - 1) // 2
            n, q_dec, ctx_max = n * q_dec, 1, None
        t = forward_decode_many(self.inner, q_dec, n, ctx_sums, n_logits, shift, ctx_max, pending)
        return None if t is None else self._with(t, *self._extra(n, q_dec, True))

    def decode_steps_many(self, n: int, ctx_sums: np.ndarray, steps: int, n_logits: int,
                          start: int = 0, ctx_max=None):
        t = decode_steps_many(self.inner, n, ctx_sums, steps, n_logits, start, ctx_max)
        if t is None:
            return None
        pad, launch = self._extra(n, 1, True)
        return (t[0] + steps * pad, t[ATTENTION], t[2], steps * launch)

    # ---- per engine step --------------------------------------------------------------------
    def step_cost(self, n_seqs: int, n_tokens: int, n_sampled: int, n_verify: int, gamma: int,
                  gpu_s: float) -> float:
        """What one engine step adds beyond its forwards: exposed CPU time, and for a step that
        verifies n_verify sequences the sampling/rejection passes and the proposer's bookkeeping
        per draft step. gpu_s: the step's forward time (what overlapped CPU work hides behind)."""
        cpu, _, rejection, proposer = self.step_cost_terms(n_seqs, n_tokens, n_sampled, n_verify,
                                                           gamma)
        extra = serving.exposed_cpu_s(self.costs, cpu, gpu_s, self.speculative)
        if rejection is not None:
            extra += rejection
            extra += proposer
        return extra

    def step_cost_terms(self, n_seqs: int, n_tokens: int, n_sampled: int, n_verify: int,
                        gamma: int) -> tuple:
        """step_cost's terms that do not depend on the forward time: (CPU seconds, whether the
        engine overlaps them with the GPU, rejection-sampling seconds, proposer seconds), the
        last two None for a step that verifies nothing."""
        c = self.costs
        cpu = serving.cpu_step_s(c, n_seqs, n_tokens, n_sampled)
        overlap = c.cpu_overlap_sd if self.speculative else c.cpu_overlap_ar
        if not (n_verify and gamma):
            return cpu, overlap, None, None
        return (cpu, overlap, serving.rejection_sampling_s(n_verify, gamma, self.vocab,
                                                           self.bandwidth, c),
                gamma * serving.proposer_s(c, n_verify))

    def step_cost_many(self, n_seqs: int, n_tokens: int, n_sampled: int, n_verify: int,
                       gamma: int, gpu_s: np.ndarray):
        """step_cost for each step of a run (gpu_s an array over its steps), operation for
        operation."""
        c = self.costs
        cpu = serving.cpu_step_s(c, n_seqs, n_tokens, n_sampled)
        overlap = c.cpu_overlap_sd if self.speculative else c.cpu_overlap_ar
        extra = np.maximum(0.0, cpu - gpu_s) if overlap else np.full(np.shape(gpu_s), cpu)
        if n_verify and gamma:
            extra = extra + serving.rejection_sampling_s(n_verify, gamma, self.vocab,
                                                         self.bandwidth, c)
            extra = extra + gamma * serving.proposer_s(c, n_verify)
        return extra
