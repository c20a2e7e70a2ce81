"""How a flame graph is drawn (traceinfer.render.flame's renderers take it; flame_svg reads most of it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from traceinfer.errors import ConfigError

Palette = Literal["auto", "kind", "hot"]
PALETTES: tuple[str, ...] = ("auto", "kind", "hot")
# what a count is called in tooltips, by Folded.unit
COUNT_NAMES = {"samples": "samples", "ns": "ns", "bytes": "bytes", "s": "s"}


@dataclass(frozen=True)
class FlameOptions:
    """How a flame graph is drawn. Only the SVG uses most of these; speedscope uses ``title``."""

    title: str = "Flame Graph"
    subtitle: str | None = None  # e.g. "engine phase: schedule"
    icicle: bool = False  # root at the top (else at the bottom, a flame)
    min_width_px: float = 0.1  # narrower frames are not drawn; their counts stay in their parents' widths
    width_px: int = 1200
    rate_hz: float | None = None  # the sampling rate, when the unit is samples: tooltips then give seconds too
    count_name: str | None = None  # what a count is called; None: from the unit (samples, ns, bytes, s)
    # auto: colors by frame kind (python, native, kernel, range, idle), red/blue for a differential;
    # kind: by frame kind even for a differential; hot: flamegraph.pl's one palette for every frame
    palette: Palette = "auto"
    max_bytes: int = 4_500_000  # the SVG's limit: past it the min width rises, so a big profile stays small

    def __post_init__(self) -> None:
        if self.palette not in PALETTES:
            raise ConfigError(f"palette must be one of {', '.join(PALETTES)}, not {self.palette!r}")
        if not self.width_px >= 100:
            raise ConfigError(f"width_px must be at least 100, not {self.width_px!r}")
        if not self.min_width_px >= 0:
            raise ConfigError(f"min_width_px must be 0 or more, not {self.min_width_px!r}")
        if self.rate_hz is not None and not self.rate_hz > 0:
            raise ConfigError(f"rate_hz must be positive, not {self.rate_hz!r}")
        if not self.max_bytes >= 100_000:
            raise ConfigError(f"max_bytes must be at least 100000, not {self.max_bytes!r}")

    def counts_called(self, unit: str) -> str:
        """What a count of ``unit`` is called in tooltips."""
        return self.count_name or COUNT_NAMES.get(unit, unit)
