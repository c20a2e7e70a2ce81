"""The workload catalog: each workload generates what its spec says, seeded; arrivals; the config's changes
and their errors; the JSON Lines file; ``traceinfer workloads``. No model, no torch in the code under test."""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from traceinfer.config import WorkloadConfig
from traceinfer.errors import ConfigError
from traceinfer.workloads import (
    MAX_TOKEN_ID,
    SPECS,
    WORKLOADS,
    BenchSpec,
    ChatbotSpec,
    bench_workload,
    describe,
    make,
    validate,
)
from traceinfer.workloads.jsonl import FIELDS
from traceinfer.workloads.specs import MIX, FileSpec, length_bounds

REPO = Path(__file__).resolve().parents[1]
GENERATED = WORKLOADS[:-1]  # every workload but file
CHAT = ("chatbot", "rag_qa", "code_gen", "summarization", "prefix_share")  # ChatbotSpec at different lengths
SIZES = pytest.mark.parametrize("on_cuda", [True, False], ids=["gpu", "cpu"])
MEAN_TOLERANCE = 0.05  # a mean length over 400 requests within 5% of the spec's (deterministic: seeded)


def spec_of(name: str, on_cuda: bool):
    return SPECS[name][0 if on_cuda else 1]


def lengths(workload) -> tuple[list[int], list[int]]:
    return [len(p) for p in workload.prompts], [p.max_tokens for p in workload.params]


# -- the catalog -------------------------------------------------------------------------------
def test_the_catalog_names_every_workload():
    assert WORKLOADS == ("chatbot", "rag_qa", "code_gen", "summarization", "prefix_share", "mixed", "bench", "file")
    assert set(SPECS) == set(GENERATED)
    assert ChatbotSpec() == SPECS["chatbot"][0] and BenchSpec() == SPECS["bench"][0]  # the defaults: GPU size
    assert make(WorkloadConfig(), on_cuda=False).name == "chatbot"


@pytest.mark.parametrize("name", CHAT)
@SIZES
def test_chat_shaped_workloads_generate_their_spec(name, on_cuda):
    spec = spec_of(name, on_cuda)
    w = make(WorkloadConfig(name=name), on_cuda)
    assert w.name == name and w.num_requests == spec.num_requests
    assert w.spec == {"kind": "ChatbotSpec", **dataclasses.asdict(spec)}
    prompt_lo, prompt_hi = length_bounds(spec.prompt_len, spec.spread)
    output_lo, output_hi = length_bounds(spec.output_len, spec.spread)
    prompts, outputs = lengths(w)
    assert all(prompt_lo <= n <= prompt_hi for n in prompts) and all(output_lo <= n <= output_hi for n in outputs)
    prefix = w.prompts[0][: spec.shared_prefix_len]
    assert len(prefix) == spec.shared_prefix_len and all(p[: len(prefix)] == prefix for p in w.prompts)
    assert len({tuple(p[len(prefix) :]) for p in w.prompts}) == w.num_requests  # the rest is each its own
    assert all(p.ignore_eos and p.temperature == spec.temperature for p in w.params)
    assert w.max_concurrency is None and w.arrival == spec.arrival


@pytest.mark.parametrize("name", CHAT)
@SIZES
def test_mean_lengths_are_the_specs(name, on_cuda):
    spec = spec_of(name, on_cuda)
    prompts, outputs = lengths(make(WorkloadConfig(name=name, num_requests=400), on_cuda))
    assert statistics.mean(prompts) == pytest.approx(spec.prompt_len, rel=MEAN_TOLERANCE)
    assert statistics.mean(outputs) == pytest.approx(spec.output_len, rel=MEAN_TOLERANCE)


def test_the_catalogs_numbers():
    """The sizes the catalog promises (lengths in tokens): GPU, then CPU."""
    expected = {  # num_requests, prompt_len, output_len, shared_prefix_len, arrival, rate
        "chatbot": ((64, 128, 256, 32, "poisson", 8.0), (8, 64, 128, 32, "poisson", 4.0)),
        "rag_qa": ((64, 2048, 64, 32, "poisson", 4.0), (8, 512, 16, 32, "poisson", 4.0)),
        "code_gen": ((64, 512, 512, 32, "poisson", 4.0), (8, 64, 64, 32, "poisson", 4.0)),
        "summarization": ((32, 4096, 256, 32, "offline", None), (4, 512, 32, 32, "offline", None)),
        "prefix_share": ((128, 1536 + 64, 64, 1536, "poisson", 16.0), (16, 192 + 16, 16, 192, "poisson", 8.0)),
    }
    for name, sizes in expected.items():
        for spec, numbers in zip(SPECS[name], sizes):
            assert (spec.num_requests, spec.prompt_len, spec.output_len, spec.shared_prefix_len, spec.arrival,
                    spec.rate) == numbers, name  # fmt: skip
    assert [(s.num_requests, s.rate, s.arrival) for s in SPECS["mixed"]] == [(64, 8.0, "poisson"), (8, 4.0, "poisson")]
    assert SPECS["bench"][1] == BenchSpec(num_requests=16, min_input_len=16, max_input_len=64, min_output_len=16,
                                          max_output_len=64)  # fmt: skip


def test_the_cpu_size_keeps_the_shape():
    for name in ("chatbot", "rag_qa", "code_gen", "summarization"):
        gpu, cpu = SPECS[name]
        assert gpu.prompt_len / gpu.output_len == pytest.approx(cpu.prompt_len / cpu.output_len, rel=0.01), name
        assert cpu.shared_prefix_len == gpu.shared_prefix_len == 32, name
        assert cpu.num_requests < gpu.num_requests and cpu.prompt_len < gpu.prompt_len, name
    gpu, cpu = SPECS["prefix_share"]  # its prefix shrinks (a long one is its point); question:answer stays
    assert (gpu.prompt_len - gpu.shared_prefix_len) / gpu.output_len == (cpu.prompt_len - cpu.shared_prefix_len) / cpu.output_len
    assert cpu.shared_prefix_len % 16 == 0 and gpu.shared_prefix_len % 16 == 0  # whole KV blocks


@pytest.mark.parametrize("name", ["chatbot", "prefix_share"])
@SIZES
def test_the_shared_prefix_fills_kv_blocks(name, on_cuda):
    """At least two full 16-token blocks: the prefix cache has whole blocks to find."""
    w = make(WorkloadConfig(name=name), on_cuda)
    common = 0
    while all(len(p) > common and p[common] == w.prompts[0][common] for p in w.prompts):
        common += 1
    assert common >= spec_of(name, on_cuda).shared_prefix_len >= 32


@SIZES
def test_mixed_holds_each_component_as_itself(on_cuda):
    w = make(WorkloadConfig(name="mixed", num_requests=2000 if not on_cuda else 300), on_cuda)
    groups: dict[tuple, list[int]] = {}
    for i, prompt in enumerate(w.prompts):
        groups.setdefault(tuple(prompt[:32]), []).append(i)
    assert len(groups) == len(MIX)  # a prefix per component
    components = spec_of("mixed", on_cuda).components
    found = {}
    for requests in groups.values():

        def fits(spec) -> bool:
            plo, phi = length_bounds(spec.prompt_len, spec.spread)
            olo, ohi = length_bounds(spec.output_len, spec.spread)
            return all(plo <= len(w.prompts[i]) <= phi and olo <= w.params[i].max_tokens <= ohi
                       and w.params[i].temperature == spec.temperature for i in requests)  # fmt: skip

        (match,) = [c.name for c in components if fits(c.spec)]
        found[match] = len(requests) / w.num_requests
    assert set(found) == set(MIX)
    if not on_cuda:  # 2,000 requests: each share within 3 points of its weight
        assert all(abs(found[name] - weight) < 0.03 for name, weight in MIX.items()), found
    assert w.spec["kind"] == "MixedSpec" and json.loads(json.dumps(w.spec))["components"][0]["name"] == "chatbot"


@SIZES
def test_bench_is_nano_vllms_through_make(on_cuda):
    w = make(WorkloadConfig(name="bench"), on_cuda)
    spec = spec_of("bench", on_cuda)
    assert (w.prompts, w.params) == bench_workload(spec)
    assert w.offline and w.arrival == "offline" and w.spec["kind"] == "BenchSpec"
    if on_cuda:
        assert (w.num_requests, w.prompt_tokens, w.max_output_tokens) == (256, 142_827, 133_966)
    prompts, outputs = lengths(w)
    assert all(spec.min_input_len <= n <= spec.max_input_len for n in prompts)
    assert all(spec.min_output_len <= n <= spec.max_output_len for n in outputs)


@pytest.mark.parametrize("name", GENERATED)
@SIZES
def test_same_config_same_workload_another_seed_another(name, on_cuda):
    w = make(WorkloadConfig(name=name), on_cuda)
    assert w == make(WorkloadConfig(name=name), on_cuda)
    other = make(WorkloadConfig(name=name, seed=1), on_cuda)
    assert other.prompts != w.prompts and other.spec["seed"] == 1
    json.dumps(w.spec)  # JSON-able, for the manifest


@pytest.mark.parametrize("name", GENERATED)
@SIZES
def test_token_ids_stay_in_the_vocabulary(name, on_cuda):
    ids = [t for p in make(WorkloadConfig(name=name), on_cuda, vocab_size=1000).prompts for t in p]
    assert 0 <= min(ids) and max(ids) < 1000
    ids = [t for p in make(WorkloadConfig(name=name), on_cuda).prompts for t in p]
    assert 0 <= min(ids) and max(ids) <= MAX_TOKEN_ID and max(ids) > 1000  # the default bound: nano-vLLM's 10000


# -- arrivals ----------------------------------------------------------------------------------
def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def test_poisson_arrivals_come_at_the_rate():
    w = make(WorkloadConfig(name="chatbot", num_requests=4000, rate=8.0), on_cuda=False)
    assert w.arrival == "poisson" and w.arrival_s[0] == 0.0 and w.arrival_s == sorted(w.arrival_s)
    g = gaps(w.arrival_s)
    assert statistics.mean(g) == pytest.approx(1 / 8, rel=0.05)
    assert statistics.stdev(g) / statistics.mean(g) == pytest.approx(1.0, rel=0.1)  # exponential gaps
    assert not w.offline


def test_gamma_arrivals_are_bursty_at_the_same_rate():
    w = make(WorkloadConfig(name="chatbot", num_requests=5000, arrival="gamma", rate=4.0, burstiness=0.25), False)
    g = gaps(w.arrival_s)
    assert w.arrival == "gamma" and w.arrival_s[0] == 0.0 and min(g) >= 0
    assert statistics.mean(g) == pytest.approx(1 / 4, rel=0.1)
    assert statistics.stdev(g) / statistics.mean(g) == pytest.approx(2.0, rel=0.1)  # 1 / sqrt(burstiness)


def test_offline_arrivals_are_all_zero_and_arrivals_change_no_prompt():
    for name in ("summarization", "bench"):
        w = make(WorkloadConfig(name=name), on_cuda=False)
        assert w.offline and w.arrival == "offline" and w.arrival_s == [0.0] * w.num_requests
    poisson = make(WorkloadConfig(name="chatbot"), on_cuda=False)
    offline = make(WorkloadConfig(name="chatbot", arrival="offline"), on_cuda=False)
    gamma = make(WorkloadConfig(name="chatbot", arrival="gamma", burstiness=0.5), on_cuda=False)
    assert offline.offline and offline.arrival_s == [0.0] * poisson.num_requests
    assert poisson.prompts == offline.prompts == gamma.prompts and poisson.params == gamma.params
    assert gamma.arrival_s != poisson.arrival_s
    bench = make(WorkloadConfig(name="bench", arrival="poisson", rate=2.0, max_concurrency=4), on_cuda=False)
    assert bench.arrival == "poisson" and not bench.offline and bench.max_concurrency == 4
    assert bench.prompts == make(WorkloadConfig(name="bench"), on_cuda=False).prompts


# -- the config's changes and their errors -----------------------------------------------------
def test_the_config_changes_the_spec():
    w = make(WorkloadConfig(name="rag_qa", num_requests=3, prompt_len=100, output_len=10, spread=0.0,
                            shared_prefix_len=48, temperature=0.0, max_concurrency=2), on_cuda=True)  # fmt: skip
    assert lengths(w) == ([100] * 3, [10] * 3) and all(p.temperature == 0.0 for p in w.params)
    assert w.max_concurrency == 2 and w.spec["shared_prefix_len"] == 48
    assert all(p[:48] == w.prompts[0][:48] for p in w.prompts)


CHATBOT_PARAMETERS = ("arrival, burstiness, max_concurrency, num_requests, output_len, prompt_len, rate, seed, "
                      "shared_prefix_len, spread, temperature")  # fmt: skip
CONFIG_ERRORS = [
    (dict(name="nope"), "unknown workload 'nope'; workloads: chatbot, rag_qa, code_gen, summarization, prefix_share, "
                        "mixed, bench, file"),
    (dict(name="chatbot", min_input_len=3),
     f"workload chatbot has no parameter min_input_len; its parameters: {CHATBOT_PARAMETERS}"),
    (dict(name="mixed", prompt_len=100, temperature=0.5),
     "workload mixed has no parameter prompt_len, temperature; its parameters: arrival, burstiness, "
     "max_concurrency, num_requests, rate, seed"),
    (dict(name="bench", spread=0.1), "workload bench has no parameter spread; its parameters: arrival, burstiness, "
                                     "max_concurrency, max_input_len, max_output_len, min_input_len"),
    (dict(file="requests.jsonl", num_requests=4),
     "workload file has no parameter num_requests; its parameters: file, max_concurrency"),
    (dict(name="chatbot", shared_prefix_len=38),
     "workload chatbot: shared_prefix_len 38 must be below the shortest prompt, 38 tokens (prompt_len 64 x "
     "(1 - spread 0.4))"),
    (dict(name="prefix_share", spread=0.5),
     "workload prefix_share: shared_prefix_len 192 must be below the shortest prompt, 104 tokens"),
    (dict(name="summarization", arrival="poisson"), "workload summarization: poisson arrivals need a rate: set --rate"),
    (dict(name="bench", arrival="gamma"), "workload bench: gamma arrivals need a rate: set --rate"),
    (dict(name="summarization", rate=2.0), "workload summarization: rate paces poisson and gamma arrivals, and its "
                                           "arrival is offline"),
    (dict(name="chatbot", burstiness=0.5), "workload chatbot: burstiness shapes gamma arrivals, and its arrival is "
                                           "poisson: add --arrival gamma"),
    (dict(name="bench", min_input_len=100), "workload bench: min_input_len/max_input_len need 1 <= min <= max, "
                                           "got 100..64"),
    (dict(name="file"), "workload file reads its requests from a JSON Lines file: give --workload-file PATH"),
    (dict(name="chatbot", file="requests.jsonl"), "--workload-file requests.jsonl is the file workload's, but the "
                                                  "workload is chatbot"),
]  # fmt: skip


@pytest.mark.parametrize("check", [validate, make], ids=["validate", "make"])
@pytest.mark.parametrize(("fields", "message"), CONFIG_ERRORS, ids=[str(i) for i in range(len(CONFIG_ERRORS))])
def test_config_errors_say_what_is_wrong(check, fields, message):
    with pytest.raises(ConfigError) as info:
        check(WorkloadConfig(**fields), False)
    assert str(info.value).startswith(message), str(info.value)


def test_a_spec_checks_itself():
    with pytest.raises(ConfigError, match="shared_prefix_len 100 must be below the shortest prompt, 77 tokens"):
        ChatbotSpec(shared_prefix_len=100)
    with pytest.raises(ConfigError, match="spread must be in"):
        ChatbotSpec(spread=1.0)
    with pytest.raises(ConfigError, match="max_concurrency must be >= 1"):
        BenchSpec(max_concurrency=0)
    with pytest.raises(ConfigError, match="vocab_size must be >= 1"):
        make(WorkloadConfig(), on_cuda=False, vocab_size=0)


# -- the JSON Lines file -----------------------------------------------------------------------
def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = '{"prompt_token_ids": [1, 2, 3], "max_tokens": 4}'
LINE_ERRORS = [
    ('{"max_tokens": 4,', r"not valid JSON \(Expecting property name enclosed in double quotes, column 18\)"),
    ("[1, 2]", r"a request is a JSON object \(\{...\}\), got list \[1, 2\]"),
    ('{"prompt_token_ids": [1], "max_tokens": 4, "n": 2}', "unknown field n; fields: " + ", ".join(FIELDS)),
    ('{"prompt": "hi", "prompt_token_ids": [1], "max_tokens": 4}', "give exactly one of prompt .* got both"),
    ('{"max_tokens": 4}', "give exactly one of prompt .* got neither"),
    ('{"prompt_token_ids": [], "max_tokens": 4}', r"prompt_token_ids must be a non-empty list of token ids"),
    ('{"prompt_token_ids": [1, -2], "max_tokens": 4}', r"prompt_token_ids must be .* got \[1, -2\]"),
    ('{"prompt_token_ids": [1, true], "max_tokens": 4}', r"prompt_token_ids must be .* got \[1, true\]"),
    ('{"prompt_token_ids": "1 2", "max_tokens": 4}', r'prompt_token_ids must be .* got "1 2"'),
    ('{"prompt": "", "max_tokens": 4}', 'prompt must be non-empty text, got ""'),
    ('{"prompt_token_ids": [1]}', r"max_tokens is required \(an integer >= 1\)"),
    ('{"prompt_token_ids": [1], "max_tokens": true}', "max_tokens must be an integer >= 1, got true"),
    ('{"prompt_token_ids": [1], "max_tokens": 2.5}', "max_tokens must be an integer >= 1, got 2.5"),
    ('{"prompt_token_ids": [1], "max_tokens": 0}', "max_tokens must be an integer >= 1, got 0"),  # SamplingParams's
    ('{"prompt_token_ids": [1], "max_tokens": 4, "arrival_s": -1}', "arrival_s must be a number of seconds >= 0"),
    ('{"prompt_token_ids": [1], "max_tokens": 4, "arrival_s": "1s"}', "arrival_s must be a number of seconds >= 0"),
    ('{"prompt_token_ids": [1], "max_tokens": 4, "temperature": -1}', r"temperature must be >= 0 \(0 = greedy\)"),
    ('{"prompt_token_ids": [1], "max_tokens": 4, "top_p": 2}', r"top_p must be in \(0, 1\], got 2"),
    ('{"prompt_token_ids": [1], "max_tokens": 4, "top_k": 1.5}', r"top_k must be an integer \(-1 or 0: off\)"),
    ('{"prompt_token_ids": [1], "max_tokens": 4, "seed": -1}', r"seed must be an integer in \[0, 2\*\*63\)"),
    ('{"prompt_token_ids": [1], "max_tokens": 4, "ignore_eos": 1}', "ignore_eos must be true or false, got 1"),
    ('{"prompt_token_ids": [1], "max_tokens": 4, "stop_token_ids": [false]}', "stop_token_ids must be a list"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "message"), LINE_ERRORS, ids=[str(i) for i in range(len(LINE_ERRORS))])
def test_a_bad_line_is_named_with_its_number(tmp_path, line, message):
    path = write(tmp_path, GOOD, "", line, GOOD)  # the blank line counts: the bad one is line 3
    for check in (validate, make):
        with pytest.raises(ConfigError, match=f"^{path}:3: {message}"):
            check(WorkloadConfig(file=str(path)), False)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=f"workload file {tmp_path / 'nope.jsonl'} does not exist"):
        validate(WorkloadConfig(file=str(tmp_path / "nope.jsonl")), False)
    with pytest.raises(ConfigError, match=f"cannot read workload file {tmp_path}: "):
        validate(WorkloadConfig(file=str(tmp_path)), False)  # a directory
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "max_tokens": 4}\n')
    with pytest.raises(ConfigError, match="cannot read workload file .*latin1.jsonl: 'utf-8' codec"):
        validate(WorkloadConfig(file=str(tmp_path / "latin1.jsonl")), False)
    with pytest.raises(ConfigError, match="holds no requests: write one JSON object per line"):
        validate(WorkloadConfig(file=str(write(tmp_path, "", "  "))), False)


def test_a_token_id_outside_the_vocabulary_is_named_with_its_line(tmp_path):
    path = write(tmp_path, GOOD, '{"prompt_token_ids": [5, 150], "max_tokens": 4}')
    validate(WorkloadConfig(file=str(path)), False)  # no model: no vocabulary to check against
    assert make(WorkloadConfig(file=str(path)), False, vocab_size=151).prompts[1] == [5, 150]
    with pytest.raises(ConfigError, match=rf"^{path}:2: token id 150 is outside the model's vocabulary of 100 "
                                          r"\(ids 0..99\)"):  # fmt: skip
        make(WorkloadConfig(file=str(path)), False, vocab_size=100)


def test_a_file_keeps_its_requests_in_arrival_order(tmp_path):
    path = write(
        tmp_path,
        '{"prompt_token_ids": [1], "max_tokens": 1, "arrival_s": 0.5}',
        '{"prompt_token_ids": [2], "max_tokens": 2, "arrival_s": 0}',
        '{"prompt_token_ids": [3], "max_tokens": 3, "arrival_s": 0.5, "temperature": 0.0, "seed": 7}',
        '{"prompt_token_ids": [4], "max_tokens": 4, "arrival_s": 0.25, "stop_token_ids": [9], "ignore_eos": true}',
        '{"prompt_token_ids": [5], "max_tokens": 5}',
    )
    w = make(WorkloadConfig(file=str(path), max_concurrency=2), on_cuda=True)
    assert w.name == "file" and w.arrival == "file" and not w.offline and w.max_concurrency == 2
    assert w.prompts == [[2], [5], [4], [1], [3]]  # by arrival_s, ties in file order
    assert w.arrival_s == [0.0, 0.0, 0.25, 0.5, 0.5]
    assert [p.max_tokens for p in w.params] == [2, 5, 4, 1, 3]
    assert w.params[2].stop_token_ids == (9,) and w.params[2].ignore_eos and w.params[4].seed == 7
    assert w.params[4].temperature == 0.0 and w.params[0].temperature == 1.0  # SamplingParams's default
    assert w.spec == {"kind": "FileSpec", "file": str(path), "max_concurrency": 2}
    assert make(WorkloadConfig(name="file", file=str(write(tmp_path, GOOD, GOOD))), False).arrival == "offline"


def test_text_prompts_go_through_the_tokenizer(tmp_path):
    path = write(tmp_path, '{"prompt": "hello", "max_tokens": 4}', GOOD, '{"prompt": "hi!", "max_tokens": 2}')
    validate(WorkloadConfig(file=str(path)), False)  # a tokenizer is the model's: not needed to check the file

    def tokenize(text: str) -> list[int]:
        return [ord(c) for c in text]

    w = make(WorkloadConfig(file=str(path)), False, tokenize=tokenize)
    assert w.prompts == [[104, 101, 108, 108, 111], [1, 2, 3], [104, 105, 33]]
    with pytest.raises(ConfigError, match=f"^{path}:1: prompt is text, which needs the model's tokenizer"):
        make(WorkloadConfig(file=str(path)), False)
    with pytest.raises(ConfigError, match=f"^{path}:1: token id 111 is outside the model's vocabulary of 110"):
        make(WorkloadConfig(file=str(path)), False, vocab_size=110, tokenize=tokenize)
    with pytest.raises(ConfigError, match=f"^{path}:1: prompt tokenizes to no tokens"):
        make(WorkloadConfig(file=str(path)), False, tokenize=lambda text: [])


# -- describe() and `traceinfer workloads` ------------------------------------------------------
def test_describe_gives_every_workload_at_both_sizes():
    entries = describe()
    assert [e["name"] for e in entries] == list(WORKLOADS)
    for entry in entries:
        assert entry["description"] and entry["gpu"].keys() == entry["cpu"].keys()
    chatbot = entries[0]
    assert chatbot["arrival"] == "poisson" and chatbot["gpu"]["prompt_len"] == 128 and chatbot["cpu"]["prompt_len"] == 64
    assert entries[WORKLOADS.index("mixed")]["gpu"]["components"] == MIX
    assert entries[-1]["arrival"] == "file" and set(entries[-1]["gpu"]) == {f for f in FileSpec.__dataclass_fields__}
    json.dumps(entries)


def test_the_workloads_command_lists_every_workload_without_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "traceinfer.cli", "workloads"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "traceinfer.workloads" in imported and "torch" not in imported and "numpy" not in imported
    out = proc.stdout
    for name in WORKLOADS:
        assert f"\n{name}: " in out, name
    for text in ("--workload rag_qa --num-requests 16 --prompt-len 1024", "--workload-file PATH", "--workload-seed",
                 "TRACEINFER_WORKLOAD_PROMPT_LEN", "[workload]", "GPU", "CPU"):  # fmt: skip
        assert text in out, text
    assert max(map(len, out.splitlines())) <= 100
    proc = subprocess.run([sys.executable, "-m", "traceinfer.cli", "workloads", "--json"], capture_output=True,
                          text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0 and json.loads(proc.stdout) == describe()


def test_importing_the_workloads_imports_no_torch():
    code = "import sys, traceinfer.workloads; assert 'torch' not in sys.modules, 'imported torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
