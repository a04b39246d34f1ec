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

from simulator.hardware.models import MODELS, ModelArch
from simulator.measure.torch_models import Transformer, build_model, truncated_copy

__all__ = [
    "probs_from_logits",
    "sample_tokens",
    "speculative_accept",
    "greedy_accept",
    "make_pair",
    "RealRun",
    "run_real",
    "acceptance_stats",
]


# ----------------------------------------------------------------------- pure sampling helpers
def probs_from_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax at `temperature` (> 0), in float32 or wider."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for probabilities; use argmax for greedy")
    x = logits.float() if logits.dtype not in (torch.float32, torch.float64) else logits
    return torch.softmax(x / temperature, dim=-1)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None):
    """Sample one token per row of logits [..., V]; returns (tokens [...], probs [..., V] or None)."""
    if temperature <= 0:
        return logits.argmax(-1), None
    p = probs_from_logits(logits, temperature)
    flat = p.reshape(-1, p.shape[-1])
    tok = torch.multinomial(flat, 1, generator=generator).view(p.shape[:-1])
    return tok, p


def speculative_accept(
    p: torch.Tensor,
    q: torch.Tensor,
    draft_tokens: torch.Tensor,
    generator: torch.Generator | None = None,
    residual: str = "max0",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative sampling rule, vectorised over a batch.

    p: target probabilities [b, gamma+1, V]; q: draft probabilities [b, gamma, V];
    draft_tokens [b, gamma] (x_i ~ q_i). Returns (n_accepted [b] in 0..gamma, next_token [b]):
    the correction token sampled from norm(max(0, p_n - q_n)) at the first rejected position n,
    or the bonus token from p_gamma+1 when all were accepted.

    `residual="p"` samples the correction from p_n instead: a deliberately WRONG sampler, kept
    only as a negative control for tests (its output distribution is not p).
    """
    b, g = draft_tokens.shape
    idx = draft_tokens[..., None]
    px = p[:, :g].gather(-1, idx).squeeze(-1)
    qx = q.gather(-1, idx).squeeze(-1)
    u = torch.rand((b, g), generator=generator, device=p.device, dtype=p.dtype)
    ok = u * qx < px  # u < p/q without dividing (q(x) > 0 since x ~ q)
    n = ok.to(torch.int64).cumprod(-1).sum(-1)  # leading accepts
    rows = torch.arange(b, device=p.device)
    p_n = p[rows, n]  # [b, V]
    if residual == "max0":
        q_pad = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)  # q_{gamma+1} := 0 -> bonus from p
        r = (p_n - q_pad[rows, n]).clamp_min(0)
        mass = r.sum(-1, keepdim=True)
        r = torch.where(mass > 0, r / mass.clamp_min(1e-30), p_n)  # p == q exactly: any p-sample is fine
    elif residual == "p":
        r = p_n
    else:
        raise ValueError("residual must be 'max0' (correct) or 'p' (negative control)")
    nxt = torch.multinomial(r, 1, generator=generator).squeeze(-1)
    return n, nxt


def greedy_accept(target_logits: torch.Tensor, draft_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature 0: accept drafts while they equal the target's argmax; the next token is the
    target's argmax after the accepted prefix. target_logits [b, gamma+1, V], drafts [b, gamma]."""
    t = target_logits.argmax(-1)
    g = draft_tokens.shape[1]
    n = (draft_tokens == t[:, :g]).to(torch.int64).cumprod(-1).sum(-1)
    nxt = t[torch.arange(t.shape[0], device=t.device), n]
    return n, nxt


# ---------------------------------------------------------------------------------- the models
def make_pair(
    target: str | ModelArch = "tiny-target",
    draft: str | ModelArch = "tiny-draft",
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    residual_scale: float = 0.1,
    logit_std: float = 4.0,
    draft_noise: float = 0.0,
) -> tuple[Transformer, Transformer]:
    """Target and draft with random weights and a non-trivial acceptance between them.

    The draft is a truncated copy of the target: its first `draft.n_layers` layers (copied, so it
    is a separate model with its own weights and KV cache, timed separately) sharing the target's
    embedding, final norm and LM head. The draft architecture must have the target's widths.

    Why these init knobs. Both models share the path embedding -> final norm -> LM head, a
    random "bigram" component that predicts the next token from the current one alone, and they
    differ by the context-dependent corrections the target's later layers add. `residual_scale`
    (the std of every layer's residual-branch output relative to the unit-std embedding) sets the
    balance: with the GPT-2 style 1/sqrt(2 L) (= 0.25 for 8 layers) tiny-draft accepts ~0.54 of
    tiny-target's tokens at T=1 and ~0.44 at T=0; 0.1 gives ~0.8 at T=1 and ~0.7 at T=0
    (measured by `acceptance_stats` on real runs, never set); towards 0 the bigram part dominates
    and alpha -> 1 (trivial), towards 1 the layers dominate and alpha -> ~0.1. Tied embeddings
    are untied (same shapes and cost), since a random tied model only repeats its input token
    (its logit is |e|^2) and both models would then agree trivially. `draft_noise` (relative
    Gaussian noise on the draft's copied layer weights) lowers alpha further if wanted. The logit
    scale (`logit_std` = 4) gives next-token entropies of ~3 nats out of ln(4096) = 8.3: peaked
    but not one-hot.
    """
    t_arch = MODELS[target] if isinstance(target, str) else target
    d_arch = MODELS[draft] if isinstance(draft, str) else draft
    for f in ("hidden", "n_heads", "n_kv_heads", "head_dim", "ffn", "vocab", "family"):
        if getattr(t_arch, f) != getattr(d_arch, f):
            raise ValueError(f"draft {d_arch.name} differs from target {t_arch.name} in {f}: "
                             "a truncated copy needs the same widths")
    if d_arch.n_layers >= t_arch.n_layers:
        raise ValueError("the draft must have fewer layers than the target")
    tgt = build_model(t_arch, dtype=dtype, device=device, seed=seed, residual_scale=residual_scale,
                      logit_std=logit_std, untie_embeddings=True)
    drf = truncated_copy(tgt, d_arch.n_layers)
    if draft_noise > 0:
        g = torch.Generator(device=tgt.embed.weight.device).manual_seed(seed + 7919)
        with torch.no_grad():
            for p in drf.layers.parameters():
                p.add_(torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype) * p.std() * draft_noise)
    return tgt, drf


# ---------------------------------------------------------------------------------- the engine
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
    if mode not in ("ar", "sd"):
        raise ValueError("mode must be 'ar' or 'sd'")
    if mode == "sd" and draft is None:
        raise ValueError("SD needs a draft model")
    if mode == "sd" and gamma < 1:
        raise ValueError("gamma must be >= 1")
    prompt_lens = np.asarray(prompt_lens, dtype=np.int64)
    output_lens = np.asarray(output_lens, dtype=np.int64)
    n_req = len(prompt_lens)
    if len(output_lens) != n_req or n_req == 0:
        raise ValueError("prompt_lens and output_lens must have the same, positive length")
    if (prompt_lens < 1).any() or (output_lens < 1).any():
        raise ValueError("prompt and output lengths must be >= 1")
    vocab = target.shape.vocab
    if prompts is None:
        rng = np.random.default_rng(seed)
        prompts = [rng.integers(0, vocab, size=int(L), dtype=np.int64) for L in prompt_lens]
    else:
        prompts = [np.asarray(p, dtype=np.int64) for p in prompts]
        if [len(p) for p in prompts] != prompt_lens.tolist():
            raise ValueError("prompts do not match prompt_lens")

    dev = target.embed.weight.device
    C = int(concurrency)
    g_extra = gamma + 1 if mode == "sd" else 1
    max_len = int((prompt_lens + output_lens).max()) + g_extra + 1
    tcache = target.new_cache(C, max_len)
    dcache = draft.new_cache(C, max_len) if mode == "sd" else None
    gen = torch.Generator(device=dev).manual_seed(seed)
    T = float(temperature)

    if warmup:  # first calls allocate and pick kernels: keep them out of the timed run
        w = torch.zeros((1, min(8, max_len - 2)), dtype=torch.long, device=dev)
        s0 = torch.zeros(1, dtype=torch.long)
        for _ in range(2):
            target(w, tcache, s0)
            target(w[:, :1], tcache, s0)
            tcache.reset(0)
            if mode == "sd":
                draft(w, dcache, s0)
                draft(w[:, :1], dcache, s0)
                dcache.reset(0)

    clock = _Clock(dev)
    free_slots = list(range(C))[::-1]
    queue = list(range(n_req))  # request ids in admission order
    arrival = np.full(n_req, np.nan)
    arrival[: min(C, n_req)] = 0.0
    admitted = np.full(n_req, np.nan)
    first_tok = np.full(n_req, np.nan)
    finish = np.full(n_req, np.nan)
    out_tokens: list[list[int]] = [[] for _ in range(n_req)]
    # running state, per request id
    slot_of: dict[int, int] = {}
    hist: dict[int, list[int]] = {}  # last two tokens of the sequence (for the draft's first step)
    running: list[int] = []
    pending_arrivals: list[tuple[float, int]] = []
    rounds_rec, iters_rec = [], []
    it = 0

    def finish_req(r: int, t: float):
        finish[r] = t
        s = slot_of.pop(r)
        tcache.reset(s)
        if dcache is not None:
            dcache.reset(s)
        free_slots.append(s)
        hist.pop(r, None)

    while queue or running:
        t_it0 = clock.now()
        # ---- admission (closed loop: requests wait in `queue`; arrival stamped when a slot freed)
        new = []
        while queue and free_slots and not np.isnan(arrival[queue[0]]):
            r = queue.pop(0)
            slot_of[r] = free_slots.pop()
            admitted[r] = t_it0
            new.append(r)
        # ---- prefill
        t_pf_draft = t_pf_target = 0.0
        pf_lens = []
        for r in new:
            s = slot_of[r]
            sl = torch.tensor([s])
            ptoks = torch.as_tensor(prompts[r], device=dev)[None, :]
            pf_lens.append(int(ptoks.shape[1]))
            if mode == "sd" and ptoks.shape[1] > 1:
                a = clock.now()
                draft(ptoks[:, :-1], dcache, sl, last_only=True)
                t_pf_draft += clock.now() - a
            a = clock.now()
            logits = target(ptoks, tcache, sl, last_only=True)
            tok, _ = sample_tokens(logits[:, -1], T, gen)
            tok = int(tok.item())
            b_ = clock.now()
            t_pf_target += b_ - a
            first_tok[r] = b_
            out_tokens[r].append(tok)
            hist[r] = [int(prompts[r][-1]), tok]
            if len(out_tokens[r]) >= output_lens[r]:
                finish_req(r, b_)
                pending_arrivals.append((b_, r))
            else:
                running.append(r)
        # ---- one decode step for the running batch
        batch = list(running)
        b = len(batch)
        ctx = [int(tcache.lens[slot_of[r]]) for r in batch]
        t_draft = t_target = t_accept = 0.0
        t_draft_steps: list[float] = []
        if b:
            slots = torch.tensor([slot_of[r] for r in batch])
            last = torch.tensor([hist[r][-1] for r in batch], device=dev)
            if mode == "ar":
                a = clock.now()
                logits = target(last[:, None], tcache, slots)
                t1 = clock.now()
                tok, _ = sample_tokens(logits[:, -1], T, gen)
                tok = tok.tolist()
                t_target = t1 - a
                t_stamp = clock.now()
                t_accept = t_stamp - t1
                n_acc = [0] * b
                emitted_lists = [[t] for t in tok]
            else:
                a = clock.now()
                prev = torch.tensor([hist[r][-2] for r in batch], device=dev)
                inp = torch.stack([prev, last], dim=1)  # first draft step: q = 2
                d_toks, d_probs = [], []
                t_prev = a
                for i in range(gamma):
                    lg = draft(inp, dcache, slots)[:, -1]
                    x, qp = sample_tokens(lg, T, gen)
                    d_toks.append(x)
                    d_probs.append(qp)
                    inp = x[:, None]
                    t_i = clock.now()
                    t_draft_steps.append(t_i - t_prev)
                    t_prev = t_i
                drafts = torch.stack(d_toks, dim=1)  # [b, gamma]
                t1 = t_prev
                t_draft = t1 - a
                v_in = torch.cat([last[:, None], drafts], dim=1)  # [b, gamma+1]
                tl = target(v_in, tcache, slots)  # [b, gamma+1, V]
                t2 = clock.now()
                t_target = t2 - t1
                if T <= 0:
                    n, nxt = greedy_accept(tl, drafts)
                else:
                    p = probs_from_logits(tl, T)
                    q = torch.stack(d_probs, dim=1)
                    n, nxt = speculative_accept(p, q, drafts, gen)
                n_acc = n.tolist()
                nxt_l = nxt.tolist()
                dr = drafts.tolist()
                emitted_lists = [dr[j][: n_acc[j]] + [nxt_l[j]] for j in range(b)]
                rb = [gamma - k for k in n_acc]
                tcache.rollback_many(slots.tolist(), rb)
                dcache.rollback_many(slots.tolist(), rb)
                t_stamp = clock.now()
                t_accept = t_stamp - t2
            still = []
            for j, r in enumerate(batch):
                left = int(output_lens[r]) - len(out_tokens[r])
                em = emitted_lists[j][:left]
                out_tokens[r].extend(em)
                seq_tail = ([hist[r][-1]] + em)[-2:]
                hist[r] = seq_tail
                rounds_rec.append((it, r, slot_of[r], b, n_acc[j], len(em)))
                if len(out_tokens[r]) >= output_lens[r]:
                    finish_req(r, t_stamp)
                    pending_arrivals.append((t_stamp, r))
                else:
                    still.append(r)
            running = still
        t_it1 = clock.now()
        # closed loop: each finished request releases the next one, arriving at that finish time
        for t_fin, _ in pending_arrivals:
            nxt_ids = [q_ for q_ in queue if np.isnan(arrival[q_])]
            if nxt_ids:
                arrival[nxt_ids[0]] = t_fin
        pending_arrivals.clear()
        iters_rec.append({
            "iteration": it, "t_start": t_it0, "t_end": t_it1,
            "n_prefill": len(new), "prefill_tokens": int(sum(pf_lens)), "prefill_lens": pf_lens,
            "t_prefill_draft": t_pf_draft, "t_prefill_target": t_pf_target,
            "batch": b, "requests": batch, "ctx_lens": ctx, "ctx_sum": int(sum(ctx)), "ctx_max": int(max(ctx)) if ctx else 0,
            "t_draft": t_draft, "t_draft_steps": t_draft_steps, "t_target": t_target, "t_accept": t_accept,
            "t_other": (t_it1 - t_it0) - (t_pf_draft + t_pf_target + t_draft + t_target + t_accept),
        })
        it += 1

    wall = clock.now()
    req = pd.DataFrame({
        "id": np.arange(n_req), "arrival": arrival, "admitted": admitted, "first_token": first_tok,
        "finish": finish, "prompt_tokens": prompt_lens, "output_tokens": [len(o) for o in out_tokens],
    })
    rounds = pd.DataFrame(rounds_rec, columns=["iteration", "request", "slot", "batch", "accepted", "emitted"])
    return RealRun(mode, gamma if mode == "sd" else 0, T, C, str(dev), req, rounds, pd.DataFrame(iters_rec),
                   [np.asarray(o, dtype=np.int64) for o in out_tokens], prompts, wall)
