"""The fit check: every request of a workload must fit the deployment's context and KV cache."""
from __future__ import annotations

from simulator.config.workload import Requests
from simulator.deploy.deployments import ResolvedDeployment
from simulator.errors import SpecsimError


def check_fits(dep: ResolvedDeployment, req: Requests, field: str) -> None:
    """Every request must fit the model's context and, alone, the deployment's KV cache."""
    longest = int((req.prompt + req.output).max())
    if longest > dep.target.max_position:
        raise SpecsimError(f"{field}: a request of {longest} tokens (prompt + output) exceeds "
                           f"{dep.target.name}'s context of {dep.target.max_position}; lower "
                           "workload max lengths")
    bs = dep.scheduler.block_size
    need = -(-(longest + dep.gamma) // bs) * bs
    if need > dep.memory.kv_capacity_tokens:
        raise SpecsimError(f"{field}: a request of {longest} tokens needs {need} KV slots but the "
                           f"deployment holds {dep.memory.kv_capacity_tokens}; lower the lengths "
                           "or raise tp / gpu_memory_utilization")
