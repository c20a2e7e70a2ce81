"""The block manager alone: allocation, prefix hits, LRU eviction, collision check, reset."""

from __future__ import annotations

from traceinfer.engine.block_manager import BlockManager
from traceinfer.engine.hooks import Hooks
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.engine.sequence import Sequence


def seq(rid: str, tokens: list[int]) -> Sequence:
    return Sequence(rid, tokens, SamplingParams())


def computed(bm: BlockManager, s: Sequence) -> None:
    """Pretend the model computed every token of s (what the engine does after a step)."""
    s.num_computed_tokens = s.num_tokens
    bm.cache_full_blocks(s)


def recorder(hooks: Hooks) -> list:
    """Every BlockOp the 'block' hook delivers (after the owner calls flush_ops)."""
    ops: list = []
    hooks.subscribe(lambda p, ph, t, f: ops.extend(f["ops"]), ("block",))
    return ops


def test_allocate_free_and_prefix_hit_share_physical_blocks():
    hooks = Hooks()
    events = recorder(hooks)
    bm = BlockManager(num_blocks=8, block_size=4, hooks=hooks)
    a = seq("a", list(range(10)))  # 2 full blocks + 2 tokens
    assert bm.allocate(a, 10)
    assert len(a.block_table) == 3 and bm.num_used_blocks == 3
    computed(bm, a)
    assert bm.num_cached_blocks == 2
    b = seq("b", list(range(8)) + [99, 98])
    hit = bm.find_cached_prefix(b)
    assert hit == a.block_table[:2]
    assert bm.allocate(b, 2, hit)
    assert b.block_table[:2] == a.block_table[:2]
    assert [bm.blocks[i].ref_count for i in hit] == [2, 2]
    bm.step = 7  # the engine stamps its step index on the ops
    bm.free(a)
    bm.free(b)
    assert bm.num_used_blocks == 0 and bm.num_cached_blocks == 2
    assert events == [] and len(bm.pending_ops) == 6  # recorded, not yet handed over
    bm.flush_ops()
    assert [e.op for e in events] == ["allocate", "stored", "hit", "append", "free", "free"] and not bm.pending_ops
    assert [e.step for e in events] == [0, 0, 0, 0, 7, 7]
    stored = events[1]
    assert stored.token_ids == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert stored.parent_hashes == [None, a.block_hashes[0]] and stored.block_hashes == a.block_hashes[:2]
    assert [e.t_ns for e in events] == sorted(e.t_ns for e in events)
    assert events[0].num_used == 3 and events[-1].num_used == 0 and events[-1].ref_counts == [0, 0, 0]


def test_never_a_full_hit():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq("a", list(range(8)))
    bm.allocate(a, 8)
    computed(bm, a)
    table = list(a.block_table)
    bm.free(a)
    assert bm.num_cached_blocks == 2
    # both blocks are cached, but the last token must be computed, so only the first block is reused
    assert bm.find_cached_prefix(seq("again", list(range(8)))) == table[:1]


def test_eviction_is_lru_and_tail_first():
    hooks = Hooks()
    events = recorder(hooks)
    bm = BlockManager(num_blocks=4, block_size=2, hooks=hooks)
    a = seq("a", [1, 2, 3, 4])
    bm.allocate(a, 4)
    computed(bm, a)
    first, second = a.block_table
    bm.free(a)  # cached and free: the tail block is queued first, so it is evicted first
    b = seq("b", [9, 9, 9, 9, 9, 9])
    assert bm.allocate(b, 6)  # 3 blocks: 2 never-used blocks, then the LRU cached one
    bm.flush_ops()
    evicted = [e.block_ids[0] for e in events if e.op == "evict"]
    assert evicted == [second]
    assert bm.num_cached_blocks == 1 and bm.cached[a.block_hashes[0]] == first


def test_hash_collision_is_caught_by_token_check():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq("a", [1, 2, 3])
    bm.allocate(a, 3)
    computed(bm, a)
    b = seq("b", [7, 8, 3])
    b.block_hashes = list(a.block_hashes)  # force the same hash for different tokens
    assert bm.find_cached_prefix(b) == []


def test_no_room_means_no_change_and_reset():
    hooks = Hooks()
    events = recorder(hooks)
    bm = BlockManager(num_blocks=2, block_size=2, hooks=hooks)
    a = seq("a", [1, 2, 3, 4, 5])
    assert not bm.allocate(a, 5)
    assert a.block_table == [] and bm.num_free_blocks == 2
    b = seq("b", [1, 2])
    bm.allocate(b, 2)
    computed(bm, b)
    assert not bm.reset_prefix_cache()  # a block is held
    bm.free(b)
    assert bm.reset_prefix_cache() and bm.num_cached_blocks == 0
    assert [e.op for e in events] == ["allocate", "stored", "free", "reset"]  # reset hands its ops over itself


def test_hooks_cost_nothing_without_subscribers_and_unsubscribe_cleanly():
    hooks = Hooks()
    assert not hooks.block and hooks.subscribed() == {}
    calls = []
    off = hooks.subscribe(lambda *a: calls.append(a), ("step", "block"))
    with hooks.step.span(step=1) as info:
        info["extra"] = 2
    hooks.block.emit(op="free")
    assert [(c[0], c[1]) for c in calls] == [("step", "B"), ("step", "E"), ("block", "i")]
    assert calls[1][3] == {"extra": 2}
    off()
    assert hooks.subscribed() == {}
