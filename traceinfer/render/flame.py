"""Flame graphs from folded stacks (traceinfer.flamegraphs.folded): one renderer per format, one registry.

    from traceinfer.render.flame import FORMATS, FlameOptions
    renderer = FORMATS["svg"]()                      # "svg" | "speedscope" | "folded"
    text = renderer.render(folded, FlameOptions(title="traceinfer profile", rate_hz=100))
    path.with_suffix("." + renderer.extension).write_text(text)
    print(renderer.opens_with.format(path=path))

Formats:
    svg        our own interactive SVG (traceinfer.render.flame_svg): click to zoom, Ctrl-F to search, a
               tooltip per frame, colors by frame kind, red/blue for a differential. Self-contained.
    speedscope the sampled profile of https://www.speedscope.app/file-format-schema.json.
    folded     ``root;child;leaf count`` text (folded.format_folded), for flamegraph.pl, inferno, grep.

A differential (``folded.other`` set; transforms.differential) is drawn with the widths of ``other`` (the
second, "after", profile) and colored by the change from ``counts`` (the first, normalized); speedscope
gets ``other`` alone; folded text keeps both counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Literal

from traceinfer import __version__
from traceinfer.errors import ConfigError
from traceinfer.flamegraphs.folded import Folded, format_folded, kind_of
from traceinfer.render.flame_svg import render_svg

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


class FlameRenderer:
    """One output format: ``render`` returns the file's text; write it as ``<name>.<extension>``."""

    name: ClassVar[str]
    extension: ClassVar[str]
    opens_with: ClassVar[str]  # what to tell the user after writing ``{path}``

    def render(self, folded: Folded, options: FlameOptions = FlameOptions()) -> str:
        raise NotImplementedError


class SvgRenderer(FlameRenderer):
    name = "svg"
    extension = "svg"
    opens_with = "open {path} in a web browser: click a frame to zoom, Ctrl-F to search"

    def render(self, folded: Folded, options: FlameOptions = FlameOptions()) -> str:
        return render_svg(folded, options)


SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"
SPEEDSCOPE_UNITS = {"samples": "none", "ns": "nanoseconds", "bytes": "bytes", "s": "seconds"}


class SpeedscopeRenderer(FlameRenderer):
    """A speedscope "sampled" profile: one sample per distinct stack, weighted by its count (a differential:
    the second profile's). Frames keep their names, a kind annotation spelled out ("fmha_fwd [kernel]")."""

    name = "speedscope"
    extension = "speedscope.json"
    opens_with = "drop {path} on https://www.speedscope.app (or run `speedscope {path}`)"

    def render(self, folded: Folded, options: FlameOptions = FlameOptions()) -> str:
        counts = folded.other if folded.other is not None else folded.counts
        index: dict[str, int] = {}
        frames: list[dict] = []
        samples: list[list[int]] = []
        weights: list[float] = []
        for stack in sorted(counts):
            weight = counts[stack]
            if weight <= 0:
                continue
            sample = []
            for frame in stack:
                i = index.get(frame)
                if i is None:
                    shown, kind = kind_of(frame)
                    i = index[frame] = len(frames)
                    frames.append({"name": shown if kind == "python" else f"{shown} [{kind}]"})
                sample.append(i)
            samples.append(sample)
            weights.append(int(weight) if float(weight).is_integer() else weight)
        total = sum(weights)
        doc = {
            "$schema": SPEEDSCOPE_SCHEMA,
            "shared": {"frames": frames},
            "profiles": [
                {
                    "type": "sampled",
                    "name": options.title,
                    "unit": SPEEDSCOPE_UNITS.get(folded.unit, "none"),
                    "startValue": 0,
                    "endValue": total,
                    "samples": samples,
                    "weights": weights,
                }
            ],
            "name": options.title if options.subtitle is None else f"{options.title} ({options.subtitle})",
            "activeProfileIndex": 0,
            "exporter": f"traceinfer {__version__}",
        }
        return json.dumps(doc, separators=(",", ":"))


class FoldedRenderer(FlameRenderer):
    name = "folded"
    extension = "folded"
    opens_with = "{path}: folded stacks, for flamegraph.pl, inferno-flamegraph or grep"

    def render(self, folded: Folded, options: FlameOptions = FlameOptions()) -> str:
        return format_folded(folded)


FORMATS: dict[str, type[FlameRenderer]] = {r.name: r for r in (SvgRenderer, SpeedscopeRenderer, FoldedRenderer)}
