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
from typing import ClassVar

from traceinfer import __version__
from traceinfer.flamegraphs.folded import Folded, format_folded, kind_of
from traceinfer.render.flame_options import FlameOptions
from traceinfer.render.flame_svg import render_svg

__all__ = ["FORMATS", "SPEEDSCOPE_SCHEMA", "FlameOptions", "FlameRenderer"]


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
