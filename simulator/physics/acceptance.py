"""Token acceptance of speculative decoding (MODEL.md section 2): pure, vectorised functions.

Leviathan et al. 2023: draft tokens are accepted left to right, so the accepted count K of a
round is truncated geometric, P(K=k) = alpha^k (1-alpha) for k < gamma, P(K=gamma) = alpha^gamma,
and a round emits K+1 tokens. Sampling is per round and per sequence, never a fixed mean.
"""
from __future__ import annotations

import numpy as np


def expected_tokens_per_round(alpha: float, gamma: int) -> float:
    """E[K+1] = (1 - alpha^(gamma+1)) / (1 - alpha); gamma+1 when alpha = 1."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def expected_tokens_per_position(a: np.ndarray) -> float:
    """E[K+1] for per-position conditional acceptance a_1..a_gamma (vLLM's measurement)."""
    return 1.0 + float(np.cumprod(a).sum())


def leviathan_speedup(alpha: float, gamma: int, c: float) -> float:
    """Walltime improvement over AR when a draft step costs c target steps (Leviathan eq. 1)."""
    return expected_tokens_per_round(alpha, gamma) / (gamma * c + 1.0)


def sample_accepted(rng: np.random.Generator, alpha: np.ndarray, gamma: int,
                    rounds: int | None = None) -> np.ndarray:
    """Accepted draft tokens per sequence, K = min(floor(log U / log alpha), gamma); with
    `rounds`, a (rounds, n) array: that many successive rounds of the same sequences."""
    u = 1.0 - rng.random(alpha.shape[0] if rounds is None else (rounds, alpha.shape[0]))  # in (0, 1]
    # log(alpha) is clamped below zero so alpha = 1 gives a huge K (capped at gamma), not inf/nan.
    with np.errstate(divide="ignore"):
        k = np.floor(np.log(u) / np.minimum(np.log(alpha), -1e-300))
    return np.minimum(k, gamma).astype(np.int64)


def truncated_geometric_cdf(alpha: float, gamma: int) -> np.ndarray:
    """P(K <= k) for k = 0..gamma-1 (P(K <= gamma) = 1 is implicit)."""
    return 1.0 - alpha ** np.arange(1, gamma + 1)


def sample_accepted_same_alpha(rng: np.random.Generator, cdf: np.ndarray,
                               n: int | tuple[int, int]) -> np.ndarray:
    """K for n sequences sharing one alpha, by inverting the CDF (faster than the log form);
    n = (rounds, sequences) gives successive rounds."""
    return cdf.searchsorted(rng.random(n), side="right")


def sample_accepted_per_position(rng: np.random.Generator, a: np.ndarray,
                                 n: int | tuple[int, int]) -> np.ndarray:
    """Accepted count when position i is accepted with probability a[i] given all before it;
    n = (rounds, sequences) gives successive rounds."""
    shape = n if isinstance(n, tuple) else (n,)
    ok = rng.random((*shape, a.shape[0])) < a
    return np.cumprod(ok, axis=-1).sum(axis=-1)


def request_alphas(rng: np.random.Generator, mean: float, concentration: float | None,
                   n: int) -> np.ndarray:
    """Per-request alpha: Beta(mean * kappa, (1 - mean) * kappa), or `mean` for every request."""
    if concentration is None or mean >= 1.0:
        return np.full(n, mean)
    return rng.beta(mean * concentration, (1.0 - mean) * concentration, size=n)
