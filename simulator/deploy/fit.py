"""The fit check: every request of a workload must fit the model's context and, alone, the
deployment's KV cache as the engine reserves it (simulator/deploy/kv_blocks.py)."""
from __future__ import annotations

from simulator.config.workload import Requests
from simulator.deploy.deployments import ResolvedDeployment
from simulator.deploy.kv_blocks import (admission_limit, blocks_for, largest_prefill_tokens,
                                        request_peak_blocks, total_blocks)
from simulator.errors import SpecsimError


def check_fits(dep: ResolvedDeployment, req: Requests, field: str) -> None:
    """Every request must fit the model's context and, alone, the deployment's KV cache: its
    peak reservation (context + query + lookahead slots at its last decode step) within the
    cache, and its largest (re)prefill within what admission may fill."""
    longest = int((req.prompt + req.output).max())
    if longest > dep.target.max_position:
        raise SpecsimError(f"{field}: a request of {longest} tokens (prompt + output) exceeds "
                           f"{dep.target.name}'s context of {dep.target.max_position}; lower "
                           "workload max lengths")
    bs, cap = dep.scheduler.block_size, dep.memory.kv_capacity_tokens
    total = total_blocks(cap, bs)
    peak = request_peak_blocks(req.prompt, req.output, dep.gamma, bs)
    worst = int(peak.argmax())
    if int(peak[worst]) > total:
        n = int(req.prompt[worst] + req.output[worst])
        raise SpecsimError(f"{field}: a request of {n} tokens needs {int(peak[worst])} KV blocks "
                           f"of {bs} tokens at its last step (context + query + lookahead slots, "
                           f"gamma {dep.gamma}) but the deployment holds {total} blocks "
                           f"({cap} tokens); lower the lengths or raise tp / "
                           "gpu_memory_utilization")
    sch, eng = dep.scheduler, dep.engine
    tokens = largest_prefill_tokens(req.prompt, req.output)
    if not sch.chunked_prefill and tokens > sch.max_num_batched_tokens:
        # vLLM refuses max_num_batched_tokens < max_model_len without chunked prefill
        # (vllm/config.py v0.6 SchedulerConfig._verify_args): a prefill always runs whole.
        raise SpecsimError(f"{field}.scheduler.max_num_batched_tokens: {sch.max_num_batched_tokens} "
                           f"is below the largest prefill, {tokens} tokens (a prompt, or a prompt "
                           "plus the tokens recomputed after a preemption), and without chunked "
                           "prefill a prefill runs whole in one step; raise it or set "
                           "chunked_prefill: true")
    if sch.chunked_prefill and not eng.whole_prompt_admission:
        tokens = min(tokens, sch.max_num_batched_tokens)
    limit = admission_limit(total, eng.kv_watermark)
    if int(blocks_for(tokens, bs)) > limit:
        raise SpecsimError(f"{field}: a prefill of {tokens} tokens needs {blocks_for(tokens, bs)} "
                           f"KV blocks but admission may fill only {limit} of {total} (engine "
                           f"kv_watermark {eng.kv_watermark}); lower the lengths or raise tp / "
                           "gpu_memory_utilization")
