"""Plan files (`specsim plan`): a scenario's workload plus an SLO, a search space and an objective.

The schema is pydantic v2 with every section forbidding unknown keys, as scenario files do; the
workload, acceptance, latency, scheduler and SSD sections are the scenario module's own models, and
errors go through the scenario module's formatter (file, field path, what was expected).
Which candidates the search space expands to, and why any is pruned, is simulator/run/plan.py's job.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (Field, PositiveFloat, PositiveInt, field_validator,
                      model_validator)

from simulator.errors import SpecsimError
from simulator.config.loading import read_user_file, validate_file
from simulator.config.schema import Acceptance, Engine, InlineGPU, Latency, Scheduler, SSDConfig
from simulator.config.workload_schema import Closed, Strict, TraceArrivals, Workload

Gamma = Union[PositiveInt, Literal["auto"]]


class PlanSLO(Strict):
    """Latency bounds on percentiles of the whole fleet's requests (MLPerf-style: the measured
    percentile must not exceed the bound)."""
    ttft_p99_s: PositiveFloat | None = None
    tpot_p99_s: PositiveFloat | None = None
    ttft_p90_s: PositiveFloat | None = None
    tpot_p90_s: PositiveFloat | None = None
    e2e_p99_s: PositiveFloat | None = None

    @model_validator(mode="after")
    def _some(self):
        if not self.bounds():
            raise ValueError("give at least one bound (ttft_p99_s, tpot_p99_s, ttft_p90_s, "
                             "tpot_p90_s, e2e_p99_s)")
        return self

    def bounds(self) -> dict[str, float]:
        """{field: bound} of the bounds given, in schema order."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class StrategySpace(Strict):
    """One strategy and the values to search for it; `draft` and `gamma` may be lists (every
    combination is a candidate). The other keys are a scenario deployment's, passed through."""
    strategy: Literal["ar", "sd", "ssd"]
    draft: list[str] | None = None  # a single name is read as a list of one
    gamma: list[Gamma] | None = None  # likewise
    acceptance: Acceptance | None = None
    draft_placement: Literal["colocated", "dedicated"] | None = None
    draft_gpus: PositiveInt | None = None
    draft_gpu: str | InlineGPU | None = None
    draft_tp: PositiveInt | None = None
    handshake_s: Annotated[float, Field(ge=0)] | None = None
    ssd: SSDConfig | None = None
    draft_latency: Latency | None = None

    @field_validator("draft", "gamma", mode="before")
    @classmethod
    def _as_list(cls, v, info):
        if v is None:
            return v
        items = v if isinstance(v, list) else [v]
        if not items or len({str(x) for x in items}) != len(items):
            raise ValueError("expected a value or a non-empty list without repeats")
        if info.field_name == "gamma":
            bad = [x for x in items if x != "auto" and (isinstance(x, bool) or not isinstance(x, int) or x < 1)]
            if bad:
                raise ValueError(f"expected a whole number >= 1 or 'auto' (or a list of them); got {bad[0]!r}")
        return items

    def drafts(self) -> list[str | None]:
        return self.draft or [None]

    def gammas(self) -> list[Gamma | None]:
        return self.gamma or [None]


class Search(Strict):
    target: str
    gpus: list[str] = Field(min_length=1)
    tp: list[PositiveInt] = Field(min_length=1)
    replicas: Literal["auto"] | list[PositiveInt] = "auto"
    strategies: list[StrategySpace] = Field(min_length=1)
    # Deployment settings shared by every candidate (a scenario deployment's keys).
    latency: Latency = Field(default_factory=Latency)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    engine: Engine = Field(default_factory=Engine)
    dtype: Literal["bf16", "fp16", "fp8", "fp32"] = "bf16"
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    price_per_gpu_hour: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    # Capacity search: requests per single-replica simulation (default: the workload's count)
    # and bisection steps on the rate (each one simulation per design).
    requests_per_simulation: PositiveInt | None = None
    bisection_steps: Annotated[int, Field(ge=1, le=12)] = 6
    # Fleet confirmation: how many replica counts above the sized fleet to try before giving up.
    max_extra_replicas: Annotated[int, Field(ge=0, le=8)] = 2

    @model_validator(mode="after")
    def _unique(self):
        for key in ("gpus", "tp"):
            v = getattr(self, key)
            if len(set(v)) != len(v):
                raise ValueError(f"'{key}' has repeats: {v}")
        if isinstance(self.replicas, list) and len(set(self.replicas)) != len(self.replicas):
            raise ValueError(f"'replicas' has repeats: {self.replicas}")
        return self


class Budget(Strict):
    max_gpus: PositiveInt | None = None


class PlanFile(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = 1
    workload: Workload
    slo: PlanSLO
    search: Search
    objective: Literal["cost_per_million_tokens", "cost_per_hour", "gpus"] = "cost_per_million_tokens"
    budget: Budget = Field(default_factory=Budget)

    @property
    def load(self) -> float:
        return float(self.workload.arrival.rate_per_s)


def parse_plan(data: Any, source: str = "<plan>") -> PlanFile:
    plan = validate_file(PlanFile, data, source)
    if isinstance(plan.workload.arrival, (Closed, TraceArrivals)):
        raise SpecsimError(f"{source}: invalid plan\n  workload.arrival.process: a plan needs an "
                           "open-loop arrival with rate_per_s (poisson, gamma or constant), not "
                           f"'{plan.workload.arrival.process}': its rate is the load to carry")
    unknown = sorted(set(plan.search.price_per_gpu_hour) - set(plan.search.gpus))
    if unknown:
        raise SpecsimError(f"{source}: invalid plan\n  search.price_per_gpu_hour: names GPUs not "
                           f"in search.gpus: {unknown}")
    return plan


def load_plan(path: str | Path) -> tuple[PlanFile, Path]:
    """Parse and validate a plan file; returns it with the folder relative paths resolve against."""
    data, p = read_user_file(path, "plan")
    return parse_plan(data, str(p)), p.parent.resolve()
