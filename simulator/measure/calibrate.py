"""Fit the roofline's efficiencies to measured profiles (saved and carried to other GPUs by
simulator/latency/calibration.py).

`calibrate(profiles)` fits, by least squares on the log of predicted / measured time:
  - compute_efficiency and memory_efficiency on the per-layer non_attention rows, each point
    weighted by its share of the log(tokens) axis so that decode-sized and prefill-sized batches
    count alike (the Vidur grid is linear above 256 tokens and would otherwise be all prefill);
  - attention_compute_efficiency on the attention rows, where the profile has any (memory
    efficiency held at its non-attention value).
  - with them, a per-layer fixed cost (RooflineParams.layer_overhead_s): small-batch kernel floors,
    a few microseconds per kernel and ~10 kernels a layer, which no bandwidth term captures
    (on Vidur's H100 data the median error at T <= 256 tokens falls from 15% to 6% with it);
    `layer_overhead_fit` records that fit and its residuals.
Everything else stays at its RooflineParams default.

The per-layer predictions come from `layer_terms` / `attention_time`, pure functions that
reproduce RooflineLatency's arithmetic (tests check they agree with RooflineLatency.forward).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np

from simulator.hardware.gpus import GPU, GPUS
from simulator.hardware.models import MODELS, ModelArch
from simulator.errors import SpecsimError, did_you_mean
from simulator.latency.calibration import (FITTED_ATTENTION, FITTED_NON_ATTENTION,
                                           HAS_LAYER_OVERHEAD, Calibration)
from simulator.latency.roofline import GEMM_TERMS, RooflineLatency, RooflineParams
from simulator.latency.profiles import Profile, load_profile

SMALL_T = 256  # residuals are also reported for decode/verify-sized batches (T <= 256) apart
# Roofline terms of one layer's non-attention work (GEMM_TERMS from latency/roofline.py).
TERMS = (*GEMM_TERMS, "elementwise")
# Which Vidur / profiler operators each roofline term stands for (for per-operator reports).
VIDUR_OPS = {"qkv": ("attn_pre_proj",), "o": ("attn_post_proj",), "mlp_up": ("mlp_up_proj",),
             "mlp_down": ("mlp_down_proj",),
             "elementwise": ("input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act",
                             "add")}


# ---- the roofline, per layer ---------------------------------------------------------------------

def layer_terms(model: ModelArch, gpu: GPU, tp: int, dtype: str, params: RooflineParams,
                tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Seconds of each non-attention term of ONE layer at T = tokens (RooflineLatency's own)."""
    return RooflineLatency(model, gpu, tp, dtype, params).layer_terms(tokens)


def attention_time(model: ModelArch, gpu: GPU, tp: int, dtype: str, params: RooflineParams,
                   batch: np.ndarray, q: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """Seconds of one layer's attention for `batch` sequences of q query tokens over ctx cached."""
    b, q, ctx = (np.asarray(x, dtype=float) for x in (batch, q, ctx))
    return RooflineLatency(model, gpu, tp, dtype, params).uniform_attention(b, q, ctx)


# ---- what a profile is a profile of ----------------------------------------------------------------

def profile_model(profile: Profile) -> ModelArch:
    """The architecture of a profile's model: the catalogue's, or the Vidur shape in its notes."""
    name = profile.meta.model
    if name in MODELS:
        return MODELS[name]
    notes = profile.meta.notes
    shape = notes.get("vidur_shape") if isinstance(notes, dict) else None
    if not isinstance(shape, dict):
        raise SpecsimError(f"{profile.csv_path}: model {name!r} is not in the catalogue and the "
                           f"sidecar's notes carry no 'vidur_shape' to build it from")
    try:
        return ModelArch(name, "llama", 1, int(shape["n_embd"]), int(shape["n_head"]),
                         int(shape["n_kv_head"]), int(shape["n_embd"]) // int(shape["n_head"]),
                         int(shape["n_expanded_embd"]), int(shape["vocab_size"]), 0.0,
                         gated_mlp=bool(shape["use_gated_mlp"]))
    except (KeyError, TypeError, ValueError) as e:
        raise SpecsimError(f"{profile.csv_path}: notes.vidur_shape is incomplete ({e}); expected "
                           f"n_head, n_kv_head, n_embd, n_expanded_embd, vocab_size, use_gated_mlp") from None


def profile_gpu(profile: Profile) -> GPU:
    name = profile.meta.gpu
    if name not in GPUS:
        raise SpecsimError(f"{profile.csv_path}: gpu {name!r} is not in the GPU catalogue"
                           f"{did_you_mean(name, GPUS)}; calibration needs its datasheet (one of "
                           f"{', '.join(GPUS)})")
    return GPUS[name]


# ---- fitting ---------------------------------------------------------------------------------------

@dataclass
class _Series:
    model: ModelArch
    tp: int
    dtype: str
    tokens: np.ndarray
    measured: np.ndarray
    weight: np.ndarray


def _log_spacing_weights(tokens: np.ndarray) -> np.ndarray:
    """Each point's share of the log(tokens) axis; sums to 1 over the series."""
    lt = np.log(tokens)
    if len(lt) < 2:
        return np.ones_like(lt)
    w = np.gradient(lt)
    return w / w.sum()


def _non_attention_series(profiles: list[Profile]) -> list[_Series]:
    out = []
    for p in profiles:
        tab = p.table("non_attention")
        order = np.argsort(tab["tokens"])
        tokens = tab["tokens"][order].astype(float)
        out.append(_Series(profile_model(p), p.meta.tp, p.meta.dtype, tokens,
                           tab["median_s"][order], _log_spacing_weights(tokens)))
    return out


def layer_non_attention(model: ModelArch, gpu: GPU, tp: int, dtype: str, params: RooflineParams,
                        tokens: np.ndarray, layer_overhead_s: float | None = None) -> np.ndarray:
    """Seconds of one layer's non-attention work at T = tokens: the sum of layer_terms, plus a
    per-layer fixed cost (params.layer_overhead_s if RooflineParams has that field)."""
    if layer_overhead_s is None:
        layer_overhead_s = getattr(params, "layer_overhead_s", 0.0)
    return sum(layer_terms(model, gpu, tp, dtype, params, tokens).values()) + layer_overhead_s


def _predict_non_attention(s: _Series, gpu: GPU, params: RooflineParams,
                           layer_overhead_s: float | None = None):
    return layer_non_attention(s.model, gpu, s.tp, s.dtype, params, s.tokens, layer_overhead_s)


def _fit(residual_fn, x0: list[float], lower: list[float], upper: list[float]) -> np.ndarray:
    """Least squares from a few starting points (the max() in the roofline has kinks)."""
    best = None
    for scale in (1.0, 0.6, 1.4):
        start = np.clip(np.array(x0) * scale, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
        from scipy.optimize import least_squares  # deferred: slow to import
        r = least_squares(residual_fn, start, bounds=(lower, upper), x_scale="jac")
        if best is None or r.cost < best.cost:
            best = r
    return best.x


def _err_stats(pred: np.ndarray, meas: np.ndarray) -> dict:
    rel = np.abs(pred / meas - 1.0)
    return {"points": int(len(rel)), "median_abs_rel_err": float(np.median(rel)),
            "max_abs_rel_err": float(np.max(rel)), "rms_log_err": float(np.sqrt(np.mean(np.log(pred / meas) ** 2)))}


def _residual_report(series: list[_Series], attn: list, gpu: GPU, params: RooflineParams,
                     layer_overhead_s: float | None = None) -> dict:
    rep = {}
    if series:
        pred = np.concatenate([_predict_non_attention(s, gpu, params, layer_overhead_s) for s in series])
        meas = np.concatenate([s.measured for s in series])
        small = np.concatenate([s.tokens for s in series]) <= SMALL_T
        rep["non_attention"] = _err_stats(pred, meas)
        for key, sel in ((f"non_attention T<={SMALL_T}", small), (f"non_attention T>{SMALL_T}", ~small)):
            if sel.any():
                rep[key] = _err_stats(pred[sel], meas[sel])
    if attn:
        pred = np.concatenate([attention_time(m, gpu, tp, dt, params, b, q, c) for m, tp, dt, b, q, c, _ in attn])
        meas = np.concatenate([y for *_, y in attn])
        rep["attention"] = _err_stats(pred, meas)
    return rep


def _measurement(p: Profile) -> tuple | None:
    """What a Vidur import measured (one Vidur model at one tp on one GPU): the importer writes it
    under several catalogue names (vidur_files.specsim_model_names), the fit counts it once."""
    notes = p.meta.notes
    if p.meta.source != "vidur-import" or not isinstance(notes, dict):
        return None
    return (str(notes.get("vidur_gpu")), str(notes.get("vidur_model")), p.meta.tp)


def distinct_measurements(profiles: list[Profile]) -> list[Profile]:
    """The profiles, less any that repeat an earlier one's Vidur measurement."""
    seen: set = set()
    out = []
    for p in profiles:
        key = _measurement(p)
        if key is not None and key in seen:
            continue
        seen.add(key)
        out.append(p)
    return out


def calibrate_full(profiles: Profile | list[Profile], command: str | None = None) -> Calibration:
    """Fit RooflineParams to one or more profiles of the same GPU; see the module docstring."""
    profiles = [profiles] if isinstance(profiles, Profile) else list(profiles)
    profiles = distinct_measurements(profiles)
    if not profiles:
        raise SpecsimError("calibrate: no profiles given")
    gpus = {p.meta.gpu for p in profiles}
    if len(gpus) != 1:
        raise SpecsimError(f"calibrate: profiles of several GPUs ({', '.join(sorted(gpus))}); "
                           f"calibrate one GPU at a time")
    gpu = profile_gpu(profiles[0])
    series = _non_attention_series(profiles)
    defaults = RooflineParams()

    def res_lin(x, with_overhead=False):
        p = replace(defaults, compute_efficiency=x[0], memory_efficiency=x[1])
        c = x[2] if with_overhead else 0.0
        return np.concatenate([np.sqrt(s.weight / len(series))
                               * np.log(_predict_non_attention(s, gpu, p, c) / s.measured)
                               for s in series])

    x = _fit(res_lin, [defaults.compute_efficiency, defaults.memory_efficiency], [0.01, 0.01], [1.0, 1.0])
    xo = _fit(lambda v: res_lin(v, True), [x[0], x[1], 1e-5], [0.01, 0.01, 0.0], [1.0, 1.0, 1e-3])
    params_o = replace(defaults, compute_efficiency=float(xo[0]), memory_efficiency=float(xo[1]))
    fitted = list(FITTED_NON_ATTENTION)
    if HAS_LAYER_OVERHEAD:  # the roofline can express the per-layer cost: use that fit
        params_o = replace(params_o, layer_overhead_s=float(xo[2]))
        params = params_o
        fitted.append("layer_overhead_s")
    else:
        params = replace(defaults, compute_efficiency=float(x[0]), memory_efficiency=float(x[1]))

    attn = []
    for p in profiles:
        tab = p.table("attention")
        if len(tab["batch"]):
            attn.append((profile_model(p), p.meta.tp, p.meta.dtype, tab["batch"], tab["q"],
                         tab["ctx"], tab["median_s"]))
    if attn:
        def res_attn(v):
            pa = replace(params, attention_compute_efficiency=v[0])
            return np.concatenate([np.sqrt(1.0 / len(y)) * np.log(
                attention_time(m, gpu, tp, dt, pa, b, q, c) / y) for m, tp, dt, b, q, c, y in attn])
        xa = _fit(res_attn, [defaults.attention_compute_efficiency], [0.01], [1.0])
        params = replace(params, attention_compute_efficiency=float(xa[0]))
        params_o = replace(params_o, attention_compute_efficiency=float(xa[0]))
        fitted += list(FITTED_ATTENTION)

    src = sorted({p.meta.source for p in profiles})
    return Calibration(
        gpu=gpu.name, params=params, fitted=fitted,
        residuals=_residual_report(series, attn, gpu, params),
        default_residuals=_residual_report(series, attn, gpu, defaults),
        layer_overhead_fit={"layer_overhead_s": float(xo[2]),
                            "compute_efficiency": float(xo[0]), "memory_efficiency": float(xo[1]),
                            "residuals": _residual_report(series, [], gpu, params_o, float(xo[2]))},
        sources=[str(p.csv_path) for p in profiles], profile_source=", ".join(src),
        date=date.today().isoformat(),
        command=command or shlex.join(["specsim", "calibrate", *[str(p.csv_path) for p in profiles]]))


def calibrate(profile: Profile | list[Profile]) -> RooflineParams:
    """RooflineParams fitted to a measured profile (or several of one GPU)."""
    return calibrate_full(profile).params


def load_gpu_profiles(paths: list[Path | str]) -> list[Profile]:
    """Profiles from CSV/JSON paths or GPU directories (every <model>/tp<k>.csv under them)."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise SpecsimError(f"{p}: no such profile file or GPU directory")
        if p.is_dir():
            found = sorted(p.glob("*/tp*.csv"))
            if not found:
                raise SpecsimError(f"{p}: no profiles (<model>/tp<k>.csv) under this directory")
            out += [load_profile(f) for f in found]
        else:
            out.append(load_profile(p))
    return out
