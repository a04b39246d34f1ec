"""A captured profile checked against itself: each whole-model forward the capture timed
directly, next to the time the measured backend composes for the same pass from the profile's
per-layer rows."""
from __future__ import annotations

import numpy as np

from simulator.errors import SpecsimError
from simulator.hardware.models import MODELS
from simulator.latency.profile import ProfileLatency
from simulator.latency.profiles import Profile


def validation_table(profile: Profile) -> list[dict]:
    """Directly timed forward rows vs the measured backend's composition of the same pass."""
    model = MODELS[profile.meta.model]
    backend = ProfileLatency(profile, model, None, profile.meta.tp, profile.meta.dtype)
    grid = profile.meta.grid if isinstance(profile.meta.grid, dict) else {}
    fit = {tuple(p) for p in grid.get("forward_points", [])}
    out = []
    for r in profile.select("forward"):
        q, ctx = np.full(r.batch, r.q), np.full(r.batch, r.ctx)
        try:
            composed = float(backend.forward(q, ctx, r.batch * r.q).sum())
        except SpecsimError:
            continue  # outside the grid (e.g. a skipped attention point)
        out.append({"role": "overhead fit" if (r.batch, r.q, r.ctx) in fit else "validation",
                    "batch": r.batch, "q": r.q, "ctx": r.ctx, "direct_s": r.median_s,
                    "composed_s": composed, "error": composed / r.median_s - 1.0})
    return out
