"""The SDSL report behind `specsim sdsl`: for a target, the law's alpha, lookahead and optimal
draft size, and candidate drafts ranked under SDSL's FLOP cost model and under the GPU's latency
model at batch 1, the calibrated roofline as scenarios default to (small drafts are memory- and
kernel-floor-bound, so the two rankings can differ). Also the reader of `specsim fit-alpha`'s CSV."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import SpecsimError
from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS, ModelArch
from simulator.latency.calibration import derived_params
from simulator.latency.roofline import RooflineLatency, RooflineParams
from simulator.deploy.deployments import PROJECT_PROFILES
from simulator.physics import sdsl
from simulator.physics.rounds import ar_round

BATCH1_NOTE = ("latency model: {how}, at batch 1, {ctx} cached tokens; target at tp={tp}, draft at "
               "tp={dtp} on the same GPU type; one engine-step overhead per AR token and per SD round")


def latency_params(gpu) -> tuple[RooflineParams, str]:
    """The roofline parameters scenarios default to on this GPU (the calibrated roofline from the
    project's profiles, own or derived), with what they are; the datasheet defaults without one."""
    got = derived_params(gpu, PROJECT_PROFILES)
    if got is None:
        return RooflineParams(), "roofline (datasheet efficiencies; no calibration found)"
    return got[0], f"calibrated roofline ({got[1]})"



def _model(name: str) -> ModelArch:
    if name not in MODELS:
        raise SpecsimError(f"unknown model '{name}'; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _gpu(name: str):
    if name not in GPUS:
        raise SpecsimError(f"unknown GPU '{name}'; valid names: {', '.join(sorted(GPUS))}")
    return GPUS[name]


def _auto_tp(model: ModelArch, gpu) -> int:
    """Smallest TP (1, 2, 4, 8) whose weight shard fills at most 80% of one GPU's HBM."""
    for tp in (1, 2, 4, 8):
        if model.check_tp(tp) is None and model.weight_bytes("bf16") / tp <= 0.8 * gpu.hbm_gb * 1e9:
            return tp
    raise SpecsimError(f"{model.name} does not fit on 8 x {gpu.label}: pass --tp explicitly")


@dataclass(frozen=True)
class _Timings:
    """Batch-1 wall times from the (calibrated) roofline backend (seconds)."""

    t_ar: float
    t_draft: float
    target: RooflineLatency
    ctx: int

    def verify(self, gamma: int) -> float:
        q = np.array([gamma + 1])
        t = self.target.forward(q, np.array([self.ctx]), gamma + 1).sum()
        return ar_round(float(t), self.target.step_overhead_s)


def _timings(target: ModelArch, draft: ModelArch, gpu, tp: int, draft_tp: int, ctx: int,
             params: RooflineParams) -> _Timings:
    t_lat = RooflineLatency(target, gpu, tp, params=params)
    d_lat = RooflineLatency(draft, gpu, draft_tp, params=params)
    one, c = np.array([1]), np.array([ctx])
    t_ar = ar_round(float(t_lat.forward(one, c, 1).sum()), t_lat.step_overhead_s)
    # Draft steps run inside the SD round's engine step: their per-forward launch overhead is in
    # forward(), the engine-step overhead is charged once per round in verify().
    t_draft = float(d_lat.forward(one, c, 1).sum())
    return _Timings(t_ar, t_draft, t_lat, ctx)


def _same_tokenizer(a: ModelArch, b: ModelArch) -> bool:
    # Small Qwen2.5 models pad the same tokenizer to a different embedding size than the big ones.
    return a.vocab == b.vocab or a.name.rsplit("-", 1)[0] == b.name.rsplit("-", 1)[0]


def _flop_speedup(alpha: float, n: float, m: float) -> float:
    """T(gamma*) / T_AR; gamma* is clamped to >= 1 because a draft proposes at least one token
    (gamma* < 1 only for drafts nearly as large as the target, where T* itself is unreachable)."""
    g = max(sdsl.optimal_gamma(alpha, n, m), 1.0)
    return sdsl.tokens_per_flop(alpha, g, n, m) / sdsl.ar_tokens_per_flop(m)


def _flop_row(alpha: float, n: float, m: float, gamma_max: int) -> dict:
    return {"alpha": alpha, "gamma_opt": sdsl.optimal_gamma(alpha, n, m),
            "gamma_int_flops": sdsl.best_integer_gamma(alpha, n, m, gamma_max),
            "speedup_flops": _flop_speedup(alpha, n, m), "gamma_latency": None, "speedup_latency": None}


def _candidate(target: ModelArch, draft: ModelArch, d: float, law, timings: _Timings | None,
               gamma_max: int) -> dict:
    n, m = draft.params, target.params
    row = {"draft": draft.name, "params": n, "vocab_match": _same_tokenizer(draft, target)}
    row |= _flop_row(sdsl.alpha_from_sizes(n, m, d, law), n, m, gamma_max)
    alpha = row["alpha"]
    if timings is not None:
        g, s = sdsl.best_latency_gamma(alpha, timings.t_ar, timings.t_draft, timings.verify, gamma_max)
        row["gamma_latency"], row["speedup_latency"] = g, s
    return row


def _rank(rows: list[dict], key: str) -> None:
    order = sorted(range(len(rows)), key=lambda i: -(rows[i][key] or -math.inf))
    for r, i in enumerate(order, 1):
        rows[i][f"rank_{key.removeprefix('speedup_')}"] = r


def _candidates(target: ModelArch, gpu, tp: int, draft_tp: int, d: float, law, context: int,
                gamma_max: int, params: RooflineParams) -> tuple[list[dict], list[dict]]:
    """Every catalogue model smaller than the target as a draft, ranked by latency speedup; and
    the ones skipped (tp does not divide them, or the law is out of its range), with why."""
    candidates, skipped = [], []
    for draft in MODELS.values():
        if draft.name.startswith("tiny-") or not draft.params < target.params:
            continue
        if (why := draft.check_tp(draft_tp)) is not None:
            skipped.append({"draft": draft.name, "reason": why})
            continue
        try:
            timings = _timings(target, draft, gpu, tp, draft_tp, context, params)
            candidates.append(_candidate(target, draft, d, law, timings, gamma_max))
        except sdsl.SDSLError as e:
            skipped.append({"draft": draft.name, "reason": str(e)})
    _rank(candidates, "speedup_flops")
    _rank(candidates, "speedup_latency")
    candidates.sort(key=lambda r: r["rank_latency"])
    return candidates, skipped


def sdsl_report(target_name: str, draft_name: str | None, gpu_name: str, tp: int | None,
                draft_tp: int, training_tokens: float, ppl_law: str, context: int,
                gamma_max: int) -> dict:
    """Everything `specsim sdsl` shows, as one JSON-ready dict (raises SpecsimError on bad input)."""
    target, gpu = _model(target_name), _gpu(gpu_name)
    if ppl_law not in sdsl.PPL_LAWS:
        raise SpecsimError(f"unknown perplexity law '{ppl_law}'; valid: {', '.join(sdsl.PPL_LAWS)}")
    if context < 0:
        raise SpecsimError(f"--context must be >= 0, got {context}")
    if gamma_max < 1:
        raise SpecsimError(f"--gamma-max must be >= 1, got {gamma_max}")
    law = sdsl.PPL_LAWS[ppl_law]
    tp = _auto_tp(target, gpu) if tp is None else tp
    for model, t in ((target, tp),) + (((_model(draft_name), draft_tp),) if draft_name else ()):
        if (why := model.check_tp(t)) is not None:
            raise SpecsimError(f"{model.name}: {why}")
    m, d = target.params, training_tokens
    n_star = sdsl.optimal_draft_size_linear(m)
    n_opt = sdsl.optimal_draft_size(m, d, law)

    params, how = latency_params(gpu)
    candidates, skipped = _candidates(target, gpu, tp, draft_tp, d, law, context, gamma_max, params)

    if draft_name:
        draft = _model(draft_name)
        if not draft.params < m:
            raise sdsl.SDSLError(f"draft {draft.name} ({draft.params:.3g} params) must be smaller "
                                 f"than target {target.name} ({m:.3g} params)")
        chosen = _candidate(target, draft, d, law,
                            _timings(target, draft, gpu, tp, draft_tp, context, params), gamma_max)
        n = draft.params
    else:
        n = n_star
        chosen = _flop_row(sdsl.alpha_from_sizes(n, m, d, law), n, m, gamma_max)
    lo, hi = chosen["alpha"] - sdsl.ALPHA_LAW.rmse, chosen["alpha"] + sdsl.ALPHA_LAW.rmse
    band = [max(lo, 1e-9), min(hi, 1 - 1e-9)]
    return {
        "target": target.name, "target_params": m,
        "draft": draft_name, "draft_params": n,
        "gpu": gpu.name, "tp": tp, "draft_tp": draft_tp, "context_tokens": context,
        "training_tokens": d, "ppl_law": law.name,
        "alpha": chosen["alpha"], "alpha_band": band, "alpha_rmse": sdsl.ALPHA_LAW.rmse,
        "gamma_opt": chosen["gamma_opt"], "gamma_int": chosen["gamma_int_flops"],
        "speedup": chosen["speedup_flops"],
        "speedup_band": [_flop_speedup(a, n, m) for a in band],
        "gamma_latency": chosen["gamma_latency"], "speedup_latency": chosen["speedup_latency"],
        "n_star_params": n_star, "n_star_optimizer_params": n_opt.n_params,
        "candidates": candidates, "skipped": skipped,
        "notes": [
            "speedup = T*(gamma*) / T_AR under SDSL's FLOP cost model (2N per draft token, 2M per "
            "verify pass), i.e. Leviathan's formula with c = N/M; gamma* < 1 is clamped to 1",
            "n_star_params = mu*M + M0 (SDSL's line); n_star_optimizer_params maximises T* over N "
            "with both laws at the given training tokens",
            BATCH1_NOTE.format(how=how, ctx=context, tp=tp, dtp=draft_tp) + "; draft memory not checked",
            "xFLOP / gamma*: speedup and optimal lookahead under the FLOP model; xGPU / gamma: "
            "under the latency model (best whole gamma in 1..gamma_max)",
            "vocab_match (table: '(v)' when false) = same tokenizer as the target, judged by equal "
            "vocabulary size or the same model series; the law itself does not require it",
        ],
    }


REQUIRED_COLUMNS = ("draft_ppl", "target_ppl", "alpha")


def read_alpha_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three columns of a fit-alpha CSV as floats; SpecsimError naming file, column and row."""
    import pandas as pd

    if not path.is_file():
        raise SpecsimError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, dtype=str, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SpecsimError(f"{path}: cannot read as CSV ({e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SpecsimError(f"{path}: missing column(s) {', '.join(missing)}; need "
                           f"{', '.join(REQUIRED_COLUMNS)}, found {', '.join(df.columns) or 'none'}")
    cols = []
    for c in REQUIRED_COLUMNS:
        values = pd.to_numeric(df[c].str.strip(), errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise SpecsimError(f"{path}: column {c}, row {i + 2} (line {i + 2} of the file): "
                               f"'{df[c].iloc[i]}' is not a finite number")
        cols.append(values)
    # alpha is an acceptance rate, a perplexity is at least 1: name the first row outside.
    for c, values, ok, want in (("alpha", cols[2], (cols[2] > 0) & (cols[2] <= 1), "in (0, 1]"),
                                ("draft_ppl", cols[0], cols[0] >= 1, ">= 1"),
                                ("target_ppl", cols[1], cols[1] >= 1, ">= 1")):
        bad = np.flatnonzero(~ok)
        if bad.size:
            i = int(bad[0])
            raise SpecsimError(f"{path}: column {c}, row {i + 2} (line {i + 2} of the file): "
                               f"{values[i]:g} is out of range (expected {want})")
    return cols[0], cols[1], cols[2]
