"""When requests arrive: seconds after the workload starts, one per request, non-decreasing.

    offline : every request at t=0, one batch (what a throughput benchmark runs)
    poisson : independent arrivals at ``rate`` requests/s: gaps ~ Exponential(rate)
    gamma   : bursty arrivals: gaps ~ Gamma(shape=burstiness, scale=1 / (rate * burstiness)), so the mean
              gap is still 1/rate and its coefficient of variation 1/sqrt(burstiness): burstiness 1 is
              Poisson, 0.25 gives gaps twice as variable, in bursts with lulls between them

The first request arrives at t=0, each later one a gap after the one before. The gaps come from their own
random stream, seeded from the workload's seed, so changing how requests arrive changes no prompt.
"""

from __future__ import annotations

import itertools
import random
from typing import Literal

from traceinfer.errors import ConfigError

Arrival = Literal["offline", "poisson", "gamma"]
ARRIVALS: tuple[str, ...] = ("offline", "poisson", "gamma")


def check_arrival(arrival: str, rate: float | None, burstiness: float) -> None:
    """A ConfigError unless ``arrival`` is known and has what it needs: a rate > 0 for poisson and gamma."""
    if arrival not in ARRIVALS:
        raise ConfigError(f"arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    if arrival != "offline" and rate is None:
        raise ConfigError(f"{arrival} arrivals need a rate: set --rate (requests per second; [workload] rate "
                          f"in traceinfer.toml, TRACEINFER_WORKLOAD_RATE)")  # fmt: skip
    if rate is not None and not rate > 0:
        raise ConfigError(f"rate must be > 0 requests per second, got {rate}")
    if not burstiness > 0:
        raise ConfigError(f"burstiness must be > 0, got {burstiness}")


def arrival_times(num_requests: int, arrival: str, rate: float | None, burstiness: float, seed: int) -> list[float]:
    """Arrival times in seconds (see the module's docstring); the same arguments give the same times."""
    check_arrival(arrival, rate, burstiness)
    if arrival == "offline":
        return [0.0] * num_requests
    rng = random.Random(f"arrivals:{seed}")  # not the prompts' stream: a str seed hashes to another state
    if arrival == "poisson":
        gaps = [rng.expovariate(rate) for _ in range(num_requests - 1)]
    else:
        gaps = [rng.gammavariate(burstiness, 1 / (rate * burstiness)) for _ in range(num_requests - 1)]
    return list(itertools.accumulate(gaps, initial=0.0))
