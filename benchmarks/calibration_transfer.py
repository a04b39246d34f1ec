"""Calibrate the roofline on Vidur's H100 data, predict Vidur's A100 data, print per-op errors.

    .venv/bin/python benchmarks/calibration_transfer.py [VIDUR_PROFILING_DIR]

For every Vidur model measured on both GPUs, each per-layer operator of the A100 profile is
compared with the roofline term that stands for it (simulator.measure.calibrate.VIDUR_OPS), under:
  defaults      RooflineParams() as shipped
  H100 fit      efficiencies and the per-layer fixed cost calibrated on the H100 data, carried
                to the A100 by its datasheet (what a scenario on a GPU without a profile gets:
                derived_params)
  A100 fit      calibrated on the A100 data itself (in-sample reference: the best the roofline's
                shape can do)
The per-operator rows leave the per-layer cost out (it is not split among operators), so the
fits' operator rows read low by design; non_attention rows include it.
Errors are |predicted / measured - 1| over every measured point: median and max, then the median
signed error (bias: negative = the roofline predicts too little). The A100 data
has attention rows (Llama-2-70B shape, tp 2); the H100 data has none, so the H100 fit leaves
attention_compute_efficiency at its default there.
A figure for the closing note, not a timed test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from simulator.measure.calibrate import (TERMS, VIDUR_OPS, attention_time, calibrate_full,
                                         distinct_measurements, layer_terms, profile_model)
from simulator.hardware.gpus import GPUS
from simulator.latency.roofline import RooflineParams
from simulator.measure.vidur import import_vidur

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "vidur" / "profiling"
SMALL_T = 256  # decode / verify-sized batches


def _op_table(profile, op_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """tokens, summed medians of the op:<name> rows of the non-attention points."""
    by_t: dict[int, float] = {}
    counts: dict[int, int] = {}
    for r in profile.rows:
        if r.op.startswith("op:") and r.op[3:] in op_names and r.batch == 0:
            by_t[r.tokens] = by_t.get(r.tokens, 0.0) + r.median_s
            counts[r.tokens] = counts.get(r.tokens, 0) + 1
    present = {n for n in op_names if any(r.op == f"op:{n}" for r in profile.rows)}
    keep = sorted(t for t in by_t if counts[t] == len(present))
    return np.array(keep, dtype=float), np.array([by_t[t] for t in keep])


def main(vidur: Path) -> None:
    profiles = import_vidur(vidur, gpus=["h100", "a100"], breakdown=True,
                            command="benchmarks/calibration_transfer.py")
    h100 = [p for p in profiles if p.meta.gpu == "h100-sxm"]
    a100 = [p for p in profiles if p.meta.gpu == "a100-80gb-sxm"]
    both = {p.meta.notes["vidur_model"] for p in h100} & {p.meta.notes["vidur_model"] for p in a100}
    # one per measurement: the importer also writes a model's data under catalogue models with
    # its layers (simulator/measure/vidur_files.py)
    targets = distinct_measurements([p for p in a100 if p.meta.notes["vidur_model"] in both])
    for p in h100 + a100:
        p.csv_path = Path(f"<vidur {p.meta.notes['vidur_gpu']}>/{p.meta.model}/tp{p.meta.tp}")
    cal_h, cal_a = calibrate_full(h100), calibrate_full(a100)
    variants = {  # params, and the per-layer fixed cost added to each layer's non-attention time
        "defaults": (RooflineParams(), 0.0),
        "H100 fit": (cal_h.params, cal_h.params.layer_overhead_s),
        "A100 fit": (cal_a.params, cal_a.params.layer_overhead_s),
    }
    gpu = GPUS["a100-80gb-sxm"]
    rel: dict[str, dict[str, list[np.ndarray]]] = {v: {} for v in variants}
    for p in targets:
        m, tp, dt = profile_model(p), p.meta.tp, p.meta.dtype
        tabs = {term: _op_table(p, VIDUR_OPS[term]) for term in TERMS}
        na = p.table("non_attention")
        att = p.table("attention")
        for v, (params, layer_c) in variants.items():
            for term, (t, y) in tabs.items():
                pred = layer_terms(m, gpu, tp, dt, params, t)[term]
                rel[v].setdefault(term, []).append(pred / y - 1)
            t, y = na["tokens"].astype(float), na["median_s"]
            pred = sum(layer_terms(m, gpu, tp, dt, params, t).values()) + layer_c
            rel[v].setdefault("non_attention", []).append(pred / y - 1)
            small = t <= SMALL_T
            rel[v].setdefault(f"non_attention T<={SMALL_T}", []).append((pred / y - 1)[small])
            rel[v].setdefault(f"non_attention T>{SMALL_T}", []).append((pred / y - 1)[~small])
            if len(att["batch"]):
                pred = attention_time(m, gpu, tp, dt, params, att["batch"], att["q"], att["ctx"])
                key = "attention (decode)"
                dec = att["q"] == 1
                rel[v].setdefault(key, []).append((pred / att["median_s"] - 1)[dec])
                rel[v].setdefault("attention (prefill)", []).append((pred / att["median_s"] - 1)[~dec])
        for v in variants:  # all five operator groups pooled
            rel[v].setdefault("all ops", []).append(np.concatenate([rel[v][t][-1] for t in TERMS]))

    rows = [*TERMS, "all ops", "non_attention", f"non_attention T<={SMALL_T}",
            f"non_attention T>{SMALL_T}", "attention (decode)", "attention (prefill)"]
    print(f"Roofline calibrated on Vidur H100 data ({len(cal_h.sources)} distinct profiles), predicting "
          f"Vidur A100 data ({len(targets)} profiles of {len(both)} models measured on both: "
          f"{', '.join(sorted(both))}).")
    print("|predicted/measured - 1| over all measured points: median / max / median signed (bias)\n")
    head = f"{'operator':<24}{'points':>8}" + "".join(f"{v:>26}" for v in variants)
    print(head)
    print("-" * len(head))
    for r in rows:
        cells, n = [], None
        for v in variants:
            parts = rel[v].get(r)
            if not parts:
                cells.append(f"{'-':>26}")
                continue
            signed = np.concatenate(parts)
            e = np.abs(signed)
            n = len(e)
            cells.append(f"{np.median(e):>10.3f} / {np.max(e):.3f} / {np.median(signed):+.2f}")
        print(f"{r:<24}{n if n is not None else '-':>8}" + "".join(cells))
    print()
    for name, cal in (("H100", cal_h), ("A100", cal_a)):
        p = cal.params
        print(f"{name} fit: compute_efficiency={p.compute_efficiency:.3f} memory_efficiency="
              f"{p.memory_efficiency:.3f} attention_compute_efficiency={p.attention_compute_efficiency:.3f}"
              f" ({'fitted' if 'attention_compute_efficiency' in cal.fitted else 'default'}), "
              f"layer_overhead_s={p.layer_overhead_s * 1e6:.1f} us")
    print("Operator groups: " + "; ".join(f"{t} = {' + '.join(VIDUR_OPS[t])}" for t in TERMS))


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("vidur_dir", nargs="?", type=Path, default=DEFAULT_DIR,
                    help=f"Vidur's profiling directory (default {DEFAULT_DIR})")
    main(ap.parse_args().vidur_dir)
