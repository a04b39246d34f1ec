"""The SDSL summary of a run: per target, the law's optimal draft size next to the drafts the
scenario simulated with law-derived acceptance, ranked by simulated throughput."""
from __future__ import annotations

import math

from simulator.deploy.deployments import ResolvedDeployment
from simulator.physics import sdsl


def sdsl_summary(rows: list[dict], deps: list[ResolvedDeployment]) -> list[dict]:
    """Per target (and sweep point): the SDSL law's optimal draft size next to the drafts the
    scenario simulated with law-derived acceptance, ranked by simulated throughput.

    `rows` and `deps` are aligned: the summary row of each simulated deployment and its
    resolved deployment (whose gamma may differ between sweep points)."""
    groups: dict[tuple, list[tuple[dict, ResolvedDeployment]]] = {}
    for row, dep in zip(rows, deps, strict=True):
        if dep.acceptance_sdsl is None:
            continue
        point = tuple(row.get("sweep", {}).items())
        key = (dep.target.name, dep.gpu.name, dep.tp, dep.latency_source, point)
        groups.setdefault(key, []).append((row, dep))
    out = []
    for (target, gpu, tp, source, point), group in groups.items():
        dep0 = group[0][1]
        m, info = dep0.target.params, dep0.acceptance_sdsl
        d = info.get("training_tokens", sdsl.DEFAULT_TRAINING_TOKENS)
        law = sdsl.PPL_LAWS[info.get("ppl_law", sdsl.BESIROGLU_2024.name)]
        n_star = sdsl.optimal_draft_size_linear(m)
        drafts = sorted(({"design": row["name"], "draft": dep.draft.name,
                          "draft_params": dep.draft.params, "variant": dep.acceptance_sdsl["variant"],
                          "alpha": dep.acceptance.alpha, "gamma": dep.gamma,
                          "throughput_tokens_per_s": row["throughput_tokens_per_s"]}
                         for row, dep in group), key=lambda r: -r["throughput_tokens_per_s"])
        central = [r for r in drafts if r["variant"] == "alpha"]  # band ends left out of the verdict
        nearest = min(central, key=lambda r: abs(math.log(r["draft_params"] / n_star)))
        entry = {"target": target, "gpu": gpu, "tp": tp, "latency_source": source,
                 "target_params": m, "n_star_params": n_star,
                 "n_star_optimizer_params": sdsl.optimal_draft_size(m, d, law).n_params,
                 "n_star_training_tokens": d, "n_star_ppl_law": law.name,
                 "best_by_throughput": central[0]["design"], "nearest_to_n_star": nearest["design"],
                 "drafts": drafts}
        if point:
            entry["sweep"] = dict(point)
        out.append(entry)
    return out
