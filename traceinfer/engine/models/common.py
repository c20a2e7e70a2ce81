"""The decoder-only transformer that Qwen3, Qwen2 and Llama share; each family file sets its flags.

Module and parameter names follow the HF checkpoints except where projections are fused
(q/k/v -> qkv_proj, gate/up -> gate_up_proj); ``load_weight`` maps checkpoint names onto them.
All activations are flattened over the step: hidden [T, H] where T is the step's token count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from traceinfer.engine.attention.metadata import AttentionMetadata
from traceinfer.errors import ModelLoadError


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm over the last dim, rounding for rounding: normalise in float32, cast back, then scale."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] rotated neox-style (rotate_half); cos, sin [T, 1, D] in x's dtype."""
    return x * cos + _rotate_half(x) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] -> F.silu(gate) * up [T, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# On CUDA the modules below call the Triton kernels of fused_ops, which give the same roundings as the
# torch functions above in a fraction of the kernels; elsewhere (CPU, the HF equivalence tests) they call
# the torch functions. fused_ops imports triton, so it is imported on first use on a CUDA tensor.


# Defaults of the layers' kernel choices, read when a layer is built (each layer keeps its own, so that two
# engines in one process can differ: scripts/engine_ab.py).
FUSE_KV_STORE = True  # on CUDA the RoPE kernel stores the step's K/V: a kernel a layer fewer (H200 A/B: +1.0%, not resolved)
SPLITK = True  # decode batches' projections on engine/splitk where tuned (H200: +1.1-1.6% at 32-64 requests)


class Linear(nn.Linear):
    """nn.Linear; on CUDA in 16 bits, one row through a layer of few outputs (o_proj, down_proj in a decode
    step at batch 1) goes to engine/gemv's kernel, which streams such weights faster than cuBLAS's tiles do;
    with ``splitk`` (default SPLITK), a decode batch of 9-256 rows to engine/splitk's where it is tuned."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.splitk = SPLITK

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from traceinfer.engine import gemv, splitk

            if gemv.takes(x, self.out_features):
                return gemv.linear(x, self.weight, self.bias)
            if self.splitk and splitk.takes(x, self.out_features):
                return splitk.linear(x, self.weight, self.bias)
        return super().forward(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x, residual [T, H] -> (rms_norm(x + residual), x + residual); with no residual the sum is x."""
        if x.is_cuda:
            from traceinfer.engine import fused_ops

            return fused_ops.add_rms_norm(x, residual, self.weight, self.eps)
        if residual is not None:
            x = x + residual
        return rms_norm(x, self.weight, self.eps), x


def rope_inv_freq(config, head_dim: int) -> tuple[torch.Tensor, float]:
    """inverse frequencies [head_dim / 2] and attention scaling, exactly as HF computes them."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        return 1.0 / (theta**exponents), 1.0
    if rope_type == "dynamic":
        raise ModelLoadError("rope_type 'dynamic' rescales with sequence length and is not supported; static types are")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ModelLoadError(f"rope_type {rope_type!r} is unknown; known: default, {', '.join(ROPE_INIT_FUNCTIONS)}")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


class RotaryEmbedding(nn.Module):
    def __init__(self, config, head_dim: int, max_positions: int) -> None:
        super().__init__()
        inv_freq, scaling = rope_inv_freq(config, head_dim)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq.to(positions.device)[None, :]  # [P, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)  # [P, D]
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        q: torch.Tensor,  # [T, Hq, D]
        k: torch.Tensor,  # [T, Hkv, D]
        q_norm: RMSNorm | None = None,
        k_norm: RMSNorm | None = None,
        kv_store=None,  # fused_ops.KVStore: also write the rotated k and the step's v into the KV cache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RMSNorm each head of q and k when norms are given (Qwen3), then rotate them to their positions."""
        if q.is_cuda:
            from traceinfer.engine import fused_ops

            q_w, k_w = (q_norm.weight, k_norm.weight) if q_norm is not None else (None, None)
            eps = q_norm.eps if q_norm is not None else 0.0  # q_norm and k_norm share the config's eps
            return fused_ops.qk_norm_rope(q, k, q_w, k_w, eps, self.cos, self.sin, positions, kv_store)
        if q_norm is not None:
            q, k = rms_norm(q, q_norm.weight, q_norm.eps), rms_norm(k, k_norm.weight, k_norm.eps)
        cos = self.cos[positions].unsqueeze(1).to(q.dtype)
        sin = self.sin[positions].unsqueeze(1).to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_store is not None:
            from traceinfer.engine.attention.torch_backend import store_kv

            store_kv(k, kv_store.v, kv_store.k_cache, kv_store.v_cache, kv_store.slot_mapping)
        return q, k


class Attention(nn.Module):
    def __init__(self, config, layer_idx: int, qkv_bias: bool, qk_norm: bool, backend) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=getattr(config, "attention_bias", False))
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.backend = backend
        # on CUDA the RoPE kernel stores the step's K/V (fused_ops.KVStore); off, the backend's own store does
        self.fuse_kv_store = FUSE_KV_STORE
        self.k_cache: torch.Tensor | None = None  # [num_blocks, block_size, Hkv, D], bound by the runner
        self.v_cache: torch.Tensor | None = None

    def project(
        self, positions: torch.Tensor, x: torch.Tensor, rotary: RotaryEmbedding, slot_mapping: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """x [T, H] -> q, k, v [T, heads, D] normed and rotated, and whether k, v are in the cache already."""
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        norms = (self.q_norm, self.k_norm) if self.qk_norm else (None, None)
        store = None
        if x.is_cuda and self.fuse_kv_store:  # the RoPE kernel also stores the step's K/V: a kernel a layer fewer
            from traceinfer.engine import fused_ops

            store = fused_ops.KVStore(v, self.k_cache, self.v_cache, slot_mapping)
        q, k = rotary(positions, q, k, *norms, kv_store=store)
        return q, k, v, store is not None

    def attend(self, q, k, v, meta: AttentionMetadata, stored: bool) -> torch.Tensor:
        """-> the attention output [T, Hq * D] (k, v unused when ``stored``)."""
        return self.backend.forward(q, k, v, self.k_cache, self.v_cache, meta, self.scale, kv_stored=stored).flatten(1)


class MLP(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, bias=bias)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=bias)
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ModelLoadError(f"hidden_act {config.hidden_act!r} is not supported; only 'silu' is")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2I]
        if gate_up.is_cuda:
            from traceinfer.engine import fused_ops

            return self.down_proj(fused_ops.silu_and_mul(gate_up))
        return self.down_proj(silu_and_mul(gate_up))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, qkv_bias: bool, qk_norm: bool, backend) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx, qkv_bias, qk_norm, backend)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, x, residual, rotary, meta) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the previous layer's MLP output (the embeddings before layer 0, with residual None);
        residual: the stream before it. -> (this layer's MLP output, the stream before it).

        The stream is summed lazily, inside the next norm, so that the add fuses into it on CUDA; the
        sums are the same as ``x = x + attn(norm(x)); x = x + mlp(norm(x))``, addition being commutative.
        """
        q, k, v, stored, residual = self.before_attention(positions, x, residual, rotary, meta.slot_mapping)
        return self.after_attention(self.self_attn.attend(q, k, v, meta, stored), residual)

    # the layer in two halves around its attention (engine/piecewise captures the halves as CUDA graphs)
    def before_attention(self, positions, x, residual, rotary, slot_mapping):
        """-> q, k, v, whether k and v are stored, and the residual stream."""
        x, residual = self.input_layernorm(x, residual)
        return *self.self_attn.project(positions, x, rotary, slot_mapping), residual

    def after_attention(self, o: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """o: the attention output [T, Hq * D] -> (this layer's MLP output, the stream before it)."""
        x, residual = self.post_attention_layernorm(self.self_attn.o_proj(o), residual)
        return self.mlp(x), residual


class DecoderModel(nn.Module):
    def __init__(self, config, qkv_bias: bool, qk_norm: bool, backend, max_positions: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, qkv_bias, qk_norm, backend) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        head_dim = self.layers[0].self_attn.head_dim
        self.rotary = RotaryEmbedding(config, head_dim, max_positions)

    def forward(self, input_ids, positions, meta) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, self.rotary, meta)
        return self.norm(x, residual)[0]


# checkpoint projection name -> (fused module, shard index)
_PACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class CausalLM(nn.Module):
    """Base of the model families: the family class sets ``qkv_bias`` and ``qk_norm``."""

    architectures: tuple[str, ...] = ()
    qkv_bias = False
    qk_norm = False

    def __init__(self, config, backend, max_positions: int) -> None:
        super().__init__()
        self.config = config
        qkv_bias = self.qkv_bias or getattr(config, "attention_bias", False)
        self.model = DecoderModel(config, qkv_bias, self.qk_norm, backend, max_positions)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [T] -> final hidden states [T, H]."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def shapes(self) -> dict[str, int]:
        """What the model moves and computes per token, from its shapes (traceinfer.analysis.floor.ModelCost):
        ``matmul_params`` counts the 2-D weights of the decoder layers (prefill samples one row per sequence,
        so lm_head is left out); ``weight_bytes`` every parameter once (tied embeddings once), read by each step."""
        attn = self.model.layers[0].self_attn
        params = list(self.parameters())  # shared (tied) parameters appear once
        return {
            "num_layers": len(self.model.layers),
            "num_heads": attn.num_heads,
            "num_kv_heads": attn.num_kv_heads,
            "head_dim": attn.head_dim,
            "matmul_params": sum(p.numel() for p in self.model.layers.parameters() if p.dim() == 2),
            "weight_bytes": sum(p.numel() * p.element_size() for p in params),
            "dtype_bytes": params[0].element_size(),
        }

    # -- weights ---------------------------------------------------------------------------
    def shard_sizes(self, fused: str) -> list[int]:
        attn = self.model.layers[0].self_attn
        if fused == "qkv_proj":
            return [attn.q_size, attn.kv_size, attn.kv_size]
        return [self.model.layers[0].mlp.intermediate_size] * 2

    def load_weight(self, name: str, tensor: torch.Tensor, params: dict[str, nn.Parameter]) -> str | None:
        """Copy one checkpoint tensor into its parameter; returns the parameter name filled, or None to skip."""
        if "rotary_emb.inv_freq" in name:
            return None
        if name == "lm_head.weight" and self.tie_word_embeddings:
            return None
        target, shard = name, None
        for src, (fused, idx) in _PACKED.items():
            if f".{src}." in name:
                target, shard = name.replace(f".{src}.", f".{fused}."), idx
                break
        param = params.get(target)
        if param is None:
            raise ModelLoadError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
        data = param.data
        if shard is not None:
            sizes = self.shard_sizes(target.split(".")[-2])
            data = data.narrow(0, sum(sizes[:shard]), sizes[shard])
        if tuple(data.shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, model expects {tuple(data.shape)}"
            )
        data.copy_(tensor)
        return target if shard is None else f"{target}#{shard}"

    def expected_weights(self) -> set[str]:
        """Every parameter (and fused shard) a checkpoint must fill."""
        names = set()
        for name, _ in self.named_parameters():
            fused = name.split(".")[-2] if name.count(".") else ""
            if fused in ("qkv_proj", "gate_up_proj"):
                names.update(f"{name}#{i}" for i in range(len(self.shard_sizes(fused))))
            else:
                names.add(name)
        return names
