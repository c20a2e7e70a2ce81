"""Paged KV-cache blocks: free list, reference counts and prefix caching.

A block holds ``block_size`` consecutive tokens of one sequence. A full block is published to the
prefix cache under a hash chained over every full block before it (``hash((parent, tokens))``);
a later request whose prompt starts with the same tokens reuses those physical blocks. Freed
blocks stay cached in an LRU free queue until a fresh allocation needs them (eviction).

While ``hooks.block`` has a subscriber, every operation (allocate, append, hit, stored, free, preempt,
evict, reset; stored/evict/reset align with vLLM's KV events BlockStored, BlockRemoved and
AllBlocksCleared) is recorded as one BlockOp tuple stamped with its time and the engine's step, and
``flush_ops()`` hands the ops recorded so far to the hook in one call. The engine calls it once per
step, while the GPU runs the forward, so a decode step with blocks filling in 16 of 256 sequences
costs one hook call behind the GPU, not 32 on the host. Calls that do real work (not the decode fast
paths) run inside a ``hooks.block_manager`` span, for NVTX ranges.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from traceinfer.engine.hooks import Hooks
from traceinfer.engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set while the block is published in the prefix cache
    parent_hash: int | None = None
    token_ids: tuple[int, ...] | None = None  # checked on every hit: a hash match alone is not trusted


class BlockOp(NamedTuple):
    """One block operation, as ``hooks.block`` delivers them (``fields["ops"]``); lists are in block order."""

    t_ns: int  # time.perf_counter_ns() of the operation
    step: int  # the engine step it happened in (between steps: the last one)
    op: str  # allocate | append | hit | stored | free | preempt | evict | reset
    request_id: str | None  # None for evict and reset
    block_ids: list[int]  # free/preempt: in release order
    block_hashes: list[int | None]  # prefix-cache hash of each block (None: not cached)
    ref_counts: list[int]  # after the op
    num_free: int  # free blocks after the op, cached evictable ones included
    num_used: int  # blocks held by requests after the op
    num_cached: int  # blocks in the prefix cache after the op
    parent_hashes: list[int | None] | None  # stored: each block's parent hash (None at the chain root)
    token_ids: list[tuple[int, ...]] | None  # stored: each block's tokens


_new_op = tuple.__new__
_clock = time.perf_counter_ns


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, hooks: Hooks | None = None):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.hooks = hooks or Hooks()
        self.blocks = [Block(i) for i in range(num_blocks)]
        # ref_count == 0 blocks, least recently used first; cached ones among them are evictable
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id
        self._table_versions = itertools.count(1)
        self.pending_ops: list[BlockOp] = []  # recorded while hooks.block has a subscriber, until flush_ops
        self.step = 0  # the engine's step index, stamped on each op (the engine sets it)

    # -- counts ----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds, including cached ones that may be evicted."""
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cached)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache ----------------------------------------------------------------------
    def block_hashes(self, seq: Sequence, num_blocks: int | None = None) -> list[int]:
        """Chained hashes of the full blocks of ``seq.token_ids`` (the first ``num_blocks`` at least), extended
        as tokens arrive."""
        bs, hashes = self.block_size, seq.block_hashes
        parent = hashes[-1] if hashes else 0  # 0 roots the chain (hash(None) differs between processes)
        for i in range(len(hashes), seq.num_tokens // bs if num_blocks is None else num_blocks):
            parent = hash((parent, tuple(seq.token_ids[i * bs : (i + 1) * bs])))
            hashes.append(parent)
        return hashes

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Physical blocks holding the longest cached prefix of ``seq``; never all of its tokens."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        max_blocks = (seq.num_tokens - 1) // bs  # at least one token is always computed
        hits: list[int] = []
        parent = None
        for i, h in enumerate(self.block_hashes(seq)[:max_blocks]):
            block_id = self.cached.get(h)
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.parent_hash != parent or block.token_ids != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
                break  # hash collision: not the same tokens
            hits.append(block_id)
            parent = h
        return hits

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Publish the blocks of ``seq`` that are full and computed (call after each step)."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        n_full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        if n_full <= seq.num_stored_blocks:
            return
        with self.hooks.block_manager.span(call="cache_full_blocks", request_id=seq.request_id):
            hashes = self.block_hashes(seq, n_full)  # computed blocks only: a later token may be a placeholder
            stored: list[Block] = []
            for i in range(seq.num_stored_blocks, n_full):
                block = self.blocks[seq.block_table[i]]
                h = hashes[i]
                if block.hash is None and h not in self.cached:
                    block.hash, block.parent_hash = h, hashes[i - 1] if i else None
                    block.token_ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                    self.cached[h] = block.block_id
                    stored.append(block)
            seq.num_stored_blocks = n_full
            if stored and self.hooks.block:
                if len(stored) == 1:  # decode: one block filled
                    b = stored[0]
                    self._record("stored", seq.request_id, [b.block_id], [b.hash], [b.parent_hash], [b.token_ids])
                else:
                    self._record(
                        "stored", seq.request_id, [b.block_id for b in stored], [b.hash for b in stored],
                        [b.parent_hash for b in stored], [b.token_ids for b in stored],
                    )  # fmt: skip

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block; only possible while no request holds a block."""
        if self.num_used_blocks:
            return False
        for block in self.blocks:
            block.hash = block.parent_hash = block.token_ids = None
        self.cached.clear()
        if self.hooks.block:
            self._record("reset", None, [])
            self.flush_ops()
        return True

    # -- allocation ------------------------------------------------------------------------
    def can_allocate(self, seq: Sequence, num_new_tokens: int, cached_prefix: list[int] = ()) -> bool:
        return self._blocks_needed(seq, num_new_tokens, cached_prefix) <= len(self.free_queue)

    def _blocks_needed(self, seq: Sequence, num_new_tokens: int, cached_prefix) -> int:
        """Free-queue blocks this allocation takes: new blocks plus cached hits sitting in the free queue."""
        num_tokens = seq.num_computed_tokens + len(cached_prefix) * self.block_size + num_new_tokens
        fresh = self.blocks_for(num_tokens) - len(seq.block_table) - len(cached_prefix)
        revived = sum(1 for b in cached_prefix if self.blocks[b].ref_count == 0)
        return max(fresh, 0) + revived

    def allocate(self, seq: Sequence, num_new_tokens: int, cached_prefix: list[int] = ()) -> bool:
        """Give ``seq`` the blocks for its next ``num_new_tokens`` tokens, taking ``cached_prefix``
        (from find_cached_prefix, only for a sequence with no blocks) first. False if they don't fit."""
        if not cached_prefix and seq.num_computed_tokens + num_new_tokens <= len(seq.block_table) * self.block_size:
            return True  # the common decode step: the last block still has room
        if not self.can_allocate(seq, num_new_tokens, cached_prefix):
            return False
        with self.hooks.block_manager.span(call="allocate", request_id=seq.request_id):
            self._allocate(seq, num_new_tokens, cached_prefix)
        return True

    def _allocate(self, seq: Sequence, num_new_tokens: int, cached_prefix: list[int]) -> None:
        first_allocation = not seq.block_table
        if cached_prefix:
            for block_id in cached_prefix:
                block = self.blocks[block_id]
                if block.ref_count == 0:
                    del self.free_queue[block_id]
                block.ref_count += 1
            seq.block_table.extend(cached_prefix)
            seq.num_stored_blocks = len(cached_prefix)
            if self.hooks.block:
                self._record("hit", seq.request_id, list(cached_prefix))
        num_tokens = seq.num_computed_tokens + len(cached_prefix) * self.block_size + num_new_tokens
        fresh = [self._pop_free() for _ in range(self.blocks_for(num_tokens) - len(seq.block_table))]
        for block_id in fresh:
            self.blocks[block_id].ref_count = 1
        seq.block_table.extend(fresh)
        seq.block_table_version = next(self._table_versions)
        if fresh and self.hooks.block:
            self._record("allocate" if first_allocation and not cached_prefix else "append", seq.request_id, fresh)

    def _pop_free(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict the least recently used cached block
            evicted = block.hash
            if self.cached.get(evicted) == block_id:
                del self.cached[evicted]
            block.hash = block.parent_hash = block.token_ids = None
            if self.hooks.block:
                self._record("evict", None, [block_id], block_hashes=[evicted])
        return block_id

    def free(self, seq: Sequence, op: str = "free") -> None:
        """Drop ``seq``'s references; blocks reaching zero go to the free queue (tail first, so a
        sequence's last blocks are evicted before its first ones; uncached blocks are reused first)."""
        with self.hooks.block_manager.span(call=op, request_id=seq.request_id):
            self._free(seq, op)

    def _free(self, seq: Sequence, op: str) -> None:
        freed = list(reversed(seq.block_table))
        for block_id in freed:
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count < 0:
                raise RuntimeError(f"block {block_id} reference count went negative (request {seq.request_id})")
            if block.ref_count == 0:
                self.free_queue[block_id] = None
                if block.hash is None:
                    self.free_queue.move_to_end(block_id, last=False)
        seq.block_table = []
        seq.block_table_version = next(self._table_versions)
        seq.num_stored_blocks = 0
        if freed and self.hooks.block:
            self._record(op, seq.request_id, freed)

    # -- events ----------------------------------------------------------------------------
    def _record(self, op: str, request_id: str | None, block_ids: list[int], block_hashes=None,
                parent_hashes=None, token_ids=None) -> None:  # fmt: skip
        blocks = self.blocks
        if len(block_ids) == 1:  # most ops in decode: one block, no comprehension frames
            block = blocks[block_ids[0]]
            refs = [block.ref_count]
            hashes = block_hashes if block_hashes is not None else [block.hash]
        else:
            refs = [blocks[b].ref_count for b in block_ids]
            hashes = block_hashes if block_hashes is not None else [blocks[b].hash for b in block_ids]
        free = len(self.free_queue)
        self.pending_ops.append(_new_op(BlockOp, (  # tuple.__new__: half the cost of BlockOp(...)
            _clock(), self.step, op, request_id, block_ids, hashes, refs, free, self.num_blocks - free, len(self.cached),
            parent_hashes, token_ids,
        )))  # fmt: skip

    def flush_ops(self) -> None:
        """Hand the ops recorded since the last call to ``hooks.block`` as one event (``ops``: list of BlockOp)."""
        if self.pending_ops:
            ops, self.pending_ops = self.pending_ops, []
            self.hooks.block.emit(ops=ops)
