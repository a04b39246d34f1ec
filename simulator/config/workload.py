"""Workload generation: request lengths and open-loop arrival times, from a scenario's workload.

The same workload (same seed) is given to every deployment, so designs are compared on
identical requests. Closed-loop arrivals are not pre-generated: the engine issues the next
request when one completes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.errors import SpecsimError
from simulator.user_files import read_user_text
from simulator.config.workload_schema import (MAX_REQUESTS, MAX_TOKENS, Closed, Constant, Fixed,
                                              GammaArrivals, Normal, Poisson, TraceArrivals,
                                              TraceLengths, Uniform, Workload)


@dataclass(frozen=True)
class Requests:
    """Requests to serve. `arrival` is NaN for closed-loop workloads (set when issued)."""

    prompt: np.ndarray  # int64 tokens
    output: np.ndarray  # int64 tokens
    arrival: np.ndarray  # float64 seconds
    concurrency: int | None  # closed loop: requests in flight

    @property
    def n(self) -> int:
        return len(self.prompt)


def resolve_path(path: str, base: Path, field: str) -> Path:
    """A path from a scenario: relative to the scenario file's folder, else to the working dir."""
    p = Path(path)
    for candidate in ([p] if p.is_absolute() else [base / p, Path.cwd() / p]):
        if candidate.is_file():
            return candidate
    raise SpecsimError(f"{field}: file not found: {path} (looked relative to {base} and {Path.cwd()})")


_TRACE_CACHE: dict[Path, pd.DataFrame] = {}


def _trace_column(path: str, column: str, base: Path, field: str) -> np.ndarray:
    p = resolve_path(path, base, field)
    if p not in _TRACE_CACHE:
        try:
            text = read_user_text(p, "CSV trace")
        except SpecsimError as e:
            raise SpecsimError(f"{field}: {e}") from None
        try:
            _TRACE_CACHE[p] = pd.read_csv(io.StringIO(text))
        except Exception as e:  # pandas raises many types for a malformed file
            raise SpecsimError(f"{field}: {p}: cannot read CSV trace "
                               f"({' '.join(str(e).split())})") from None
    df = _TRACE_CACHE[p]
    if column not in df.columns:
        raise SpecsimError(f"{field}: {p}: column '{column}' not found; columns are {list(df.columns)}")
    if len(df) == 0:
        raise SpecsimError(f"{field}: {p}: the trace has a header but no rows")
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(values)):
        raise SpecsimError(f"{field}: {p}: column '{column}' has non-numeric or missing values")
    return values


def sample_lengths(spec, n: int, rng: np.random.Generator, base: Path, field: str) -> np.ndarray:
    if isinstance(spec, Fixed):
        out = np.full(n, spec.value, dtype=np.int64)
    elif isinstance(spec, Uniform):
        out = rng.integers(spec.min, spec.max + 1, size=n)
    elif isinstance(spec, Normal) and spec.dist == "normal":
        out = np.rint(rng.normal(spec.mean, spec.std, size=n))
    elif isinstance(spec, Normal):
        # Lognormal parameterised by the mean and std of the lengths themselves.
        sigma2 = np.log1p((spec.std / spec.mean) ** 2)
        out = np.rint(rng.lognormal(np.log(spec.mean) - sigma2 / 2, np.sqrt(sigma2), size=n))
    elif isinstance(spec, TraceLengths):
        values = _trace_column(spec.path, spec.column, base, field)
        bad = np.flatnonzero((values < 1) | (values > MAX_TOKENS) | (values != np.rint(values)))
        if bad.size:
            raise SpecsimError(f"{field}: trace column '{spec.column}', data row {bad[0] + 1}: "
                               f"{values[bad[0]]:g} is not a whole number of tokens in "
                               f"1..{MAX_TOKENS:,}")
        if n > len(values) and not spec.repeat:
            raise SpecsimError(f"{field}: {n} requests but the trace has {len(values)} rows; "
                               "lower the request count or set repeat: true to cycle the rows")
        out = np.resize(values, n)
        if spec.max is not None:
            out = np.minimum(out, spec.max)
        return out.astype(np.int64)
    else:  # pragma: no cover - the schema admits nothing else
        raise TypeError(spec)
    lo = getattr(spec, "min", 1)
    hi = getattr(spec, "max", None)
    return np.clip(out, lo, hi).astype(np.int64)


def trace_cycles(workload: Workload, n: int, base: Path) -> list[dict]:
    """The length traces that `n` requests cycle (`repeat: true`, n above the trace's rows): per
    field its rows and `cycles` = n / rows (2.5: two whole passes over the rows and half a third)."""
    out = []
    for name in ("prompt_tokens", "output_tokens"):
        spec = getattr(workload, name)
        if isinstance(spec, TraceLengths):
            rows = len(_trace_column(spec.path, spec.column, base, f"workload.{name}"))
            if n > rows:
                out.append({"field": f"workload.{name}", "path": spec.path, "column": spec.column,
                            "rows": rows, "requests": n, "cycles": n / rows})
    return out


def arrival_times(spec, n: int | None, duration_s: float | None, rng: np.random.Generator,
                  base: Path) -> np.ndarray:
    """Open-loop arrival times (s), starting at 0: `n` of them, or all within `duration_s`."""
    if isinstance(spec, TraceArrivals):
        t = _trace_column(spec.path, spec.column, base, "workload.arrival.path")
        t = np.sort(t - t.min()) / spec.speedup
        if n is not None:
            if n > len(t):
                raise SpecsimError(f"workload.requests: {n} requested but the trace has {len(t)} arrivals")
            return t[:n]
        return t[t <= duration_s]
    if n is not None:
        gaps = _gaps(spec, n, rng)
        return np.cumsum(gaps) - gaps[0]
    # Within duration_s: draw a first chunk sized for the mean count plus margin, then more
    # chunks until the window is covered (bursty gamma gaps can fall short of any fixed count).
    mean = duration_s * spec.rate_per_s
    chunk = int(mean * 1.2 + 10 * np.sqrt(mean) + 10)
    gaps = _gaps(spec, chunk, rng)
    t = np.cumsum(gaps) - gaps[0]
    while t[-1] <= duration_s:
        if t.shape[0] > MAX_REQUESTS:
            raise SpecsimError(f"workload.duration_s: more than {MAX_REQUESTS:,} arrivals fall "
                               f"within {duration_s:g} s (the request limit)")
        t = np.concatenate([t, t[-1] + np.cumsum(_gaps(spec, chunk, rng))])
    return t[t <= duration_s]


def _gaps(spec, count: int, rng: np.random.Generator) -> np.ndarray:
    rate = spec.rate_per_s
    if isinstance(spec, Poisson):
        return rng.exponential(1.0 / rate, size=count)
    if isinstance(spec, GammaArrivals):
        shape = 1.0 / spec.burstiness**2  # CV of a gamma is 1/sqrt(shape)
        return rng.gamma(shape, 1.0 / (rate * shape), size=count)
    if isinstance(spec, Constant):
        return np.full(count, 1.0 / rate)
    raise TypeError(spec)  # pragma: no cover - the schema admits nothing else


def generate(workload: Workload, seed: int, base: Path) -> Requests:
    """Draw the scenario's requests. Deterministic in (workload, seed)."""
    if not 0 <= seed <= 2**63 - 1:  # the file's seed is checked by the schema; this is --seed
        raise SpecsimError(f"seed: {seed} is out of range (expected an integer in 0..2^63-1)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    arr_rng, len_rng = (np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(2))
    spec = workload.arrival
    if isinstance(spec, Closed):
        if workload.requests is None:
            raise SpecsimError("workload: a closed-loop workload needs 'requests' (not duration_s)")
        n, arrival, conc = workload.requests, np.full(workload.requests, np.nan), spec.concurrency
    else:
        arrival = arrival_times(spec, workload.requests, workload.duration_s, arr_rng, base)
        n, conc = len(arrival), None
        if n == 0:
            raise SpecsimError("workload: no request arrives within duration_s")
    prompt = sample_lengths(workload.prompt_tokens, n, len_rng, base, "workload.prompt_tokens")
    output = sample_lengths(workload.output_tokens, n, len_rng, base, "workload.output_tokens")
    return Requests(prompt, output, arrival.astype(float), conc)
