"""Scenario schema, workload part: arrival processes, length distributions, the workload and
the SLO (pydantic v2; every section forbids unknown keys). `Strict` is every section's base."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

# Size limits, refused up front by the schema so that a typo cannot start a run that allocates
# for minutes or never ends. They are the tool's design limits, not hardware facts: the engine
# simulated scenarios/quickstart.yaml's AR deployment at 20,000 requests in 11.6 s on one busy
# core (2026-12-02), so 1e6 requests is about 10 minutes per design and sweep point; 1024
# replicas per deployment (each a SimPy process) covers any cluster the catalogue's GPUs make;
# no catalogue model's context reaches 1e7 tokens.
MAX_REQUESTS = 1_000_000
MAX_REPLICAS = 1024
MAX_TOKENS = 10_000_000
# Gamma arrivals: shape = 1 / burstiness^2; past 100 (shape 1e-4) numpy's gamma draws underflow
# to 0 for most gaps, so the process is no longer the one asked for.
MAX_BURSTINESS = 100.0

PositiveInt = Annotated[int, Field(gt=0, le=2**63 - 1)]  # past int64, numpy arrays overflow
Tokens = Annotated[int, Field(gt=0, le=MAX_TOKENS)]


class Strict(BaseModel):
    # allow_inf_nan=False: every float of the schema (dict and list entries included) must be
    # finite; pydantic then names the field ("Input should be a finite number").
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---- workload ---------------------------------------------------------------------------------
class Poisson(Strict):
    process: Literal["poisson"]
    rate_per_s: PositiveFloat


class GammaArrivals(Strict):
    """Gamma-distributed inter-arrival times; burstiness = coefficient of variation (1 = Poisson)."""
    process: Literal["gamma"]
    rate_per_s: PositiveFloat
    burstiness: Annotated[float, Field(gt=0, le=MAX_BURSTINESS)]


class Constant(Strict):
    process: Literal["constant"]
    rate_per_s: PositiveFloat


class Closed(Strict):
    """A fixed number of requests in flight: each completion issues the next request at once."""
    process: Literal["closed"]
    concurrency: Annotated[int, Field(gt=0, le=MAX_REQUESTS)]


class TraceArrivals(Strict):
    """Arrival times from a CSV column (seconds); `speedup` > 1 compresses time (more load)."""
    process: Literal["trace"]
    path: str
    column: str = "arrived_at"
    speedup: PositiveFloat = 1.0


Arrival = Annotated[Union[Poisson, GammaArrivals, Constant, Closed, TraceArrivals],
                    Field(discriminator="process")]


class Fixed(Strict):
    dist: Literal["fixed"]
    value: Tokens


class _Bounded(Strict):
    """Lengths bounded by `min` and `max` (fields of the subclass): max must be >= min."""

    @model_validator(mode="after")
    def _order(self):
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Uniform(_Bounded):
    dist: Literal["uniform"]
    min: Tokens
    max: Tokens


class Normal(_Bounded):
    """Normal (dist: normal) or lognormal with the given mean and std of the lengths themselves."""
    dist: Literal["normal", "lognormal"]
    mean: PositiveFloat
    std: Annotated[float, Field(ge=0)]
    min: Tokens = 1
    max: Tokens = 1_000_000


class TraceLengths(Strict):
    """Lengths from a CSV column, taken in row order. More requests than rows is an error unless
    `repeat: true` (the rows are then cycled, and the report says how many times)."""
    dist: Literal["trace"]
    path: str
    column: str
    max: Tokens | None = None  # clip (e.g. to the model's context)
    repeat: bool = False


Lengths = Annotated[Union[Fixed, Uniform, Normal, TraceLengths], Field(discriminator="dist")]


class Workload(Strict):
    requests: Annotated[int, Field(gt=0, le=MAX_REQUESTS)] | None = None
    duration_s: PositiveFloat | None = None
    arrival: Arrival
    prompt_tokens: Lengths
    output_tokens: Lengths

    @model_validator(mode="after")
    def _size(self):
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of 'requests' or 'duration_s'")
        rate = getattr(self.arrival, "rate_per_s", None)
        if self.duration_s is not None and rate is not None and rate * self.duration_s > MAX_REQUESTS:
            raise ValueError(f"duration_s x arrival.rate_per_s = {rate * self.duration_s:.3g} "
                             f"expected requests, above the limit of {MAX_REQUESTS:,}")
        return self


class SLO(Strict):
    ttft_s: PositiveFloat | None = None
    tpot_s: PositiveFloat | None = None
