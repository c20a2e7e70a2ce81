"""Paged KV-cache blocks: free list, reference counts and prefix caching.

A block holds ``block_size`` consecutive tokens of one sequence. A full block is published to the
prefix cache under a hash chained over every full block before it (``hash((parent, tokens))``);
a later request whose prompt starts with the same tokens reuses those physical blocks. Freed
blocks stay cached in an LRU free queue until a fresh allocation needs them (eviction).

Every operation is reported through ``hooks.block`` with op in {allocate, append, hit, stored,
free, preempt, evict, reset}; names of the stored/evicted/reset events align with vLLM's KV
events (BlockStored, BlockRemoved, AllBlocksCleared).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

from traceinfer.engine.hooks import Hooks
from traceinfer.engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set while the block is published in the prefix cache
    parent_hash: int | None = None
    token_ids: tuple[int, ...] | None = None  # checked on every hit: a hash match alone is not trusted


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
    def block_hashes(self, seq: Sequence) -> list[int]:
        """Chained hashes of every full block of ``seq.token_ids``, extended as tokens arrive."""
        bs, hashes = self.block_size, seq.block_hashes
        parent = hashes[-1] if hashes else 0  # 0 roots the chain (hash(None) differs between processes)
        for i in range(len(hashes), seq.num_tokens // bs):
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
        hashes = self.block_hashes(seq)
        stored: list[int] = []
        for i in range(seq.num_stored_blocks, n_full):
            block = self.blocks[seq.block_table[i]]
            h = hashes[i]
            if block.hash is None and h not in self.cached:
                block.hash, block.parent_hash = h, hashes[i - 1] if i else None
                block.token_ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                self.cached[h] = block.block_id
                stored.append(block.block_id)
        first = seq.num_stored_blocks
        seq.num_stored_blocks = n_full
        if stored and self.hooks.block:
            self._emit(
                "stored", seq.request_id, stored,
                parent_block_hash=self.blocks[stored[0]].parent_hash,
                token_ids=[self.blocks[b].token_ids for b in stored], first_block_index=first,
            )  # fmt: skip

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block; only possible while no request holds a block."""
        if self.num_used_blocks:
            return False
        for block in self.blocks:
            block.hash = block.parent_hash = block.token_ids = None
        self.cached.clear()
        if self.hooks.block:
            self._emit("reset", None, [])
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
                self._emit("hit", seq.request_id, list(cached_prefix))
        num_tokens = seq.num_computed_tokens + len(cached_prefix) * self.block_size + num_new_tokens
        fresh = [self._pop_free() for _ in range(self.blocks_for(num_tokens) - len(seq.block_table))]
        for block_id in fresh:
            self.blocks[block_id].ref_count = 1
        seq.block_table.extend(fresh)
        seq.block_table_version = next(self._table_versions)
        if fresh and self.hooks.block:
            self._emit("allocate" if first_allocation and not cached_prefix else "append", seq.request_id, fresh)
        return True

    def _pop_free(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict the least recently used cached block
            evicted = block.hash
            if self.cached.get(evicted) == block_id:
                del self.cached[evicted]
            block.hash = block.parent_hash = block.token_ids = None
            if self.hooks.block:
                self._emit("evict", None, [block_id], block_hashes=[evicted])
        return block_id

    def free(self, seq: Sequence, op: str = "free") -> None:
        """Drop ``seq``'s references; blocks reaching zero go to the free queue (tail first, so a
        sequence's last blocks are evicted before its first ones; uncached blocks are reused first)."""
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
            self._emit(op, seq.request_id, freed)

    # -- events ----------------------------------------------------------------------------
    def _emit(self, op: str, request_id: str | None, block_ids: list[int], block_hashes=None, **extra) -> None:
        blocks = [self.blocks[b] for b in block_ids]
        self.hooks.block.emit(
            op=op,
            request_id=request_id,
            block_ids=block_ids,
            block_hashes=block_hashes if block_hashes is not None else [b.hash for b in blocks],
            ref_counts=[b.ref_count for b in blocks],
            num_free=self.num_free_blocks,
            num_used=self.num_used_blocks,
            num_cached=self.num_cached_blocks,
            **extra,
        )
