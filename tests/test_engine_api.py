"""The engine's API beyond HF equivalence: step API, abort, priority, tokenizers, sharded checkpoints."""

from __future__ import annotations

import torch

from traceinfer import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def drain(engine) -> dict:
    done = {}
    while engine.has_unfinished():
        done.update({o.request_id: o for o in engine.step()})
    return done


def test_step_api_abort_frees_blocks_and_others_go_on():
    engine = LLM("synthetic:tiny", num_kv_blocks=64).engine
    keep = engine.add_request([1, 2, 3, 4], GREEDY)
    gone = engine.add_request([5, 6, 7, 8] * 10, SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step()
    aborted = engine.abort(gone)
    assert aborted.finish_reason == "aborted" and aborted.finished
    assert engine.abort(gone) is None  # already gone
    done = drain(engine)
    assert list(done) == [keep] and len(done[keep].token_ids) == 6
    assert engine.block_manager.num_used_blocks == 0


def test_priority_orders_the_waiting_queue():
    engine = LLM("synthetic:tiny", num_kv_blocks=64, max_num_seqs=1).engine
    order = []
    engine.hooks.subscribe(lambda p, ph, t, f: order.append(f["request_id"]), ("finish",))
    engine.add_request([1, 2], GREEDY, request_id="low", priority=5)
    engine.add_request([3, 4], GREEDY, request_id="high", priority=0)
    engine.add_request([5, 6], GREEDY, request_id="mid", priority=2)
    drain(engine)
    assert order == ["high", "mid", "low"]


def test_step_events_are_handed_over_behind_the_next_forward_in_order():
    """'block', 'tokens' and 'finish' reach subscribers during the next step's forward ('handover'), or at the
    end of the step that leaves nothing to run; each carries the time and step it happened in, and a
    request's finish comes after the event with its last token. abort hands over at once."""
    engine = LLM("synthetic:tiny", num_kv_blocks=64).engine
    log = []
    unsubscribe = engine.hooks.subscribe(lambda p, ph, t, f: log.append((p, ph, t, f, engine.step_index)))
    a = engine.add_request([1, 2, 3], GREEDY)
    b = engine.add_request([4, 5, 6, 7] * 5, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    done = drain(engine)
    times = {rid: out.token_times_ns for rid, out in done.items()}
    seen = {a: [], b: []}
    for point, phase, t, f, step_now in log:
        if point == "tokens":
            assert f["step"] == step_now - 1 or (f["step"] == step_now and not engine.has_unfinished())
            for rid, index in zip(f["request_ids"], f["indices"]):
                assert times[rid][index] == t  # the token's own time, not the handover's
                seen[rid].append(index)
        if point == "finish":
            assert seen[f["request_id"]] == list(range(len(times[f["request_id"]])))  # every token came first
        if point == "block":
            assert all(o.step <= step_now and o.t_ns <= t for o in f["ops"])
    assert [f["request_id"] for p, ph, t, f, s in log if p == "finish"] == [b, a]  # b asked for fewer tokens
    assert engine.block_manager.pending_ops == [] and engine._deferred == []  # nothing left behind when idle

    # abort between steps: its ops and its finish are handed over by abort itself
    c = engine.add_request([1, 2, 3], SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))
    engine.step()
    log.clear()
    engine.abort(c)
    unsubscribe()
    points = [p for p, *_ in log]
    assert points[-1] == "finish" and "block" in points and "tokens" in points  # the step's token, then the end


def test_token_timestamps_and_outputs():
    llm = LLM("synthetic:tiny", num_kv_blocks=64)
    out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))[0]
    assert len(out.token_times_ns) == 5 and out.token_times_ns == sorted(out.token_times_ns)
    assert out.arrival_ns < out.token_times_ns[0]
    assert out.prompt_token_ids == [1, 2, 3] and out.text == llm.engine.tokenizer.decode(out.token_ids)


def test_eos_and_stop_tokens_finish_requests():
    llm = LLM("synthetic:tiny", num_kv_blocks=64)
    first = llm.generate([[1, 2, 3]], GREEDY)[0].token_ids
    stop = llm.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=6, stop_token_ids=[first[1]]))[0]
    assert stop.finish_reason == "stop" and stop.token_ids == first[: first.index(first[1]) + 1]
    llm.engine.eos_token_ids = frozenset({first[0]})
    eos = llm.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=6))[0]
    assert eos.finish_reason == "eos" and eos.token_ids == first[:1]
    ignored = llm.generate([[1, 2, 3]], GREEDY)[0]
    assert ignored.finish_reason == "length" and ignored.token_ids == first


def test_sharded_checkpoint_with_its_own_tokenizer(tmp_path, hf_checkpoint):
    from tokenizers import Tokenizer, models, pre_tokenizers

    _, model = hf_checkpoint("llama")
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "world", "paged", "attention"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))

    llm = LLM(str(tmp_path), num_kv_blocks=32)
    assert llm.engine.tokenizer.encode("hello paged attention") == [1, 3, 4]
    ours = llm.engine.score("hello paged attention")
    with torch.no_grad():
        theirs = model(torch.tensor([[1, 3, 4]])).logits[0]
    assert (ours - theirs).abs().max().item() < 1e-4
    out = llm.generate("hello world", SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))[0]
    assert out.prompt_token_ids == [1, 2] and len(out.token_ids) == 3


def test_fitting_graph_is_the_smallest_captured_size_that_holds_the_batch():
    from traceinfer.engine.model_runner import fitting_graph, graph_batch_sizes

    sizes = sorted(graph_batch_sizes(256))
    assert sizes[:6] == [1, 2, 4, 8, 16, 32] and sizes[-1] == 256
    picks = {n: fitting_graph(sizes, n) for n in (1, 2, 3, 5, 9, 16, 17, 255, 256, 257)}
    assert picks == {1: 1, 2: 2, 3: 4, 5: 8, 9: 16, 16: 16, 17: 32, 255: 256, 256: 256, 257: None}
    assert fitting_graph(sorted(graph_batch_sizes(20)), 19) == 20 and fitting_graph([], 1) is None


def test_decode_split_count_depends_on_shapes_only():
    from traceinfer.engine.attention.triton_backend import decode_num_splits

    assert decode_num_splits(256, 8, 128, 16, 64, 132) == 1  # Qwen3-0.6B at batch 256: the grid is full
    assert decode_num_splits(96, 8, 256, 16, 64, 132) == 1
    assert decode_num_splits(32, 8, 256, 16, 64, 132) == 2  # 256 programs: split while within ~4 per SM
    assert decode_num_splits(16, 8, 256, 16, 64, 132) == 4
    assert decode_num_splits(1, 8, 256, 16, 64, 132) == 16
    assert decode_num_splits(1, 8, 1, 16, 64, 132) == 1  # one block: one tile, nothing to split
