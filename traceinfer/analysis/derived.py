"""The analyzers' tables of one run, each computed on first use and then shared.

A report reads the same derived tables in several sections (per-request latencies in the headline, the
USE table and the heat maps; block lives in the KV section and its histograms). On a long run each is
seconds of work over millions of rows, so one ``Derived`` per run computes each once:

    d = Derived(frames)
    d.request_metrics, d.inter_token_latencies, d.prefix_hits, d.block_lives, d.reuse_gaps,
    d.internal_fragmentation         # inter_token_latencies: the columns step, t_ns and itl_ms only

Each property assumes its input streams are present and non-empty; callers check first, as they would
before calling the analyzer itself. The frames must not change while a ``Derived`` holds them.

``prefetch()`` computes every table the frames allow, the KV log's and the tokens' in two threads: the
analyzers spend most of their time in numpy and Arrow, which release the GIL, so on two cores the pair
takes about the time of the longer (measured on a 10M-token run: docs/benchmarks.md).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

import pandas as pd

from traceinfer.analysis import kv, requests

#: the tables of each thread of ``prefetch``, and the streams each needs
KV_TABLES = ("block_lives", "reuse_gaps", "internal_fragmentation")
TOKEN_TABLES = ("request_metrics", "prefix_hits", "inter_token_latencies")  # the largest table last
NEEDS = {"request_metrics": ("requests", "tokens"), "inter_token_latencies": ("tokens",),
         "prefix_hits": ("requests", "tokens"), "block_lives": ("kv_events",), "reuse_gaps": ("kv_events",),
         "internal_fragmentation": ("kv_events", "requests", "tokens")}  # fmt: skip


class Derived:
    def __init__(self, frames: dict[str, pd.DataFrame]) -> None:
        self.frames = frames

    def available(self, table: str) -> bool:
        """Whether the frames hold what ``table`` is computed from (each stream present and not empty)."""
        return all(name in self.frames and not self.frames[name].empty for name in NEEDS[table])

    def prefetch(self, threads: int = 2) -> Derived:
        """Compute every available table now, the KV log's and the tokens' side by side."""
        groups = [[t for t in group if self.available(t)] for group in (KV_TABLES, TOKEN_TABLES)]
        if threads < 2:
            for table in groups[0] + groups[1]:
                getattr(self, table)
            return self
        with ThreadPoolExecutor(min(threads, 2), thread_name_prefix="traceinfer-derived") as pool:
            for future in [pool.submit(lambda g=g: [getattr(self, t) for t in g]) for g in groups]:
                future.result()
        return self

    @cached_property
    def token_runs(self) -> requests.TokenRuns:
        """The tokens grouped by request (ids sorted), ordered by index: one grouping for the two tables
        that need it (request_metrics, inter_token_latencies)."""
        return requests.token_runs(self.frames["tokens"], "index", sort_ids=True)

    @cached_property
    def request_metrics(self) -> pd.DataFrame:
        return requests.request_metrics(self.frames["requests"], self.frames["tokens"], self.token_runs)

    @cached_property
    def inter_token_latencies(self) -> pd.DataFrame:
        # the columns the report reads (its heat map, the GC finding, the summary): not request_id, index
        table = requests.inter_token_latencies(self.frames["tokens"], self.token_runs, ("step", "t_ns", "itl_ms"))
        self.__dict__.pop("token_runs", None)  # the last table that needs it (prefetch's order): free 10M rows' order
        return table

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
