"""Sampling for the real serving loop: temperature softmax, token sampling, and the speculative
sampling rule (Leviathan et al. 2023; Chen et al. 2023) with its greedy (temperature 0) form."""
from __future__ import annotations

import torch


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
