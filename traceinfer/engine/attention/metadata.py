"""What every attention backend needs to know about one flattened engine step."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """One step's batch, flattened. Decode sequences (query length 1) come first.

    T = tokens in the step, B = sequences, M = most blocks any sequence holds.
    """

    slot_mapping: torch.Tensor  # [T] int64: block_id * block_size + offset; -1 = padding, not stored
    query_start_loc: torch.Tensor  # [B + 1] int32: cu_seqlens of the queries
    seq_lens: torch.Tensor  # [B] int32: K/V length after this step (cached + new)
    block_tables: torch.Tensor  # [B, M] int32: physical block ids, padded with 0
    num_decode_seqs: int  # the first num_decode_seqs sequences have exactly one query token
    max_query_len: int
    max_seq_len: int
    query_start_loc_cpu: list[int]  # host copies, for backends that loop on the host
    seq_lens_cpu: list[int]
    # [num_decode_seqs] int: the decode rows in the order their attention should start (longest context
    # first); None: row order. A hint for the decode kernel's schedule, never needed for a correct result.
    decode_order: torch.Tensor | None = None
