"""Per-iteration diagnostics: the measured time of each part of a real step over what the
simulator charges for the same batch, and where the error of a sweep comes from."""
from __future__ import annotations

import numpy as np

from simulator.fidelity.config import REAL_DRAFT_FIRST_Q


def iteration_diagnostics(run, tlat, dlat, gamma: int, overhead_s: float) -> dict:
    """Measured time of each part of the real iterations over what the simulator charges for the
    same batch (the profile backend on the recorded batch composition). A ratio > 1: the real
    part was slower than predicted. `*_ratio_median` is the median over iterations (typical
    step), `*_ratio_total` the ratio of sums (what throughput sees)."""
    from simulator.latency.base import decode_steps

    it = run.iterations
    rec = {"target": ([], []), "draft": ([], []), "prefill": ([], []), "host": ([], [])}
    for r in it.itertuples(index=False):
        if r.n_prefill:
            pred = 0.0
            for L in r.prefill_lens:
                pred += float(tlat.forward(np.array([L]), np.array([0]), 1).sum())
                if dlat is not None:
                    pred += float(dlat.forward(np.array([L]), np.array([0]), 1).sum())
            rec["prefill"][0].append(r.t_prefill_target + r.t_prefill_draft)
            rec["prefill"][1].append(pred)
        if not r.batch:
            continue
        b, ctx = r.batch, np.asarray(r.ctx_lens, np.int64)
        q = 1 if dlat is None else gamma + 1
        rec["target"][0].append(r.t_target)
        rec["target"][1].append(float(tlat.forward(np.full(b, q), ctx, b * q).sum()))
        if dlat is not None:
            rec["draft"][0].append(r.t_draft)
            first = dlat.forward(np.full(b, REAL_DRAFT_FIRST_Q), ctx - (REAL_DRAFT_FIRST_Q - 1), b)
            rest = decode_steps(dlat, ctx + 1, gamma - 1, b) if gamma > 1 else 0.0
            rec["draft"][1].append(float((first + rest).sum()))
        rec["host"][0].append(r.t_accept + r.t_other)
        rec["host"][1].append(overhead_s(b) if callable(overhead_s) else overhead_s)
    out = {}
    for k, (meas, pred) in rec.items():
        if not meas:
            continue
        meas, pred = np.asarray(meas), np.asarray(pred)
        ok = pred > 0
        out[f"{k}_measured_s"] = float(meas.sum())
        out[f"{k}_predicted_s"] = float(pred.sum())
        out[f"{k}_ratio_total"] = float(meas.sum() / pred.sum()) if pred.sum() > 0 else float("nan")
        out[f"{k}_ratio_median"] = float(np.median(meas[ok] / pred[ok])) if ok.any() else float("nan")
    out["mean_batch"] = float(it.batch[it.batch > 0].mean()) if (it.batch > 0).any() else 0.0
    out["iterations"] = int(len(it))
    return out


def merge_diagnostics(diags: list[dict]) -> dict:
    """Diagnostics of repeated runs: seconds summed, ratio_total over the sums, ratio_median as
    the median of the runs' medians."""
    if len(diags) == 1:
        return diags[0]
    out = {}
    parts = {k[: -len("_measured_s")] for d in diags for k in d if k.endswith("_measured_s")}
    for p in sorted(parts):
        ds = [d for d in diags if f"{p}_measured_s" in d]
        meas = sum(d[f"{p}_measured_s"] for d in ds)
        pred = sum(d[f"{p}_predicted_s"] for d in ds)
        out[f"{p}_measured_s"], out[f"{p}_predicted_s"] = meas, pred
        out[f"{p}_ratio_total"] = meas / pred if pred > 0 else float("nan")
        out[f"{p}_ratio_median"] = float(np.median([d[f"{p}_ratio_median"] for d in ds]))
    out["mean_batch"] = float(np.mean([d["mean_batch"] for d in diags]))
    out["iterations"] = int(sum(d["iterations"] for d in diags))
    return out


def dominant_error(points: list[dict]) -> dict:
    """Which part of a step the prediction got most wrong, in seconds summed over the sweep:
    measured - predicted per part (positive: the real loop spent more than the model charges)."""
    parts = ("target", "draft", "prefill", "host")
    tot = {p: 0.0 for p in parts}
    for pt in points:
        d = pt.get("diagnostics", {})
        for p in parts:
            if f"{p}_measured_s" in d:
                tot[p] += d[f"{p}_measured_s"] - d[f"{p}_predicted_s"]
    worst = max(parts, key=lambda p: abs(tot[p]))
    return {"excess_s": tot, "largest": worst}
