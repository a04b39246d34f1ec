"""The `config` block of a summary row: what a resolved deployment is, in plain data."""
from __future__ import annotations

from simulator.deploy.deployments import ResolvedDeployment


def describe(dep: ResolvedDeployment) -> dict:
    d = {"target": dep.target.name, "draft": dep.draft.name if dep.draft else None,
         "gpu": dep.gpu.name, "tp": dep.tp, "replicas": dep.replicas,
         "gamma": dep.gamma if dep.strategy != "ar" else None,
         "alpha": None, "per_position": None,
         "price_per_gpu_hour": dep.price_per_gpu_hour, "memory": dep.memory.as_dict()}
    if dep.acceptance is not None:
        d["alpha"] = dep.acceptance.alpha
        d["per_position"] = dep.acceptance.per_position
    if dep.draft_placement is not None:
        d["draft_placement"] = dep.draft_placement
    if dep.draft_placement == "dedicated":
        d.update(draft_gpu=dep.draft_gpu.name, draft_gpus=dep.draft_gpus,
                 handshake_fixed_s=dep.handshake.fixed_s,
                 handshake_bytes_per_seq=dep.handshake.bytes_per_seq,
                 draft_memory=dep.draft_memory.as_dict())
    if dep.strategy == "ssd":
        d["ssd"] = dep.ssd.model_dump()
    if dep.acceptance_sdsl is not None:
        d["acceptance_sdsl"] = dep.acceptance_sdsl
    if dep.weights is not None and not dep.weights.default:
        d["weights"] = dep.weights.as_dict()
    if dep.gamma_choice is not None:
        d["gamma_auto"] = True
    if dep.warnings:
        d["warnings"] = list(dep.warnings)
    return d
