"""The one table of telemetry metrics: each name, kind, unit, meaning and screen label, shared by /metrics
(Prometheus, under ``traceinfer:``) and ``traceinfer top`` (which reads the same names from /snapshot).

Names follow vLLM's where vLLM has the metric (``vllm:num_requests_running`` -> ``traceinfer:num_requests_running``;
counters get ``_total`` in the exposition, as vLLM's do); the rest are what vLLM lacks: step time by phase,
GPU-idle share, GC pauses and the probes' own cost. Histogram buckets are vLLM's, with finer low buckets
for a GPU's millisecond inter-token latencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from traceinfer.rundir.schema import STAGES

PREFIX = "traceinfer:"

Kind = Literal["counter", "gauge", "histogram"]

_LATENCY_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
              20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
_ITL_S = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
          2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
_REQUEST_S = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
              120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
_ITERATION_TOKENS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass(frozen=True)
class Metric:
    name: str  # without the prefix; the Prometheus family is PREFIX + name
    kind: Kind
    unit: str
    help: str
    label: str  # what top calls it
    labels: tuple[str, ...] = ()  # Prometheus label names
    buckets: tuple[float, ...] = ()  # histograms: upper bounds (+Inf added)
    vllm: bool = False  # vLLM has a metric of this name

    @property
    def family(self) -> str:
        return PREFIX + self.name


#: Every metric, by name (without the prefix).
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("num_requests_running", "gauge", "requests", "requests in the running batch after the last schedule",
               "running", vllm=True),
        Metric("num_requests_waiting", "gauge", "requests", "requests waiting to be scheduled", "waiting", vllm=True),
        Metric("kv_cache_usage_perc", "gauge", "fraction", "KV blocks held by requests / all KV blocks (0-1)",
               "KV use", vllm=True),
        Metric("prefix_cache_queries", "counter", "tokens", "tokens looked up in the prefix cache at admission "
               "(prompt plus outputs so far)", "prefix queries", vllm=True),
        Metric("prefix_cache_hits", "counter", "tokens", "of those, tokens found in the prefix cache", "prefix hits",
               vllm=True),
        Metric("num_preemptions", "counter", "requests", "preemptions (a request's KV dropped, recomputed later)",
               "preempted", vllm=True),
        Metric("prompt_tokens", "counter", "tokens", "prompt tokens of requests that produced their first token",
               "prompt tokens", vllm=True),
        Metric("generation_tokens", "counter", "tokens", "output tokens generated", "output tokens", vllm=True),
        Metric("request_success", "counter", "requests", "finished requests by finish reason", "finished",
               labels=("finished_reason",), vllm=True),
        Metric("time_to_first_token_seconds", "histogram", "s", "arrival to first output token", "TTFT",
               buckets=_LATENCY_S, vllm=True),
        Metric("inter_token_latency_seconds", "histogram", "s", "time between a request's consecutive output tokens",
               "ITL", buckets=_ITL_S, vllm=True),
        Metric("e2e_request_latency_seconds", "histogram", "s", "arrival to finish", "E2E", buckets=_REQUEST_S,
               vllm=True),
        Metric("request_queue_time_seconds", "histogram", "s", "arrival to first scheduling (time in the waiting "
               "queue)", "queue", buckets=_REQUEST_S, vllm=True),
        Metric("iteration_tokens_total", "histogram", "tokens", "query tokens per engine step that ran the model",
               "step tokens", buckets=_ITERATION_TOKENS, vllm=True),
        # what vLLM lacks
        Metric("engine_steps", "counter", "steps", "engine steps", "steps"),
        Metric("step_time_seconds", "counter", "s", "the engine thread's host time in steps, by phase: the five "
               "stages, the probes' handover and the rest", "step time", labels=("phase",)),
        Metric("gpu_idle_perc", "gauge", "fraction", "share of the window the GPU ran no kernel (1 - NVML "
               "utilization, mean over the window); absent without a GPU", "GPU idle"),
        Metric("gc_collections", "counter", "collections", "garbage collections, by generation", "GC",
               labels=("generation",)),
        Metric("gc_pause_seconds", "counter", "s", "time the collector paused the process, by generation",
               "GC pause", labels=("generation",)),
        Metric("probe_handover_seconds", "counter", "s", "engine-thread time of the probes' per-step work "
               "(the handover; behind the GPU while shorter than a forward)", "probe handover"),
        Metric("telemetry_cpu_seconds", "counter", "s", "CPU time of the telemetry's own threads (folding the "
               "windows, serving)", "telemetry CPU"),
    )
}  # fmt: skip

#: the phases of ``step_time_seconds`` (traceinfer.rundir.schema.STAGES, then the handover and the rest)
PHASES = (*STAGES, "handover", "other")
