"""The profile grids: which points a capture measures, and how hard it measures each."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Grid:
    """The points a capture measures, and how hard it measures each."""

    name: str
    tokens: tuple[int, ...]  # non_attention, embedding, lm_head
    batches: tuple[int, ...]
    decode_q: tuple[int, ...]  # query tokens per sequence for decode/verify (1..gamma+1)
    prefill_q: tuple[int, ...]  # prefill chunk lengths, measured at batch 1
    contexts: tuple[int, ...]  # cached tokens, for both
    forward_points: tuple[tuple[int, int, int], ...]  # (batch, q, ctx), on the grid: overhead fit
    validation_points: tuple[tuple[int, int, int], ...]  # forward points off the grid: validation
    breakdown_tokens: tuple[int, ...]
    breakdown_attention: tuple[tuple[int, int, int], ...]
    warmup: int = 2
    min_repeats: int = 5
    max_repeats: int = 50
    budget_s: float = 0.2  # timed seconds per point beyond min_repeats
    profiler_iters: int = 3
    passes: int = 3  # timed passes over the whole grid (see _Timer.measure_points)

    def attention_points(self) -> list[tuple[int, int, int]]:
        pts = [(b, q, c) for b in self.batches for q in self.decode_q for c in self.contexts]
        pts += [(1, q, c) for q in self.prefill_q for c in self.contexts]
        return sorted(set(pts))

    def describe(self) -> dict:
        d = asdict(self)
        d["forward_points"] = [list(p) for p in self.forward_points]
        d["validation_points"] = [list(p) for p in self.validation_points]
        d["breakdown_attention"] = [list(p) for p in self.breakdown_attention]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _geo(lo: int, hi: int, steps_per_octave: int) -> tuple[int, ...]:
    """Integers from lo to hi spaced evenly in log (2 or 3 points per doubling)."""
    n = int(round(math.log2(hi / lo) * steps_per_octave)) + 1
    return tuple(sorted({int(round(v)) for v in np.geomspace(lo, hi, n)}))


GRIDS: dict[str, Grid] = {
    # Seconds on a CPU for a tiny model: tests and smoke runs.
    "quick": Grid("quick", tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), batches=(1, 2, 4, 8),
                  decode_q=(1, 2, 4), prefill_q=(32, 128), contexts=(0, 16, 64, 256),
                  forward_points=((1, 1, 16), (2, 4, 16), (4, 1, 64), (1, 128, 0)),
                  validation_points=((4, 4, 100), (6, 1, 40), (1, 48, 0)),
                  breakdown_tokens=(8, 128), breakdown_attention=((4, 1, 64),),
                  warmup=1, min_repeats=9, max_repeats=18, budget_s=0.05, profiler_iters=2, passes=3),
    # A few minutes on a CPU for a tiny model: the committed cpu-local profiles.
    "medium": Grid("medium", tokens=_geo(1, 4096, 2), batches=(1, 2, 4, 8, 16, 32),
                   decode_q=(1, 2, 4, 6, 8), prefill_q=(16, 32, 64, 128, 256, 512),
                   contexts=(0, 64, 128, 256, 512, 1024, 2048),
                   forward_points=((1, 1, 64), (2, 1, 128), (1, 4, 64), (8, 1, 256), (4, 4, 512),
                                   (32, 1, 1024), (1, 128, 0), (1, 512, 512)),
                   validation_points=((3, 1, 100), (12, 1, 700), (24, 5, 1500), (6, 3, 300), (1, 200, 300)),
                   breakdown_tokens=(1, 64, 1024), breakdown_attention=((8, 1, 512), (1, 256, 0)),
                   warmup=1, min_repeats=16, max_repeats=48, budget_s=0.2, passes=8),
    # A GPU: T up to 16k, batches up to 256, contexts up to 32k, prefill chunks up to 2048.
    "default": Grid("default", tokens=_geo(1, 16384, 2), batches=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                    decode_q=(1, 2, 4, 6, 8), prefill_q=(128, 256, 512, 1024, 2048),
                    contexts=(0, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
                    forward_points=((1, 1, 128), (2, 1, 256), (1, 4, 128), (8, 1, 1024), (16, 4, 2048),
                                    (64, 1, 1024), (1, 2048, 0), (128, 1, 4096)),
                    validation_points=((3, 1, 700), (48, 1, 3000), (24, 5, 1500), (96, 3, 6000),
                                       (1, 1500, 3000)),
                    breakdown_tokens=(1, 64, 1024, 8192),
                    breakdown_attention=((32, 1, 4096), (1, 2048, 0)),
                    warmup=3, min_repeats=10, max_repeats=100, budget_s=0.2, passes=2),
}
# The medium grid with dense contexts where attention time steps on a small CPU (its place moves
# between captures): the committed cpu-local profiles used by `specsim fidelity`.
GRIDS["medium-densectx"] = replace(
    GRIDS["medium"], name="medium-densectx", decode_q=(1, 2, 4, 5, 6, 8),
    contexts=(0, 32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 1024, 2048),
    min_repeats=12, max_repeats=36, budget_s=0.12, passes=6)
