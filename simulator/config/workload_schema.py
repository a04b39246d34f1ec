"""Scenario schema, workload part: arrival processes, length distributions, the workload and
the SLO (pydantic v2; every section forbids unknown keys). `Strict` is every section's base."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- workload ---------------------------------------------------------------------------------
class Poisson(Strict):
    process: Literal["poisson"]
    rate_per_s: PositiveFloat


class GammaArrivals(Strict):
    """Gamma-distributed inter-arrival times; burstiness = coefficient of variation (1 = Poisson)."""
    process: Literal["gamma"]
    rate_per_s: PositiveFloat
    burstiness: PositiveFloat


class Constant(Strict):
    process: Literal["constant"]
    rate_per_s: PositiveFloat


class Closed(Strict):
    """A fixed number of requests in flight: each completion issues the next request at once."""
    process: Literal["closed"]
    concurrency: PositiveInt


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
    value: PositiveInt


class _Bounded(Strict):
    """Lengths bounded by `min` and `max` (fields of the subclass): max must be >= min."""

    @model_validator(mode="after")
    def _order(self):
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Uniform(_Bounded):
    dist: Literal["uniform"]
    min: PositiveInt
    max: PositiveInt


class Normal(_Bounded):
    """Normal (dist: normal) or lognormal with the given mean and std of the lengths themselves."""
    dist: Literal["normal", "lognormal"]
    mean: PositiveFloat
    std: Annotated[float, Field(ge=0)]
    min: PositiveInt = 1
    max: PositiveInt = 1_000_000


class TraceLengths(Strict):
    """Lengths from a CSV column, taken in row order (cycled if more requests than rows)."""
    dist: Literal["trace"]
    path: str
    column: str
    max: PositiveInt | None = None  # clip (e.g. to the model's context)


Lengths = Annotated[Union[Fixed, Uniform, Normal, TraceLengths], Field(discriminator="dist")]


class Workload(Strict):
    requests: PositiveInt | None = None
    duration_s: PositiveFloat | None = None
    arrival: Arrival
    prompt_tokens: Lengths
    output_tokens: Lengths

    @model_validator(mode="after")
    def _size(self):
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of 'requests' or 'duration_s'")
        return self


class SLO(Strict):
    ttft_s: PositiveFloat | None = None
    tpot_s: PositiveFloat | None = None
