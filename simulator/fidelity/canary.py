"""The canary: fixed forward passes timed around every real run, against the profile, to report
how fast the shared machine runs now relative to when it was profiled."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


CANARY_SHAPES = (("target", 1, 1), ("target", 8, 5), ("draft", 8, 1))  # (model, batch, q)


@dataclass
class Canary:
    """Fixed forward passes, timed like run_real times them (wall clock), against the profile.

    Each shape runs `reps` times over a cache filled to mixed contexts (40..200 tokens, as the
    workload's); the median is divided by the profile backend's time for the same pass. The
    result is the machine's current speed relative to when it was profiled (1.0 = same; 1.2 =
    20% slower now). Used only to report drift and to discard runs taken while it moved."""

    target: object
    draft: object
    tlat: object
    dlat: object
    reps: int = 5
    seed: int = 0

    def __post_init__(self):
        import torch
        self._torch = torch
        rng = np.random.default_rng(self.seed + 17)
        self._ctx = {b: rng.integers(40, 200, size=b) for b in {b for _, b, _ in CANARY_SHAPES}}
        dev = self.target.embed.weight.device
        self._caches = {name: m.new_cache(8, 224) for name, m in (("target", self.target), ("draft", self.draft))}
        self._ids = {(b, q): torch.randint(0, self.target.shape.vocab, (b, q), device=dev,
                                           generator=torch.Generator(device=dev).manual_seed(self.seed))
                     for _, b, q in CANARY_SHAPES}
        self._sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    def __call__(self) -> dict:
        torch = self._torch
        out = {}
        with torch.inference_mode():
            for name, b, q in CANARY_SHAPES:
                model = self.target if name == "target" else self.draft
                lat = self.tlat if name == "target" else self.dlat
                cache, ctx = self._caches[name], self._ctx[b]
                slots = torch.arange(b)
                ids = self._ids[(b, q)]
                ts = []
                for i in range(self.reps + 1):
                    cache.lens[:b] = torch.as_tensor(ctx)
                    self._sync()
                    t0 = time.perf_counter()
                    model(ids, cache, slots)
                    self._sync()
                    if i:  # the first call is a warm-up
                        ts.append(time.perf_counter() - t0)
                pred = float(np.sum(lat.forward(np.full(b, q), ctx, b * q)))
                out[f"{name}_b{b}_q{q}"] = float(np.median(ts)) / pred
        out["ratio"] = float(np.exp(np.mean(np.log([v for v in out.values()]))))
        return out


def canary_drift(before: dict, after: dict) -> float:
    """Relative change of the canary ratio over a run (after / before - 1)."""
    return after["ratio"] / before["ratio"] - 1.0
