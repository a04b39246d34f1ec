"""The random-weight target/draft pair the real serving loop runs (`specsim fidelity`)."""
from __future__ import annotations

import torch

from simulator.hardware.models import MODELS, ModelArch
from simulator.measure.torch_models import Transformer, build_model, truncated_copy


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
