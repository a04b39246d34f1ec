"""A small real serving loop in plain torch: continuous batching, AR and speculative decoding.

This is the ground truth the simulator is compared against (`specsim fidelity`, issue 6). It runs
real forward passes of random-weight models (`simulator.measure.torch_models`) and records what a
simulator needs to replay it: per request (arrival, first token, finish, token counts), per round
(accepted count), and per iteration (wall time of each part and the batch composition).

Workload: closed loop with fixed concurrency C. The first min(C, N) requests arrive at t=0; each
later request arrives when a running one finishes (its arrival time is that finish time) and is
admitted at the start of the next iteration.

One iteration:
  1. prefill: each newly admitted request is prefilled on its own (one target forward with
     q = prompt length, no padding between requests; in SD also one draft forward over the
     prompt minus its last token, see below). The first output token is sampled from the
     prefill logits and stamped when that request's prefill ends (TTFT).
  2. decode, for the whole running batch b (the new requests included):
     AR: one target forward with q = 1 per sequence, then sampling.
     SD: gamma draft forwards over the batch (the first with q = 2 per sequence, the others with
         q = 1), sampling a draft token each; one target forward with q = gamma + 1 per sequence
         (verification); the speculative sampling rule decides how many drafts each sequence
         keeps; both KV caches roll back the rejected positions.
  Attention over mixed context lengths pads to the batch maximum (see torch_models).

Cache invariants (SD): the target cache holds every token of a sequence except the last one
emitted (the "pending" token, fed at the next step). The draft cache holds every token except
the last TWO; its first step of a round therefore feeds 2 tokens per sequence. This keeps the
draft consistent without an extra draft forward when all gamma drafts are accepted (the token
the draft never saw, d_gamma, is fed together with the bonus token at the next round), and both
caches roll back by exactly gamma - accepted positions after every round.

A sequence never emits more tokens than it has left: the tokens of the last round are truncated
(`emitted` <= `accepted` + 1 in the round records).

Sampling rule (Leviathan et al. 2023; Chen et al. 2023): draft token x_i ~ q_i is accepted with
probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection the correction is sampled from
norm(max(0, p_i - q_i)); if all gamma are accepted a bonus token is sampled from p_{gamma+1}.
At temperature 0 both models are argmax: a draft is accepted iff it equals the target's argmax
and the correction is the target's argmax (exactly the target's greedy output).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from simulator.measure.real_pair import make_pair
from simulator.measure.sampling import greedy_accept, probs_from_logits, sample_tokens, speculative_accept
from simulator.measure.torch_models import Transformer

__all__ = ["probs_from_logits", "sample_tokens", "speculative_accept", "greedy_accept", "make_pair",
           "RealRun", "run_real", "acceptance_stats"]


@dataclass
class RealRun:
    """What one real run recorded. Times are seconds from the start of the run."""

    mode: str
    gamma: int
    temperature: float
    concurrency: int
    device: str
    requests: pd.DataFrame  # id, arrival, admitted, first_token, finish, prompt_tokens, output_tokens
    rounds: pd.DataFrame  # iteration, request, slot, batch, accepted, emitted (AR: accepted 0, emitted 1)
    # per iteration: t_start, t_end; prefill: n_prefill, prefill_lens, t_prefill_draft,
    # t_prefill_target; decode: batch, requests, ctx_lens (target cache lengths before the step),
    # ctx_sum, ctx_max, t_draft (gamma draft forwards + draft sampling; t_draft_steps each, the
    # first with q=2), t_target (the target forward: q=1 AR, q=gamma+1 SD), t_accept (sampling,
    # acceptance rule, rollback, bookkeeping), t_other (the rest of the iteration)
    iterations: pd.DataFrame
    tokens: list[np.ndarray] = field(repr=False)  # generated tokens per request (prompt excluded)
    prompts: list[np.ndarray] = field(repr=False)
    wall_s: float = 0.0


def acceptance_stats(rounds: pd.DataFrame, gamma: int) -> dict:
    """Measured acceptance from round records (the rule's `accepted`, not the truncated emission).

    alpha: maximum-likelihood per-token acceptance under the truncated-geometric model,
      sum(K) / sum(K + [K < gamma]);
    per_position: a_i = P(position i accepted | positions < i accepted), i = 1..gamma (vLLM's
      conditional per-position rates); mean_accepted: E[K]; tokens_per_round: E[K + 1].
    """
    k = rounds["accepted"].to_numpy()
    if len(k) == 0:
        return {"alpha": float("nan"), "per_position": [float("nan")] * gamma,
                "mean_accepted": float("nan"), "tokens_per_round": float("nan"), "rounds": 0}
    trials = k + (k < gamma)
    pos = []
    for i in range(1, gamma + 1):
        reached = (k >= i - 1).sum()
        pos.append(float((k >= i).sum() / reached) if reached else float("nan"))
    return {"alpha": float(k.sum() / trials.sum()), "per_position": pos,
            "mean_accepted": float(k.mean()), "tokens_per_round": float(k.mean() + 1), "rounds": int(len(k))}


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t0 = time.perf_counter()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - self.t0


class _Loop:
    """The state of one run_real call; `iteration()` is one iteration of the module docstring."""

    def __init__(self, target: Transformer, draft: Transformer | None, mode: str, gamma: int, T: float,
                 seed: int, prompts: list, prompt_lens: np.ndarray, output_lens: np.ndarray, C: int,
                 warmup: bool):
        self.target, self.draft, self.mode, self.gamma, self.T = target, draft, mode, gamma, T
        self.prompts, self.prompt_lens, self.output_lens, self.C = prompts, prompt_lens, output_lens, C
        n_req = self.n_req = len(prompt_lens)
        self.dev = target.embed.weight.device
        g_extra = gamma + 1 if mode == "sd" else 1
        max_len = int((prompt_lens + output_lens).max()) + g_extra + 1
        self.tcache = target.new_cache(C, max_len)
        self.dcache = draft.new_cache(C, max_len) if mode == "sd" else None
        self.gen = torch.Generator(device=self.dev).manual_seed(seed)
        if warmup:  # first calls allocate and pick kernels: keep them out of the timed run
            self._warmup(max_len)
        self.clock = _Clock(self.dev)
        self.free_slots = list(range(C))[::-1]
        self.queue = list(range(n_req))  # request ids in admission order
        self.arrival = np.full(n_req, np.nan)
        self.arrival[: min(C, n_req)] = 0.0
        self.admitted = np.full(n_req, np.nan)
        self.first_tok = np.full(n_req, np.nan)
        self.finish = np.full(n_req, np.nan)
        self.out_tokens: list[list[int]] = [[] for _ in range(n_req)]
        # running state, per request id
        self.slot_of: dict[int, int] = {}
        self.hist: dict[int, list[int]] = {}  # last two tokens of the sequence (the draft's first step)
        self.running: list[int] = []
        self.pending_arrivals: list[tuple[float, int]] = []
        self.rounds_rec, self.iters_rec = [], []
        self.it = 0

    def _warmup(self, max_len: int) -> None:
        w = torch.zeros((1, min(8, max_len - 2)), dtype=torch.long, device=self.dev)
        s0 = torch.zeros(1, dtype=torch.long)
        for _ in range(2):
            self.target(w, self.tcache, s0)
            self.target(w[:, :1], self.tcache, s0)
            self.tcache.reset(0)
            if self.mode == "sd":
                self.draft(w, self.dcache, s0)
                self.draft(w[:, :1], self.dcache, s0)
                self.dcache.reset(0)

    def finish_req(self, r: int, t: float) -> None:
        self.finish[r] = t
        s = self.slot_of.pop(r)
        self.tcache.reset(s)
        if self.dcache is not None:
            self.dcache.reset(s)
        self.free_slots.append(s)
        self.hist.pop(r, None)
        self.pending_arrivals.append((t, r))

    def admit(self, t_it0: float) -> list[int]:
        """Closed loop: requests wait in `queue`; their arrival is stamped when a slot frees."""
        new = []
        while self.queue and self.free_slots and not np.isnan(self.arrival[self.queue[0]]):
            r = self.queue.pop(0)
            self.slot_of[r] = self.free_slots.pop()
            self.admitted[r] = t_it0
            new.append(r)
        return new

    def prefill(self, new: list[int]) -> tuple[float, float, list[int]]:
        """Each new request on its own; returns (draft s, target s, prompt lengths)."""
        clock, dev = self.clock, self.dev
        t_pf_draft = t_pf_target = 0.0
        pf_lens = []
        for r in new:
            sl = torch.tensor([self.slot_of[r]])
            ptoks = torch.as_tensor(self.prompts[r], device=dev)[None, :]
            pf_lens.append(int(ptoks.shape[1]))
            if self.mode == "sd" and ptoks.shape[1] > 1:
                a = clock.now()
                self.draft(ptoks[:, :-1], self.dcache, sl, last_only=True)
                t_pf_draft += clock.now() - a
            a = clock.now()
            logits = self.target(ptoks, self.tcache, sl, last_only=True)
            tok, _ = sample_tokens(logits[:, -1], self.T, self.gen)
            tok = int(tok.item())
            b_ = clock.now()
            t_pf_target += b_ - a
            self.first_tok[r] = b_
            self.out_tokens[r].append(tok)
            self.hist[r] = [int(self.prompts[r][-1]), tok]
            if len(self.out_tokens[r]) >= self.output_lens[r]:
                self.finish_req(r, b_)
            else:
                self.running.append(r)
        return t_pf_draft, t_pf_target, pf_lens

    def decode_ar(self, b: int, slots, last) -> dict:
        clock = self.clock
        a = clock.now()
        logits = self.target(last[:, None], self.tcache, slots)
        t1 = clock.now()
        tok, _ = sample_tokens(logits[:, -1], self.T, self.gen)
        tok = tok.tolist()
        t_stamp = clock.now()
        return {"t_draft": 0.0, "t_draft_steps": [], "t_target": t1 - a, "t_accept": t_stamp - t1,
                "t_stamp": t_stamp, "n_acc": [0] * b, "emitted": [[t] for t in tok]}

    def decode_sd(self, batch: list[int], slots, last) -> dict:
        clock, gamma, dev = self.clock, self.gamma, self.dev
        a = clock.now()
        prev = torch.tensor([self.hist[r][-2] for r in batch], device=dev)
        inp = torch.stack([prev, last], dim=1)  # first draft step: q = 2
        d_toks, d_probs, t_draft_steps = [], [], []
        t_prev = a
        for _ in range(gamma):
            lg = self.draft(inp, self.dcache, slots)[:, -1]
            x, qp = sample_tokens(lg, self.T, self.gen)
            d_toks.append(x)
            d_probs.append(qp)
            inp = x[:, None]
            t_i = clock.now()
            t_draft_steps.append(t_i - t_prev)
            t_prev = t_i
        drafts = torch.stack(d_toks, dim=1)  # [b, gamma]
        t1 = t_prev
        tl = self.target(torch.cat([last[:, None], drafts], dim=1), self.tcache, slots)  # [b, gamma+1, V]
        t2 = clock.now()
        if self.T <= 0:
            n, nxt = greedy_accept(tl, drafts)
        else:
            n, nxt = speculative_accept(probs_from_logits(tl, self.T), torch.stack(d_probs, dim=1),
                                        drafts, self.gen)
        n_acc, nxt_l, dr = n.tolist(), nxt.tolist(), drafts.tolist()
        emitted = [dr[j][: n_acc[j]] + [nxt_l[j]] for j in range(len(batch))]
        rb = [gamma - k for k in n_acc]
        self.tcache.rollback_many(slots.tolist(), rb)
        self.dcache.rollback_many(slots.tolist(), rb)
        t_stamp = clock.now()
        return {"t_draft": t1 - a, "t_draft_steps": t_draft_steps, "t_target": t2 - t1,
                "t_accept": t_stamp - t2, "t_stamp": t_stamp, "n_acc": n_acc, "emitted": emitted}

    def emit(self, batch: list[int], step: dict) -> None:
        """Give each sequence its tokens (truncated to what it has left); finish the done ones."""
        still = []
        for j, r in enumerate(batch):
            left = int(self.output_lens[r]) - len(self.out_tokens[r])
            em = step["emitted"][j][:left]
            self.out_tokens[r].extend(em)
            self.hist[r] = ([self.hist[r][-1]] + em)[-2:]
            self.rounds_rec.append((self.it, r, self.slot_of[r], len(batch), step["n_acc"][j], len(em)))
            if len(self.out_tokens[r]) >= self.output_lens[r]:
                self.finish_req(r, step["t_stamp"])
            else:
                still.append(r)
        self.running = still

    def release_arrivals(self) -> None:
        """Closed loop: each finished request releases the next one, arriving at that finish time."""
        for t_fin, _ in self.pending_arrivals:
            nxt_ids = [q_ for q_ in self.queue if np.isnan(self.arrival[q_])]
            if nxt_ids:
                self.arrival[nxt_ids[0]] = t_fin
        self.pending_arrivals.clear()

    def iteration(self) -> None:
        t_it0 = self.clock.now()
        new = self.admit(t_it0)
        t_pf_draft, t_pf_target, pf_lens = self.prefill(new)
        batch = list(self.running)
        b = len(batch)
        ctx = [int(self.tcache.lens[self.slot_of[r]]) for r in batch]
        step = {"t_draft": 0.0, "t_draft_steps": [], "t_target": 0.0, "t_accept": 0.0}
        if b:
            slots = torch.tensor([self.slot_of[r] for r in batch])
            last = torch.tensor([self.hist[r][-1] for r in batch], device=self.dev)
            step = self.decode_ar(b, slots, last) if self.mode == "ar" else self.decode_sd(batch, slots, last)
            self.emit(batch, step)
        t_it1 = self.clock.now()
        self.release_arrivals()
        parts = t_pf_draft + t_pf_target + step["t_draft"] + step["t_target"] + step["t_accept"]
        self.iters_rec.append({
            "iteration": self.it, "t_start": t_it0, "t_end": t_it1,
            "n_prefill": len(new), "prefill_tokens": int(sum(pf_lens)), "prefill_lens": pf_lens,
            "t_prefill_draft": t_pf_draft, "t_prefill_target": t_pf_target,
            "batch": b, "requests": batch, "ctx_lens": ctx, "ctx_sum": int(sum(ctx)),
            "ctx_max": int(max(ctx)) if ctx else 0,
            "t_draft": step["t_draft"], "t_draft_steps": step["t_draft_steps"],
            "t_target": step["t_target"], "t_accept": step["t_accept"],
            "t_other": (t_it1 - t_it0) - parts,
        })
        self.it += 1

    def result(self) -> RealRun:
        wall = self.clock.now()
        req = pd.DataFrame({
            "id": np.arange(self.n_req), "arrival": self.arrival, "admitted": self.admitted,
            "first_token": self.first_tok, "finish": self.finish, "prompt_tokens": self.prompt_lens,
            "output_tokens": [len(o) for o in self.out_tokens],
        })
        rounds = pd.DataFrame(self.rounds_rec,
                              columns=["iteration", "request", "slot", "batch", "accepted", "emitted"])
        return RealRun(self.mode, self.gamma if self.mode == "sd" else 0, self.T, self.C, str(self.dev),
                       req, rounds, pd.DataFrame(self.iters_rec),
                       [np.asarray(o, dtype=np.int64) for o in self.out_tokens], self.prompts, wall)


def _checked_lengths(mode: str, draft, gamma: int, prompt_lens, output_lens) -> tuple[np.ndarray, np.ndarray]:
    if mode not in ("ar", "sd"):
        raise ValueError("mode must be 'ar' or 'sd'")
    if mode == "sd" and draft is None:
        raise ValueError("SD needs a draft model")
    if mode == "sd" and gamma < 1:
        raise ValueError("gamma must be >= 1")
    prompt_lens = np.asarray(prompt_lens, dtype=np.int64)
    output_lens = np.asarray(output_lens, dtype=np.int64)
    if len(output_lens) != len(prompt_lens) or len(prompt_lens) == 0:
        raise ValueError("prompt_lens and output_lens must have the same, positive length")
    if (prompt_lens < 1).any() or (output_lens < 1).any():
        raise ValueError("prompt and output lengths must be >= 1")
    return prompt_lens, output_lens


@torch.inference_mode()
def run_real(
    target: Transformer,
    draft: Transformer | None = None,
    *,
    prompt_lens,
    output_lens,
    concurrency: int,
    mode: str = "ar",
    gamma: int = 4,
    temperature: float = 0.0,
    seed: int = 0,
    prompts: list | None = None,
    warmup: bool = True,
) -> RealRun:
    """Serve len(prompt_lens) requests closed-loop at `concurrency`; AR (`mode="ar"`) or SD.

    prompt_lens, output_lens: per-request lengths (the caller samples them; output >= 1).
    Prompt token ids are drawn from a generator seeded with `seed` (the same for AR and SD), or
    given by `prompts`. Sampling uses a torch generator seeded with `seed`.
    """
    prompt_lens, output_lens = _checked_lengths(mode, draft, gamma, prompt_lens, output_lens)
    if prompts is None:
        rng = np.random.default_rng(seed)
        prompts = [rng.integers(0, target.shape.vocab, size=int(L), dtype=np.int64) for L in prompt_lens]
    else:
        prompts = [np.asarray(p, dtype=np.int64) for p in prompts]
        if [len(p) for p in prompts] != prompt_lens.tolist():
            raise ValueError("prompts do not match prompt_lens")
    loop = _Loop(target, draft, mode, gamma, float(temperature), seed, prompts, prompt_lens, output_lens,
                 int(concurrency), warmup)
    while loop.queue or loop.running:
        loop.iteration()
    return loop.result()
