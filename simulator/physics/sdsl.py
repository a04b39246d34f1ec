"""SDSL scaling laws: acceptance rate from model sizes, optimal lookahead and optimal draft size.

Source: Bozorgkhoo & Molybog, "Speculative Decoding Scaling Laws (SDSL)", arXiv 2603.11053
(MODEL.md section 3), plus Leviathan et al. 2023 for the expected tokens per round. Pure
functions on floats, no SimPy: the CLI (`specsim sdsl`, `specsim fit-alpha`) and scenarios
(`acceptance: {sdsl: ...}`, `gamma: auto`) call these.

Chain of laws:
  params, training tokens --perplexity law--> ppl --alpha affine law--> alpha
  alpha, N, M --Lambert W--> gamma*, T* (tokens per FLOP, SDSL's cost model: 2N FLOPs per draft
  token, 2M per target verify pass, however many tokens the pass verifies)
  maximise T* over N --> N*(M), which the paper summarises as N* = mu*M + M0.

Which D (training tokens) reproduces N* = mu*M + M0: the optimum moves little with D, because D
multiplies both perplexities by the same factor exp(b/D^q). With the Besiroglu et al. constants
and one D shared by draft and target, the numerical optimum lies within 15% of the line for
M = 13B..110B for every D from about 2e11 up to at least 1e14 (within 12% at Llama 3's 15e12,
which is DEFAULT_TRAINING_TOKENS; least squares over the optima at 9 evenly spaced targets
13B..110B gives mu = 2.64e-3, M0 = 9.0e7, against the published 2.71e-3 and 8.71e7); the worst
point at D >= 1e12 is the 13B end, where the optimum sits 9-13% below the line. With the
original Chinchilla constants the 15% band holds only for D of about 1e11..6e11 (it is 21% off
at 15e12). A compute-optimal D = 20 * params per model (draft and target each with their own
D) does NOT reproduce the line (the optimum is 2.5x too large), so the paper's line implies a
shared D. tests/test_sdsl.py checks the 15e12 case; `optimal_draft_size` and
`fit_draft_size_rule` recompute the line for other constants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.errors import SpecsimError
from simulator.physics.rounds import sd_round


class SDSLError(SpecsimError, ValueError):
    """An input or derived quantity is outside the range where the laws are defined."""


# ---------------------------------------------------------------- constants (all overridable)

@dataclass(frozen=True)
class AlphaLaw:
    """alpha = A * draft_ppl + B * target_ppl + C, with the fit's goodness (SDSL pooled fit)."""

    A: float = -0.0067
    B: float = 0.01297
    C: float = 0.642
    r2: float = 0.602
    mse: float = 0.00128

    @property
    def rmse(self) -> float:
        return math.sqrt(self.mse)


@dataclass(frozen=True)
class PerplexityLaw:
    """ppl(N, D) = exp(E + a / N^p + b / D^q)."""

    name: str
    E: float
    a: float
    p: float
    b: float
    q: float


@dataclass(frozen=True)
class DraftSizeRule:
    """N*(M) = mu * M + M0 (SDSL; 95% CI mu 2.67e-3..2.75e-3, M0 8.50e7..8.93e7)."""

    mu: float = 2.71e-3
    m0: float = 8.71e7


ALPHA_LAW = AlphaLaw()
BESIROGLU_2024 = PerplexityLaw("besiroglu", E=1.8172, a=482.01, p=0.3478, b=2085.43, q=0.3658)
CHINCHILLA_2022 = PerplexityLaw("chinchilla", E=1.69, a=406.4, p=0.34, b=410.7, q=0.28)
PPL_LAWS: dict[str, PerplexityLaw] = {law.name: law for law in (BESIROGLU_2024, CHINCHILLA_2022)}
DRAFT_SIZE_RULE = DraftSizeRule()
DEFAULT_TRAINING_TOKENS = 15e12  # Llama 3's pre-training set; see the module docstring


# ---------------------------------------------------------------- validation

def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise SDSLError(f"{name} must be a finite number, got {value}")
    return value


def _positive(name: str, value: float) -> float:
    value = _finite(name, value)
    if value <= 0:
        raise SDSLError(f"{name} must be > 0, got {value:g}")
    return value


def _check_alpha(alpha: float, what: str = "alpha") -> float:
    alpha = _finite(what, alpha)
    if not 0.0 < alpha < 1.0:
        raise SDSLError(f"{what} must be in (0, 1), got {alpha:.6g}")
    return alpha


def _check_sizes(draft_params: float, target_params: float) -> tuple[float, float]:
    n = _positive("draft parameter count N", draft_params)
    m = _positive("target parameter count M", target_params)
    if n >= m:
        raise SDSLError(f"draft must be smaller than target: N = {n:.4g} >= M = {m:.4g} parameters")
    return n, m


def _check_gamma(gamma: float) -> float:
    gamma = _finite("gamma (lookahead)", gamma)
    if gamma < 0:
        raise SDSLError(f"gamma (lookahead) must be >= 0, got {gamma:g}")
    return gamma


# ---------------------------------------------------------------- laws

def perplexity(n_params: float, training_tokens: float, law: PerplexityLaw = BESIROGLU_2024) -> float:
    """Perplexity of a model with `n_params` parameters trained on `training_tokens` tokens."""
    n = _positive("parameter count N", n_params)
    d = _positive("training tokens D", training_tokens)
    return math.exp(law.E + law.a / n ** law.p + law.b / d ** law.q)


def alpha_from_ppl(draft_ppl: float, target_ppl: float, law: AlphaLaw = ALPHA_LAW) -> float:
    """Mean acceptance rate predicted by the affine law; SDSLError if it falls outside (0, 1)."""
    x = _finite("draft perplexity", draft_ppl)
    y = _finite("target perplexity", target_ppl)
    for name, v in (("draft perplexity", x), ("target perplexity", y)):
        if v <= 1.0:
            raise SDSLError(f"{name} must be > 1, got {v:g}")
    alpha = law.A * x + law.B * y + law.C
    return _check_alpha(alpha, f"alpha from the law ({law.A:g}*{x:.4g} + {law.B:g}*{y:.4g} + {law.C:g})")


def alpha_band(draft_ppl: float, target_ppl: float, law: AlphaLaw = ALPHA_LAW) -> tuple[float, float, float]:
    """(alpha - RMSE, alpha, alpha + RMSE): the law's uncertainty, each end checked to lie in (0, 1)."""
    mid = alpha_from_ppl(draft_ppl, target_ppl, law)
    lo = _check_alpha(mid - law.rmse, "alpha - RMSE")
    hi = _check_alpha(mid + law.rmse, "alpha + RMSE")
    return lo, mid, hi


def alpha_from_sizes(draft_params: float, target_params: float,
                     training_tokens: float = DEFAULT_TRAINING_TOKENS,
                     ppl_law: PerplexityLaw = BESIROGLU_2024, alpha_law: AlphaLaw = ALPHA_LAW,
                     target_training_tokens: float | None = None) -> float:
    """alpha from parameter counts via both laws (the target uses `training_tokens` unless given)."""
    n, m = _check_sizes(draft_params, target_params)
    d_target = training_tokens if target_training_tokens is None else target_training_tokens
    return alpha_from_ppl(perplexity(n, training_tokens, ppl_law), perplexity(m, d_target, ppl_law),
                          alpha_law)


# ---------------------------------------------------------------- Leviathan et al.

def expected_tokens_per_round(alpha: float, gamma: float) -> float:
    """E[tokens emitted per round] = (1 - alpha^(gamma+1)) / (1 - alpha); gamma+1 at alpha = 1."""
    alpha = _finite("alpha", alpha)
    if not 0.0 <= alpha <= 1.0:
        raise SDSLError(f"alpha must be in [0, 1], got {alpha:.6g}")
    gamma = _check_gamma(gamma)
    if alpha == 1.0:
        return gamma + 1.0
    if alpha == 0.0:
        return 1.0
    # expm1/log1p keep precision as alpha -> 1, where the plain formula is 0/0.
    return -math.expm1((gamma + 1.0) * math.log1p(-(1.0 - alpha))) / (1.0 - alpha)


def leviathan_speedup(alpha: float, gamma: float, cost_ratio: float) -> float:
    """Walltime speedup over AR with c = t_draft / t_target and a verify costing one target step."""
    c = _finite("cost ratio c", cost_ratio)
    if c < 0:
        raise SDSLError(f"cost ratio c must be >= 0, got {c:g}")
    return expected_tokens_per_round(alpha, gamma) / (_check_gamma(gamma) * c + 1.0)


# ---------------------------------------------------------------- throughput per FLOP

def tokens_per_flop(alpha: float, gamma: float, draft_params: float, target_params: float) -> float:
    """SDSL's T(gamma) = (1 - alpha^(gamma+1)) / ((1 - alpha) * 2 * (gamma*N + M))."""
    alpha = _check_alpha(alpha)
    n, m = _check_sizes(draft_params, target_params)
    return expected_tokens_per_round(alpha, gamma) / (2.0 * (_check_gamma(gamma) * n + m))


def ar_tokens_per_flop(target_params: float) -> float:
    """Autoregressive decoding: one token per 2M FLOPs."""
    return 1.0 / (2.0 * _positive("target parameter count M", target_params))


def _lambert_w_lower(log_minus_z: float) -> float:
    """W_{-1}(z) for z = -exp(log_minus_z) in (-1/e, 0), given ln(-z).

    z itself underflows to -0 when M/N is large (alpha^(M/N) < 1e-308, e.g. N < M/1800 at
    alpha 0.67); there W_{-1} is solved in log form, u - ln u = -ln(-z) with u = -w.
    """
    if log_minus_z > -700.0:
        from scipy.special import lambertw  # lazy: scipy.special is slow to import
        w = lambertw(-math.exp(log_minus_z), k=-1)
        return float(w.real)
    target = -log_minus_z
    from scipy.optimize import brentq  # deferred: scipy.optimize costs ~1 s at CLI start
    return -brentq(lambda u: u - math.log(u) - target, 1.0, 2.0 * target, xtol=1e-14, rtol=1e-15)


def _w_opt(alpha: float, n: float, m: float) -> float:
    # z = -alpha^(M/N - 1) / e, so ln(-z) = (M/N - 1) ln(alpha) - 1 < -1 because N < M.
    return _lambert_w_lower((m / n - 1.0) * math.log(alpha) - 1.0)


def optimal_gamma(alpha: float, draft_params: float, target_params: float) -> float:
    """Real-valued gamma* maximising T(gamma), via the lower branch of Lambert W.

    gamma* = (N*w + N - M*ln(alpha)) / (N*ln(alpha)), w = W_{-1}(-alpha^(M/N - 1) / e).
    Negative when speculation cannot pay under the FLOP cost model (draft nearly as big as target).
    """
    alpha = _check_alpha(alpha)
    n, m = _check_sizes(draft_params, target_params)
    w = _w_opt(alpha, n, m)
    return (n * w + n - m * math.log(alpha)) / (n * math.log(alpha))


def optimal_tokens_per_flop(alpha: float, draft_params: float, target_params: float) -> float:
    """T* = T(gamma*) = -ln(alpha) / (2N (alpha - 1) w)."""
    alpha = _check_alpha(alpha)
    n, m = _check_sizes(draft_params, target_params)
    w = _w_opt(alpha, n, m)
    return -math.log(alpha) / (2.0 * n * (alpha - 1.0) * w)


def best_integer_gamma(alpha: float, draft_params: float, target_params: float,
                       gamma_max: int | None = None) -> int:
    """Best whole lookahead >= 1 (an engine runs whole draft steps).

    T(gamma) is unimodal in gamma, so the best integer is floor or ceil of gamma*.
    """
    g = optimal_gamma(alpha, draft_params, target_params)
    upper = math.inf if gamma_max is None else int(gamma_max)
    if upper < 1:
        raise SDSLError(f"gamma_max must be >= 1, got {gamma_max}")
    options = {min(max(1, k), upper) for k in (math.floor(g), math.ceil(g))}
    return max(sorted(options), key=lambda k: tokens_per_flop(alpha, k, draft_params, target_params))


# ---------------------------------------------------------------- lookahead under a latency model

def latency_speedup(alpha: float, gamma: int, t_ar_token: float, t_draft_step: float,
                    t_verify: float) -> float:
    """Batch-1 speedup over AR from wall times: E[tokens](gamma) * t_ar / (gamma*t_draft + t_verify).

    t_ar_token: one AR decode step of the target; t_draft_step: one draft decode step;
    t_verify: one target pass over gamma+1 tokens (include whatever per-step overhead the
    engine pays once per round in it, and the same overhead in t_ar_token).
    """
    for name, v in (("AR step time", t_ar_token), ("draft step time", t_draft_step),
                    ("verify time", t_verify)):
        _positive(name, v)
    return expected_tokens_per_round(alpha, gamma) * t_ar_token / sd_round(gamma * t_draft_step, t_verify)


def best_latency_gamma(alpha: float, t_ar_token: float, t_draft_step: float,
                       verify_time, gamma_max: int = 16) -> tuple[int, float]:
    """(gamma, speedup) maximising `latency_speedup` over whole gamma in 1..gamma_max.

    `verify_time(gamma)` returns the wall time of one target pass over gamma+1 tokens. The
    search is exhaustive: under a roofline the verify cost has a knee, so no closed form.
    """
    if int(gamma_max) < 1:
        raise SDSLError(f"gamma_max must be >= 1, got {gamma_max}")
    speedups = [latency_speedup(alpha, g, t_ar_token, t_draft_step, float(verify_time(g)))
                for g in range(1, int(gamma_max) + 1)]
    best = int(np.argmax(speedups))
    return best + 1, speedups[best]


# ---------------------------------------------------------------- optimal draft size

def optimal_draft_size_linear(target_params: float, rule: DraftSizeRule = DRAFT_SIZE_RULE) -> float:
    """SDSL's fitted line N*(M) = mu*M + M0."""
    return rule.mu * _positive("target parameter count M", target_params) + rule.m0


@dataclass(frozen=True)
class DraftSizeOptimum:
    n_params: float
    alpha: float
    gamma_opt: float
    tokens_per_flop: float


def optimal_draft_size(target_params: float, training_tokens: float = DEFAULT_TRAINING_TOKENS,
                       ppl_law: PerplexityLaw = BESIROGLU_2024, alpha_law: AlphaLaw = ALPHA_LAW,
                       n_min: float = 1e6, n_max: float | None = None,
                       grid_points: int = 121) -> DraftSizeOptimum:
    """Draft size maximising T* with alpha from both laws, searched in log N on [n_min, n_max].

    A coarse log grid finds the basin (small N can make the law's alpha leave (0, 1): those
    sizes are skipped), then a bounded scalar search refines between the grid neighbours.
    """
    m = _positive("target parameter count M", target_params)
    _positive("training tokens D", training_tokens)
    n_max = m / 10.0 if n_max is None else _positive("n_max", n_max)
    n_min = _positive("n_min", n_min)
    if not n_min < n_max < m:
        raise SDSLError(f"need n_min < n_max < M, got {n_min:.4g}, {n_max:.4g}, {m:.4g}")

    def t_star(log_n: float) -> float:
        n = math.exp(log_n)
        try:
            alpha = alpha_from_sizes(n, m, training_tokens, ppl_law, alpha_law)
        except SDSLError:
            return 0.0  # the law predicts no usable acceptance at this size
        return optimal_tokens_per_flop(alpha, n, m)

    grid = np.linspace(math.log(n_min), math.log(n_max), grid_points)
    values = np.array([t_star(u) for u in grid])
    if not values.max() > 0:
        raise SDSLError(f"the alpha law gives no acceptance rate in (0, 1) for any draft size in "
                        f"[{n_min:.3g}, {n_max:.3g}] at M = {m:.3g}, D = {training_tokens:.3g}")
    i = int(values.argmax())
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    from scipy.optimize import minimize_scalar
    res = minimize_scalar(lambda u: -t_star(u), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-7})
    log_n = res.x if -res.fun >= values[i] else grid[i]
    n = math.exp(log_n)
    alpha = alpha_from_sizes(n, m, training_tokens, ppl_law, alpha_law)
    return DraftSizeOptimum(n, alpha, optimal_gamma(alpha, n, m), optimal_tokens_per_flop(alpha, n, m))


def fit_draft_size_rule(target_sizes: list[float] | np.ndarray,
                        training_tokens: float = DEFAULT_TRAINING_TOKENS,
                        ppl_law: PerplexityLaw = BESIROGLU_2024,
                        alpha_law: AlphaLaw = ALPHA_LAW) -> DraftSizeRule:
    """Recompute the line N* = mu*M + M0 by least squares over numerical optima at `target_sizes`."""
    ms = np.asarray(target_sizes, dtype=float)
    if ms.size < 2:
        raise SDSLError("fit_draft_size_rule needs at least two target sizes")
    ns = [optimal_draft_size(m, training_tokens, ppl_law, alpha_law).n_params for m in ms]
    mu, m0 = np.polyfit(ms, ns, 1)
    return DraftSizeRule(float(mu), float(m0))


# ---------------------------------------------------------------- fitting the alpha law

@dataclass(frozen=True)
class AlphaFit:
    law: AlphaLaw  # fitted A, B, C with r2 and mse filled in
    r2: float
    rmse: float
    n_rows: int


def fit_alpha_law(draft_ppl, target_ppl, alpha) -> AlphaFit:
    """Least-squares A, B, C of alpha = A*draft_ppl + B*target_ppl + C, with R^2 and RMSE."""
    x, y, a = (np.asarray(v, dtype=float).ravel() for v in (draft_ppl, target_ppl, alpha))
    if not x.size == y.size == a.size:
        raise SDSLError(f"fit needs columns of equal length, got {x.size}, {y.size}, {a.size}")
    if x.size < 4:
        raise SDSLError(f"fit needs at least 4 rows (3 coefficients plus a residual), got {x.size}")
    for name, v in (("draft_ppl", x), ("target_ppl", y), ("alpha", a)):
        if not np.all(np.isfinite(v)):
            raise SDSLError(f"{name} has non-finite values")
    design = np.column_stack([x, y, np.ones_like(x)])
    coef, _, rank, _ = np.linalg.lstsq(design, a, rcond=None)
    if rank < 3:
        raise SDSLError("draft_ppl and target_ppl are collinear (or constant): A, B, C are not "
                        "identifiable; vary both perplexities independently")
    resid = a - design @ coef
    sse = float(resid @ resid)
    sst = float(((a - a.mean()) ** 2).sum())
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    mse = sse / x.size
    law = AlphaLaw(A=float(coef[0]), B=float(coef[1]), C=float(coef[2]), r2=r2, mse=mse)
    return AlphaFit(law, r2, math.sqrt(mse), int(x.size))
