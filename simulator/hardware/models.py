"""Model catalogue: dense decoder-only architectures, as their public configs describe them.

Everything here is data plus a few derived sizes (weight bytes, KV bytes per token).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from simulator.hardware.quant import NONE, WeightFormat

BYTES_PER_DTYPE = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


@dataclass(frozen=True)
class ModelArch:
    """A dense decoder-only transformer, as its public config describes it."""

    name: str
    family: str  # "llama" (RMSNorm, RoPE, GQA, SwiGLU) or "opt" (LayerNorm, learned pos, MHA, ReLU MLP)
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    params: float  # published parameter count
    tied_embeddings: bool = False
    qkv_bias: bool = False
    gated_mlp: bool = True
    max_position: int = 131072
    hf_id: str = ""

    # Parameter counts of the parts the latency models need (per whole model, no TP split).
    @property
    def attn_params_per_layer(self) -> int:
        q = self.hidden * self.n_heads * self.head_dim
        kv = 2 * self.hidden * self.n_kv_heads * self.head_dim
        o = self.n_heads * self.head_dim * self.hidden
        return q + kv + o

    @property
    def mlp_params_per_layer(self) -> int:
        return (3 if self.gated_mlp else 2) * self.hidden * self.ffn

    @property
    def linear_params(self) -> int:
        """Weights of all transformer layers' GEMMs (embeddings and LM head excluded)."""
        return self.n_layers * (self.attn_params_per_layer + self.mlp_params_per_layer)

    @property
    def computed_params(self) -> int:
        """Parameter count derived from the architecture (norms and biases included)."""
        emb = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        if self.family == "opt":
            emb += (self.max_position + 2) * self.hidden
        norms = self.n_layers * 2 * self.hidden * (2 if self.family == "opt" else 1)
        bias = 0
        if self.qkv_bias:
            bias += self.n_layers * (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        if self.family == "opt":  # OPT has biases on every linear layer
            bias += self.n_layers * (self.hidden + self.ffn + self.hidden)
        return self.linear_params + emb + norms + bias

    def gemm_shapes(self, tp: int = 1) -> list[tuple[float, float]]:
        """(in, out) features of one layer's GEMMs on one GPU at tensor parallel `tp`: QKV, O,
        MLP up(+gate), MLP down (KV heads replicated when tp exceeds them, as vLLM does)."""
        heads, kv_heads = self.n_heads // tp, max(1, -(-self.n_kv_heads // tp))
        return [(self.hidden, (heads + 2 * kv_heads) * self.head_dim),
                (heads * self.head_dim, self.hidden),
                (self.hidden, (2 if self.gated_mlp else 1) * self.ffn // tp),
                (self.ffn // tp, self.hidden)]

    def weight_bytes(self, dtype: str = "bf16", quant: WeightFormat = NONE) -> float:
        """Bytes of all weights: the layers' GEMMs in `quant` (simulator/hardware/quant.py), the
        rest (embeddings, LM head, norms, biases) in `dtype`."""
        by = BYTES_PER_DTYPE[dtype]
        if not quant.quantized:
            return self.computed_params * by
        gemms = self.n_layers * sum(quant.gemm_bytes(k, n, by) for k, n in self.gemm_shapes())
        return gemms + (self.computed_params - self.linear_params) * by

    def kv_bytes_per_token(self, tp: int = 1, dtype: str = "bf16") -> float:
        """K and V bytes one token occupies on ONE GPU at tensor parallel `tp`.

        KV heads are split across GPUs; when tp exceeds the KV head count they are replicated
        (each GPU keeps at least one head), as vLLM does.
        """
        heads_per_gpu = max(1, -(-self.n_kv_heads // tp))
        return 2 * self.n_layers * heads_per_gpu * self.head_dim * BYTES_PER_DTYPE[dtype]

    def check_tp(self, tp: int) -> str | None:
        """Return why this model cannot be split `tp` ways, or None if it can."""
        if tp < 1:
            return "tp must be >= 1"
        if self.n_heads % tp:
            return f"tp={tp} must divide the attention head count ({self.n_heads})"
        if self.n_kv_heads % tp and tp % self.n_kv_heads:
            return f"tp={tp} must divide, or be a multiple of, the KV head count ({self.n_kv_heads})"
        return None


def _llama(name, hf, L, h, nh, nkv, hd, ffn, vocab, params, tied=False, maxpos=131072):
    return ModelArch(name, "llama", L, h, nh, nkv, hd, ffn, vocab, params, tied, False, True, maxpos, hf)


def _qwen(name, hf, L, h, nh, nkv, hd, ffn, vocab, params, tied=False, bias=True, maxpos=32768):
    return ModelArch(name, "llama", L, h, nh, nkv, hd, ffn, vocab, params, tied, bias, True, maxpos, hf)


def _opt(name, hf, L, h, nh, ffn, params):
    return ModelArch(name, "opt", L, h, nh, nh, h // nh, ffn, 50272, params, True, True, False, 2048, hf)


MODELS: dict[str, ModelArch] = {
    m.name: m
    for m in [
        _llama("llama-3.2-1b", "meta-llama/Llama-3.2-1B", 16, 2048, 32, 8, 64, 8192, 128256, 1.24e9, tied=True),
        _llama("llama-3.2-3b", "meta-llama/Llama-3.2-3B", 28, 3072, 24, 8, 128, 8192, 128256, 3.21e9, tied=True),
        _llama("llama-3.1-8b", "meta-llama/Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256, 8.03e9),
        _llama("llama-3.1-70b", "meta-llama/Llama-3.1-70B", 80, 8192, 64, 8, 128, 28672, 128256, 70.6e9),
        _llama("llama-3.1-405b", "meta-llama/Llama-3.1-405B", 126, 16384, 128, 8, 128, 53248, 128256, 405.9e9),
        _qwen("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", 24, 896, 14, 2, 64, 4864, 151936, 0.494e9, tied=True),
        _qwen("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", 28, 1536, 12, 2, 128, 8960, 151936, 1.54e9, tied=True),
        _qwen("qwen2.5-3b", "Qwen/Qwen2.5-3B", 36, 2048, 16, 2, 128, 11008, 151936, 3.09e9, tied=True),
        _qwen("qwen2.5-7b", "Qwen/Qwen2.5-7B", 28, 3584, 28, 4, 128, 18944, 152064, 7.62e9),
        _qwen("qwen2.5-14b", "Qwen/Qwen2.5-14B", 48, 5120, 40, 8, 128, 13824, 152064, 14.7e9),
        _qwen("qwen2.5-32b", "Qwen/Qwen2.5-32B", 64, 5120, 40, 8, 128, 27648, 152064, 32.5e9),
        _qwen("qwen2.5-72b", "Qwen/Qwen2.5-72B", 80, 8192, 64, 8, 128, 29568, 152064, 72.7e9),
        _qwen("qwen3-0.6b", "Qwen/Qwen3-0.6B", 28, 1024, 16, 8, 128, 3072, 151936, 0.596e9, tied=True,
              bias=False, maxpos=40960),
        # Qwen3-1.7B: huggingface.co/Qwen/Qwen3-1.7B/blob/main/config.json (Qwen3ForCausalLM:
        # 28 layers, hidden 2048, 16 heads, 8 KV heads, head_dim 128, intermediate 6144, vocab
        # 151936, tied embeddings, no attention bias, 40960 positions); "1.7B" is the model card's
        # count (1.4B non-embedding). Cross-check: vLLM's log of Qwen3-32B with this draft
        # (github.com/tomasruizt/vllm-scripts results/logs-2026-01-23, scenarios/vllm-v1-draft-qwen3-32b.yaml)
        # holds 32,528 KV tokens in 11.42 GiB: (64 + 28) layers x 8 KV heads x 128 x 2 x 2 B a token.
        _qwen("qwen3-1.7b", "Qwen/Qwen3-1.7B", 28, 2048, 16, 8, 128, 6144, 151936, 1.7e9, tied=True,
              bias=False, maxpos=40960),
        _qwen("qwen3-32b", "Qwen/Qwen3-32B", 64, 5120, 64, 8, 128, 25600, 151936, 32.8e9, bias=False,
              maxpos=40960),
        # Models Vidur profiled (../shared/data/vidur/profiling; simulator/measure/vidur.py),
        # named by their HF repository slug, architectures from each repository's config.json
        # (huggingface.co/<hf_id>/blob/main/config.json): layers, hidden, heads, KV heads,
        # intermediate size, vocab, max positions. Vidur pads Llama-2/CodeLlama's vocab to 32768.
        # Parameter counts: the HF model pages' (6.74B, 69.0B, 33.7B, 8.03B, 70.6B, 2.78B), the model cards'
        # round figures for Qwen-72B (72B) and internlm-20b (20B).
        _llama("llama-2-7b-hf", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 128, 11008, 32000, 6.74e9,
               maxpos=4096),
        _llama("llama-2-70b-hf", "meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 128, 28672, 32000, 68.98e9,
               maxpos=4096),
        _llama("codellama-34b-instruct-hf", "codellama/CodeLlama-34b-Instruct-hf", 48, 8192, 64, 8, 128,
               22016, 32000, 33.7e9, maxpos=16384),
        # Llama 3 (not 3.1): Llama 3.1's layers without its rope scaling, 8192 positions.
        _llama("llama-3-8b", "meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 128, 14336, 128256, 8.03e9,
               maxpos=8192),
        _llama("llama-3-70b", "meta-llama/Meta-Llama-3-70B", 80, 8192, 64, 8, 128, 28672, 128256, 70.6e9,
               maxpos=8192),
        # Qwen (v1): config intermediate_size 49152 counts both SwiGLU halves (w1, w2 of 24576
        # each, QWenMLP); bias on the fused QKV (c_attn) only ("no_bias": true for the rest).
        _qwen("qwen-72b", "Qwen/Qwen-72B", 80, 8192, 64, 64, 128, 24576, 152064, 72e9),
        # internlm-20b: LLaMA-style (RMSNorm, RoPE, SwiGLU), "bias": false.
        _llama("internlm-20b", "internlm/internlm-20b", 60, 5120, 40, 40, 128, 13824, 103168, 20e9,
               maxpos=4096),
        # phi-2: parallel attention/MLP block, LayerNorm, partial rotary (0.4), GELU (not gated),
        # biases on every linear layer; the roofline sees only its GEMM shapes, which are these.
        ModelArch("phi-2", "llama", 32, 2560, 32, 32, 80, 10240, 51200, 2.78e9, False, True, False,
                  2048, "microsoft/phi-2"),
        _opt("opt-125m", "facebook/opt-125m", 12, 768, 12, 3072, 125e6),
        _opt("opt-350m", "facebook/opt-350m", 24, 1024, 16, 4096, 331e6),
        _opt("opt-1.3b", "facebook/opt-1.3b", 24, 2048, 32, 8192, 1.3e9),
        _opt("opt-2.7b", "facebook/opt-2.7b", 32, 2560, 32, 10240, 2.7e9),
        _opt("opt-6.7b", "facebook/opt-6.7b", 32, 4096, 32, 16384, 6.7e9),
        _opt("opt-13b", "facebook/opt-13b", 40, 5120, 40, 20480, 13e9),
        _opt("opt-30b", "facebook/opt-30b", 48, 7168, 56, 28672, 30e9),
        _opt("opt-66b", "facebook/opt-66b", 64, 9216, 72, 36864, 66e9),
        # Tiny random-weight models for CPU profiling and the fidelity experiment.
        _llama("tiny-target", "", 8, 512, 8, 4, 64, 1536, 4096, 0.0, maxpos=8192),
        _llama("tiny-draft", "", 2, 512, 8, 4, 64, 1536, 4096, 0.0, maxpos=8192),
    ]
}
# Tiny models have no published count: use the derived one.
for _k in ("tiny-target", "tiny-draft"):
    MODELS[_k] = replace(MODELS[_k], params=float(MODELS[_k].computed_params))
