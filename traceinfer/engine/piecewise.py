"""An eager step's forward (prefill chunks, mixed prefill and decodes) as CUDA graphs around the attention
calls: piecewise graphs, as vLLM captures them. On by default with CUDA graphs and the triton backend
([engine] piecewise_graphs).

Why: on the H200 the bench's decode-only steps replay whole-model graphs and their GPU time holds to +-0.25%
from pass to pass, while its 18 eager steps took 0.345-0.504 s of GPU time and their GPU idle 0.03-0.17 s,
following the host's speed (scripts/pass_variance.py, 2026-12-01): an 8192-token step launches ~375
kernels one by one from Python, about as fast as the GPU runs them. Attention cannot sit in a graph captured
at one size (its grid follows the step's sequences), everything else can at a padded token count: here
the layers' halves between attention calls are ``len(layers) + 1`` graphs per size, the attention runs
eagerly between them on the real rows. Measured on the H200 (scripts/engine_ab.py piecewise, 6 rounds,
2026-12-01): passes with it 25,734-25,816 tok/s (+-0.16%), without it 24,585-25,794 (-2.4..+1.6%).
Per round with / without: median +3.7%, range -0.04..+4.7%: what it removes is the slow passes, and with
them gone the bench's probe costs resolved to +-1%.

Data across the pieces: static buffers for the inputs (ids, positions, KV slots: -1 on padding rows, which
store nothing), for q (each piece copies its rotated q there) and for the attention output o (copied
there before the next piece); the residual stream crosses in the graphs' memory pool (a piece reads the
previous piece's output, replayed in the order of capture). The step's K and V are stored by the RoPE
kernel inside the pieces (the layers' ``fuse_kv_store``), so attention reads them from the cache. Padding
rows compute garbage that stays in padding rows: every op but attention works row by row.

With ``graphs=False`` the pieces run as plain calls in the same order over the same buffers (any device):
how tests on CPU check the flow against the model's own forward.
"""

from __future__ import annotations

import torch

from traceinfer.engine.attention import AttentionMetadata
from traceinfer.engine.models import CausalLM


def piecewise_sizes(max_num_batched_tokens: int, smallest: int = 256) -> list[int]:
    """Padded token counts to capture, ascending: powers of two from ``smallest`` up, the last one the
    token budget itself."""
    sizes, t = [], smallest
    while t < max_num_batched_tokens:
        sizes.append(t)
        t *= 2
    return [*sizes, max_num_batched_tokens]


class PiecewiseForward:
    """The model's forward at ``tokens`` padded tokens: ``run`` takes any step of at most that many."""

    def __init__(self, model: CausalLM, tokens: int, pool=None, graphs: bool = True) -> None:
        dm = model.model
        self._model, self._layers, self.tokens = dm, dm.layers, tokens
        self.num_pieces = len(dm.layers) + 1  # split around each layer's attention
        attn = dm.layers[0].self_attn
        weight = dm.embed_tokens.weight
        dev, dtype = weight.device, weight.dtype
        self.input_ids = torch.zeros(tokens, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(tokens, dtype=torch.int64, device=dev)
        self.slots = torch.full((tokens,), -1, dtype=torch.int64, device=dev)
        self.q = torch.zeros(tokens, attn.num_heads, attn.head_dim, dtype=dtype, device=dev)
        self.o = torch.zeros(tokens, attn.q_size, dtype=dtype, device=dev)
        self.hidden: torch.Tensor | None = None  # the last piece's output [tokens, H]
        self._residual: torch.Tensor | None = None  # the stream between pieces
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None  # k, v while not stored by the pieces
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.pool = pool
        if graphs:
            self._capture()

    # -- the pieces ------------------------------------------------------------------------------
    def _project(self, i: int, x: torch.Tensor, residual: torch.Tensor | None) -> None:
        q, k, v, stored, self._residual = self._layers[i].before_attention(
            self.positions, x, residual, self._model.rotary, self.slots
        )
        self.q.copy_(q)
        self._kv = None if stored else (k, v)

    def _piece_ops(self, i: int) -> None:
        """Piece i of num_pieces: the embedding and layer 0's projections, then layer i-1's output half
        with layer i's projections, then the last layer's output half and the final norm. (An index rather
        than a list of bound methods: such a list would make a reference cycle, and under the commands'
        gc.freeze a dropped engine's pieces, weights and graph pool would never be freed.)"""
        if i == 0:
            self._project(0, self._model.embed_tokens(self.input_ids), None)
            return
        x, residual = self._layers[i - 1].after_attention(self.o, self._residual)
        if i < len(self._layers):
            self._project(i, x, residual)
        else:
            self.hidden = self._model.norm(x, residual)[0]

    # -- capture and run -------------------------------------------------------------------------
    @torch.inference_mode()
    def _capture(self) -> None:
        for i in range(self.num_pieces):  # warm-up: Triton compiles, cuBLAS picks its kernels (slots -1: no stores)
            self._piece_ops(i)
        if self._kv is not None:
            raise RuntimeError("piecewise graphs need the K/V store inside the pieces (the layers' fuse_kv_store)")
        torch.cuda.synchronize(self.q.device)
        for i in range(self.num_pieces):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._piece_ops(i)
            self.pool = graph.pool() if self.pool is None else self.pool
            self.graphs.append(graph)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """The final hidden states [n, H] of a step of n <= tokens tokens (a view of a static buffer, valid
        until the next run)."""
        n = input_ids.shape[0]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(meta.slot_mapping)
        self.slots[n:].fill_(-1)
        self._piece(0)
        for i, layer in enumerate(self._layers):
            k, v = (t[:n] for t in self._kv) if self._kv is not None else (None, None)
            self.o[:n].copy_(layer.self_attn.attend(self.q[:n], k, v, meta, stored=self._kv is None))
            self._piece(i + 1)
        return self.hidden[:n]

    def _piece(self, i: int) -> None:
        if self.graphs:
            self.graphs[i].replay()
        else:
            self._piece_ops(i)
