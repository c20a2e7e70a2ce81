"""The analyzers' tables of one run, each computed on first use and then shared.

A report reads the same derived tables in several sections (per-request latencies in the headline, the
USE table and the heat maps; block lives in the KV section and its histograms). On a long run each is
seconds of work over millions of rows, so one ``Derived`` per run computes each once:

    d = Derived(frames)
    d.request_metrics, d.inter_token_latencies, d.prefix_hits, d.block_lives, d.reuse_gaps,
    d.internal_fragmentation

Each property assumes its input streams are present and non-empty; callers check first, as they would
before calling the analyzer itself. The frames must not change while a ``Derived`` holds them.
"""

from __future__ import annotations

from functools import cached_property

import pandas as pd

from traceinfer.analysis import kv, requests


class Derived:
    def __init__(self, frames: dict[str, pd.DataFrame]) -> None:
        self.frames = frames

    @cached_property
    def request_metrics(self) -> pd.DataFrame:
        return requests.request_metrics(self.frames["requests"], self.frames["tokens"])

    @cached_property
    def inter_token_latencies(self) -> pd.DataFrame:
        return requests.inter_token_latencies(self.frames["tokens"])

    @cached_property
    def prefix_hits(self) -> pd.DataFrame:
        return kv.prefix_hits(self.frames["requests"], self.frames["tokens"])

    @cached_property
    def block_lives(self) -> pd.DataFrame:
        return kv.block_lives(self.frames["kv_events"])

    @cached_property
    def reuse_gaps(self) -> pd.DataFrame:
        return kv.reuse_gaps(self.frames["kv_events"])

    @cached_property
    def internal_fragmentation(self) -> pd.DataFrame:
        return kv.internal_fragmentation(self.frames["kv_events"], self.frames["requests"], self.frames["tokens"])
