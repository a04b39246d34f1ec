"""The real serving loop's host work per step (sampling, the acceptance rule, copies), timed by a
micro-benchmark of the real engine's own functions; the forward passes are in the profile."""
from __future__ import annotations

import time

import numpy as np


def measure_host_overhead(vocab: int, gamma: int, temperature: float, batches, *, device: str = "cpu",
                          repeats: int = 15, seed: int = 0) -> dict:
    """Seconds of host work per AR step and per SD round beyond the forward passes, per batch.

    Times the real engine's own functions on random logits: AR = sampling b tokens and copying
    them to the host; SD = gamma draft samplings + target probabilities + the acceptance rule +
    copies + KV rollback bookkeeping. Medians over `repeats`."""
    import torch

    from simulator.measure.sampling import (greedy_accept, probs_from_logits, sample_tokens,
                                            speculative_accept)

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    out = {"batch": [], "ar_s": [], "sd_s": []}
    T = float(temperature)
    for b in batches:
        lg1 = torch.randn(b, vocab, device=dev, generator=gen) * 4
        lgv = torch.randn(b, gamma + 1, vocab, device=dev, generator=gen) * 4

        def ar():
            tok, _ = sample_tokens(lg1, T, gen)
            return tok.tolist()

        def sd():
            toks, qs = [], []
            for _ in range(gamma):
                x, qp = sample_tokens(lg1, T, gen)
                toks.append(x)
                qs.append(qp)
            drafts = torch.stack(toks, 1)
            if T <= 0:
                n, nxt = greedy_accept(lgv, drafts)
            else:
                n, nxt = speculative_accept(probs_from_logits(lgv, T), torch.stack(qs, 1), drafts, gen)
            n.tolist(), nxt.tolist(), drafts.tolist()
            return [gamma - k for k in n.tolist()]

        res = []
        for fn in (ar, sd):
            fn()
            ts = []
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                ts.append(time.perf_counter() - t0)
            res.append(float(np.median(ts)))
        out["batch"].append(int(b))
        out["ar_s"].append(res[0])
        out["sd_s"].append(res[1])
    return out


def overhead_at(host: dict, mode: str, batch: float) -> float:
    """Host overhead of one step at `batch` (linear interpolation over the measured batches)."""
    return float(np.interp(batch, host["batch"], host[f"{mode}_s"]))
