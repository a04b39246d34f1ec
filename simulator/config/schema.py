"""Scenario schema, deployment part: models, GPUs, acceptance, latency, scheduler, SSD settings,
the deployment, the sweep and the scenario itself (pydantic v2).

Every section forbids unknown keys. Checks that need the catalogues (model names, tp, memory
fit) happen in simulator/deploy/deployments.py; loading YAML and wording errors is loading.py.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PositiveFloat, model_validator

from simulator.config.workload_schema import (MAX_REPLICAS, Closed, PositiveInt, SLO, Strict, Tokens,
                                              TraceArrivals, Workload)


# ---- deployments ------------------------------------------------------------------------------
class InlineModel(Strict):
    """An architecture not in the catalogue, from its public config."""
    name: str
    family: Literal["llama", "opt"] = "llama"
    n_layers: PositiveInt
    hidden: PositiveInt
    n_heads: PositiveInt
    n_kv_heads: PositiveInt
    head_dim: PositiveInt
    ffn: PositiveInt
    vocab: PositiveInt
    params: PositiveFloat | None = None  # published count; derived from the shape when absent
    tied_embeddings: bool = False
    qkv_bias: bool = False
    gated_mlp: bool = True
    max_position: Tokens = 131072


class InlineGPU(Strict):
    """A device not in the catalogue (or this machine's CPU, for measured CPU profiles)."""
    name: str
    label: str | None = None
    hbm_gb: PositiveFloat
    bandwidth_tbps: PositiveFloat
    bf16_tflops: PositiveFloat
    fp8_tflops: PositiveFloat | None = None
    interconnect: str = "none"
    interconnect_gbps: PositiveFloat = 64.0
    price_per_gpu_hour: Annotated[float, Field(ge=0)] = 0.0


class Heterogeneity(Strict):
    """Per-request alpha ~ Beta(mean alpha, concentration), fixed for the request's life."""
    concentration: PositiveFloat


class SDSLAcceptance(Strict):
    """alpha from the SDSL laws (simulator/physics/sdsl.py): from perplexities via the affine law, or from
    the catalogue's parameter counts and training tokens via the perplexity law first."""
    draft_ppl: Annotated[float, Field(gt=1)] | None = None
    target_ppl: Annotated[float, Field(gt=1)] | None = None
    training_tokens: PositiveFloat | None = None  # D of both models (the draft's, if the next is set)
    target_training_tokens: PositiveFloat | None = None
    ppl_law: Literal["besiroglu", "chinchilla"] = "besiroglu"

    @model_validator(mode="after")
    def _form(self):
        ppl = (self.draft_ppl is not None, self.target_ppl is not None)
        if any(ppl) and not all(ppl):
            raise ValueError("give both 'draft_ppl' and 'target_ppl'")
        if all(ppl) == (self.training_tokens is not None):
            raise ValueError("give either 'draft_ppl' and 'target_ppl', or 'training_tokens' "
                             "(parameter counts then come from the model catalogue)")
        if self.training_tokens is None and (self.target_training_tokens is not None
                                             or self.ppl_law != "besiroglu"):
            raise ValueError("'target_training_tokens' and 'ppl_law' apply to the "
                             "'training_tokens' form")
        return self


class Acceptance(Strict):
    alpha: Annotated[float, Field(gt=0, le=1)] | None = None
    per_position: list[Annotated[float, Field(ge=0, le=1)]] | None = None
    sdsl: SDSLAcceptance | None = None
    # With sdsl: run the deployment at alpha - RMSE, alpha and alpha + RMSE of the law's fit.
    band: bool = False
    heterogeneity: Heterogeneity | None = None

    @model_validator(mode="after")
    def _one(self):
        if sum(x is not None for x in (self.alpha, self.per_position, self.sdsl)) != 1:
            raise ValueError("give exactly one of 'alpha', 'per_position' or 'sdsl'")
        if self.per_position is not None and self.heterogeneity is not None:
            raise ValueError("'heterogeneity' applies to 'alpha', not to 'per_position'")
        if self.band and self.sdsl is None:
            raise ValueError("'band' applies to 'sdsl' (the law's uncertainty band)")
        return self


class Latency(Strict):
    # roofline: datasheet x default efficiencies; calibrated (the default): roofline with the
    # efficiencies and per-layer kernel time fitted to measured profiles (this GPU's, or the
    # nearest measured GPU's scaled by datasheet; where no calibration is found, the default falls
    # back to the roofline and says so); profile: measured per-operator times; ideal: SDSL's FLOP
    # cost model.
    backend: Literal["roofline", "calibrated", "profile", "ideal"] = "calibrated"
    # Overrides of RooflineParams fields (see simulator/latency/roofline.py), checked by name.
    params: dict[str, float] = Field(default_factory=dict)
    profiles_dir: str = "profiles"


class Engine(Strict):
    """The serving engine's implementation (simulator/latency/serving.py): a named preset (default
    "vllm", the current release; "ideal" with the `ideal` latency backend), field overrides in
    `params`, or the constants `specsim calibrate-engine` fitted (`calibrated: PATH`)."""
    preset: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    calibrated: str | None = None

    @model_validator(mode="after")
    def _one(self):
        if self.calibrated is not None and self.preset is not None:
            raise ValueError("give 'preset' or 'calibrated', not both (a calibration names its preset)")
        return self


class Quantization(Strict):
    """Weight-only quantization of each model's GEMM weights: none, int8 (W8A16), int4 (= awq),
    awq or gptq (simulator/hardware/quant.py; names are checked there, at resolve)."""
    target: str = "none"
    draft: str = "none"


class Scheduler(Strict):
    max_num_seqs: PositiveInt = 256
    max_num_batched_tokens: Tokens = 8192
    chunked_prefill: bool = True
    block_size: PositiveInt = 16
    # At most this many sequences prefill (whole prompts or chunks) in one step; None = no limit.
    # 1 = one prompt per step, as a naive serving loop (and specsim fidelity's real loop) does.
    max_prefills_per_step: PositiveInt | None = None


class Fanout(Strict):
    """SSD branches per stopping point k = 0..gamma (MODEL.md section 4).

    uniform: F_k = f everywhere (the reference default, f = 3). geometric: Theorem 12's
    allocation of `budget` branches (default f * (gamma+1), the uniform total), at most `cap` per
    position, in whole branches.
    """
    policy: Literal["uniform", "geometric"] = "uniform"
    f: PositiveInt = 3
    budget: PositiveInt | None = None
    cap: PositiveInt | None = None

    @model_validator(mode="after")
    def _policy(self):
        if self.policy == "uniform" and (self.budget is not None or self.cap is not None):
            raise ValueError("'budget' and 'cap' apply to policy 'geometric'; uniform uses f per position")
        return self

    def branches(self, gamma: int) -> int:
        """Total branches per sequence: the budget, or f per stopping point."""
        return self.budget if self.budget is not None else self.f * (gamma + 1)


class SSDConfig(Strict):
    """SSD pre-speculation settings (strategy: ssd; see simulator/engine/strategies/ssd.py)."""
    fanout: Fanout = Field(default_factory=Fanout)
    # Miss model P(miss | F) = F^(-r). Default 2: top-3 candidates hold the bonus token ~89% of the
    # time (greedy-like decoding); fit it to measured cache hit rates.
    r: PositiveFloat = 2.0
    batch_policy: Literal["all_or_nothing", "per_sequence"] = "all_or_nothing"
    backup: Literal["jit", "fast"] = "jit"
    backup_batch_threshold: PositiveInt | None = None  # above this batch size: fast backup


class Deployment(Strict):
    name: str
    target: str | InlineModel
    draft: str | InlineModel | None = None
    gpu: str | InlineGPU
    tp: PositiveInt = 1
    draft_tp: PositiveInt | None = None  # colocated draft's tensor parallelism; default = tp
    replicas: Annotated[int, Field(gt=0, le=MAX_REPLICAS)] = 1
    router: Literal["round_robin", "least_outstanding"] = "round_robin"
    strategy: Literal["ar", "sd", "ssd"] = "ar"
    # Where the draft runs: on the target's GPUs (sd default) or its own GPUs (required by ssd).
    draft_placement: Literal["colocated", "dedicated"] | None = None
    draft_gpus: PositiveInt | None = None  # dedicated draft: GPUs per replica (its tp), default 1
    draft_gpu: str | InlineGPU | None = None  # dedicated draft's device; default = gpu
    # Dedicated draft: target <-> draft exchange per round (s). Default from the interconnect:
    # 2 x 10 us + n_seqs * (gamma x vocab bf16 logits + token ids) / (0.7 x one-way GB/s).
    handshake_s: Annotated[float, Field(ge=0)] | None = None
    ssd: SSDConfig | None = None
    gamma: PositiveInt | Literal["auto"] | None = None  # auto: see simulator/physics/lookahead.py
    acceptance: Acceptance | None = None
    latency: Latency = Field(default_factory=Latency)
    # The draft's backend when it differs from the target's (e.g. a measured target profile and
    # no draft profile: draft_latency: {backend: calibrated}); default: the same as `latency`.
    draft_latency: Latency | None = None
    scheduler: Scheduler = Field(default_factory=Scheduler)
    engine: Engine = Field(default_factory=Engine)
    dtype: Literal["bf16", "fp16", "fp8", "fp32"] = "bf16"
    # The draft's compute, activation and KV dtype; default: dtype.
    draft_dtype: Literal["bf16", "fp16", "fp8", "fp32"] | None = None
    quantization: Quantization = Field(default_factory=Quantization)
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    activation_reserve_gb: Annotated[float, Field(ge=0)] | None = None
    price_per_gpu_hour: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _strategy(self):
        if self.strategy in ("sd", "ssd"):
            missing = [k for k in ("draft", "gamma", "acceptance") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"strategy '{self.strategy}' needs {', '.join(missing)}")
            pp = self.acceptance.per_position
            if self.gamma == "auto":
                if pp is not None:
                    raise ValueError("gamma: auto needs a single acceptance rate (alpha or sdsl); "
                                     "per_position fixes the lookahead")
                if self.strategy != "sd" or self.placement != "colocated":
                    raise ValueError("gamma: auto applies to strategy 'sd' with a colocated draft; "
                                     "give a whole gamma here")
            elif pp is not None and len(pp) != self.gamma:
                raise ValueError(f"acceptance.per_position has {len(pp)} entries; gamma is {self.gamma}")
        else:
            extra = [k for k in ("draft", "gamma", "acceptance", "draft_placement", "draft_latency",
                                 "draft_dtype") if getattr(self, k) is not None]
            if self.quantization.draft != "none":
                extra.append("quantization.draft")
            if extra:
                raise ValueError(f"strategy 'ar' takes no {', '.join(extra)} (did you mean strategy: sd?)")
        if self.strategy == "ssd" and self.draft_placement == "colocated":
            raise ValueError("draft_placement: strategy 'ssd' runs the draft on dedicated GPU(s); "
                             "use draft_placement: dedicated (or leave it out)")
        if self.placement != "dedicated":
            extra = [k for k in ("draft_gpus", "draft_gpu", "handshake_s") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} apply to draft_placement: dedicated")
        elif self.draft_tp is not None:
            raise ValueError("draft_tp applies to a colocated draft; a dedicated draft runs at "
                             "tp = draft_gpus")
        if self.ssd is not None and self.strategy != "ssd":
            raise ValueError(f"'ssd' settings apply to strategy 'ssd' (this is '{self.strategy}')")
        fo = self.ssd.fanout if self.ssd is not None else None
        if fo is not None and fo.policy == "geometric":
            budget = fo.branches(self.gamma)
            if budget < self.gamma + 1:
                raise ValueError(f"ssd.fanout.budget ({budget}) is below gamma + 1 = {self.gamma + 1}: "
                                 "every stopping point needs at least one branch")
            if fo.cap is not None and fo.cap * (self.gamma + 1) < budget:
                raise ValueError(f"ssd.fanout.cap ({fo.cap}) x {self.gamma + 1} positions cannot "
                                 f"hold ssd.fanout.budget ({budget})")
        return self

    @property
    def placement(self) -> str | None:
        """Where the draft runs (None without a draft): ssd is always dedicated."""
        if self.strategy == "ar":
            return None
        return self.draft_placement or ("dedicated" if self.strategy == "ssd" else "colocated")


class Sweep(Strict):
    """Run every deployment at each sweep point: `param` + `values` (one arrival parameter, e.g.
    closed-loop concurrency), or `grid`: {FIELD_PATH: [values]} over any workload or deployment
    fields, every combination (simulator/config/sweep.py resolves and validates the paths)."""
    param: Literal["concurrency", "rate_per_s"] | None = None
    values: list[PositiveFloat] | None = Field(default=None, min_length=1)
    grid: dict[str, list[Any]] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _form(self):
        if (self.grid is not None) == (self.param is not None or self.values is not None):
            raise ValueError("give either 'param' and 'values', or 'grid' ({FIELD_PATH: [values]})")
        if self.grid is None:
            if self.param is None or self.values is None:
                raise ValueError("give both 'param' and 'values'")
            for i, v in enumerate(self.values):
                if self.values.index(v) != i:
                    raise ValueError(f"values[{i}]: {v:g} repeats values[{self.values.index(v)}] "
                                     "(each point is run once; remove the duplicate)")
                if self.param == "concurrency" and v != int(v):
                    raise ValueError(f"values[{i}]: concurrency {v:g} is not a whole number of "
                                     "requests in flight")
        for path, vals in (self.grid or {}).items():
            if not vals:
                raise ValueError(f"grid.{path}: give at least one value")
            _distinct(f"grid.{path}", vals)
        return self


def _distinct(where: str, values: list) -> None:
    rep = [v for i, v in enumerate(values) if v in values[:i]]
    if rep:
        shown = ", ".join(f"{v:g}" if isinstance(v, float) else repr(v) for v in rep)
        raise ValueError(f"{where}: repeated values [{shown}] (each sweep point once)")


class Scenario(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 1  # numpy's SeedSequence takes no negatives
    # Independent runs of each (sweep point, deployment); seeds derived from (seed, replication
    # index). Rows show replication 0's figures plus 95% intervals over all of them.
    replications: int = Field(default=1, ge=1, le=100, strict=True)
    workload: Workload
    slo: SLO | None = None
    sweep: Sweep | None = None
    baseline: str | None = None  # deployment the others are compared with; default: first 'ar'
    # Extra (design, reference) pairs compared over the sweep, e.g. [[ssd, sd-dedicated]].
    compare: list[tuple[str, str]] = Field(default_factory=list)
    deployments: list[Deployment] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self):
        names = [d.name for d in self.deployments]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"deployment names must be unique; repeated: {dup}")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline '{self.baseline}' is not a deployment name ({names})")
        for i, pair in enumerate(self.compare):
            bad = [n for n in pair if n not in names]
            if bad:
                raise ValueError(f"compare[{i}]: {bad} not deployment names ({names})")
        if self.compare and self.sweep is None:
            raise ValueError("compare needs a sweep (it reports where one design stops beating another)")
        if self.sweep is not None and self.sweep.param is not None:
            closed = isinstance(self.workload.arrival, Closed)
            if (self.sweep.param == "concurrency") != closed:
                raise ValueError(f"sweep.param '{self.sweep.param}' does not fit arrival process "
                                 f"'{self.workload.arrival.process}'")
            if isinstance(self.workload.arrival, TraceArrivals):
                raise ValueError("sweep.param 'rate_per_s' does not apply to trace arrivals: a "
                                 "trace replays its own times (change arrival.speedup instead)")
        return self
