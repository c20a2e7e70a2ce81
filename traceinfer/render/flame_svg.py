"""The interactive flame-graph SVG, our own (after Brendan Gregg's flamegraph.pl and inferno/py-spy): one
``<g><title/><rect/><text/></g>`` per frame, widths proportional to counts, siblings in alphabetical order,
root at the bottom (a flame) or at the top (an icicle); click to zoom, Ctrl-F or "Search" to highlight,
colors by frame kind (folded.kind_of) or, for a differential, red where a frame grew and blue where it
shrank. Self-contained: the CSS and script (traceinfer.render.flame_svg_script) are inline, nothing is
fetched. Opens in any browser; as an <img> it is a static picture.

Layout works on the sorted stacks, not on a tree of every frame: the stacks under a frame are one run of the
sorted list, so a frame's count is a difference of running sums and a frame narrower than ``min_width_px``
is skipped with everything above it, without visiting it (a one-minute profile of 100,000 stacks, 50
frames deep, lays out in a quarter of a second; a tree of every frame would hold millions of nodes). A
skipped frame's count stays in its parent's width. Where the frames left would still make the file longer
than ``max_bytes``, only the widest are kept (the min width rises, and the graph's footer says to what).
"""

from __future__ import annotations

import json
import re
import zlib
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter

from traceinfer.flamegraphs.folded import Folded, kind_of
from traceinfer.render.flame_options import FlameOptions
from traceinfer.render.flame_svg_script import CSS, SCRIPT

ROW_PX = 16  # a frame is 15 px high, with a 1 px gap above it
FRAME_PX = 15
FONT_PX = 12
FONT_WIDTH = 0.59  # average glyph width / font size for Verdana (flamegraph.pl's estimate)
XPAD = 10
TOP_PX = 70  # title, subtitle and legend rows
BOTTOM_PX = 30  # the details line and "Matched"
ROOT = "all"
_HEAD_BYTES = 12_000  # the document without its frames: style, script, title, legend

NEUTRAL = "#d8d8d8"  # a differential's frame that did not change
MATCH = "#e600e6"  # a frame that matches the search (flamegraph.pl's magenta)
ROOT_FILL = "#c8c8c8"
FG_NAMESPACE = "urn:traceinfer:flame"  # of fg:x and fg:w, a frame's offset and width in counts

_TEXT_PX = 3 * FONT_PX * FONT_WIDTH  # a narrower frame has no label
_FRAME_BYTES = 175  # a frame's markup and tooltip, besides its name (twice where it is wide enough for a label)

KIND_LABELS = {"python": "Python", "native": "native", "kernel": "GPU kernel", "range": "range", "idle": "idle"}


def _rgb(r: float, g: float, b: float) -> str:
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


# a kind's palette: three hash values in [0, 1] -> a color; each kind keeps to its own hue range
_PALETTES = {
    "python": lambda v1, v2, v3: _rgb(205 + 50 * v3, 60 + 90 * v1, 50 * v2),  # red to orange
    "native": lambda v1, v2, v3: _rgb(195 + 40 * v1, 185 + 45 * v1, 40 + 40 * v2),  # yellow
    "kernel": lambda v1, v2, v3: _rgb(50 + 60 * v1, 185 + 60 * v2, 50 + 60 * v3),  # green
    "range": lambda v1, v2, v3: _rgb(70 + 60 * v1, 150 + 50 * v1, 205 + 50 * v2),  # blue
    "idle": lambda v1, v2, v3: _rgb(175 + 45 * v1, 175 + 45 * v1, 175 + 45 * v1),  # grey
    "hot": lambda v1, v2, v3: _rgb(205 + 50 * v3, 230 * v1, 55 * v2),  # flamegraph.pl's default
}


def _hash3(name: str) -> tuple[float, float, float]:
    """Three stable values in [0, 1] from a name (the same name gets the same color in every graph)."""
    h = zlib.crc32(name.encode("utf-8", "surrogatepass"))
    return (h & 0xFF) / 255, (h >> 8 & 0xFF) / 255, (h >> 16 & 0xFF) / 255


def kind_color(name: str, kind: str) -> str:
    """The fill of a frame of ``kind`` (python, native, kernel, range, idle, or hot for every frame)."""
    return _PALETTES[kind](*_hash3(name))


def diff_color(delta: float, max_delta: float) -> str:
    """Red for growth, blue for shrinkage, deeper the larger ``|delta|`` against ``max_delta``; 0: neutral."""
    if delta == 0 or max_delta <= 0:
        return NEUTRAL
    c = 60 + 150 * (1 - min(1.0, abs(delta) / max_delta))  # 210: the least change, 60: the most
    return _rgb(255, c, c) if delta > 0 else _rgb(c, c, 255)


@dataclass(frozen=True)
class Layout:
    """The frames to draw, in pre-order: (frame as in the folded stacks, depth (root 0), offset, width,
    first profile's width), offsets and widths in counts of the drawn profile (``other`` for a differential)."""

    frames: list[tuple[str, int, float, float, float]]
    total: float
    narrow: int  # frames not drawn (each with everything above it) for being narrower than min_width_px
    min_width_px: float  # as applied: the option's, or more where max_bytes required
    depth: int  # of the deepest frame drawn


def _groups(stacks: list[tuple[str, ...]], lo: int, hi: int, d: int) -> Iterator[tuple[int, int]]:
    """The runs of ``stacks[lo:hi]`` (sorted, sharing their first ``d`` frames) with one frame ``d``; stacks
    that end at ``d`` (their parent's own count) sort first and are no run."""
    i = lo
    while i < hi and len(stacks[i]) == d:
        i += 1
    key = itemgetter(d)
    while i < hi:
        j = bisect_right(stacks, stacks[i][d], i, hi, key=key)
        yield i, j
        i = j


def layout(folded: Folded, graph_px: float, min_width_px: float) -> Layout:
    """Every frame at least ``min_width_px`` wide, in pre-order."""
    stacks = sorted(folded.counts)  # flamegraph.pl's order: alphabetical within each parent
    before = [folded.counts[s] for s in stacks]
    drawn = before if folded.other is None else [folded.other.get(s, 0.0) for s in stacks]
    at = [0.0, *accumulate(drawn)]  # at[i]: the offset of stacks[i]
    at_before = at if folded.other is None else [0.0, *accumulate(before)]
    total = at[-1]
    if not total > 0:
        return Layout([], 0.0, 0, min_width_px, 0)
    min_count = min_width_px * total / graph_px
    frames = [(ROOT, 0, 0.0, total, at_before[-1])]
    narrow = 0
    todo = [(i, j, 0) for i, j in reversed(list(_groups(stacks, 0, len(stacks), 0)))]
    while todo:  # depth first, children left to right: pre-order
        i, j, d = todo.pop()
        width = at[j] - at[i]
        if width < min_count or width <= 0:
            narrow += width > 0
            continue
        frames.append((stacks[i][d], d + 1, at[i], width, at_before[j] - at_before[i]))
        todo.extend((a, b, d + 1) for a, b in reversed(list(_groups(stacks, i, j, d + 1))))
    return Layout(frames, total, narrow, min_width_px, max(f[1] for f in frames))


def within(lay: Layout, graph_px: float, budget: int) -> Layout:
    """The widest frames of ``lay`` whose markup fits in about ``budget`` bytes (a frame is never wider than
    its parent, so every kept frame keeps its ancestors); the rest count as narrow."""
    if not lay.frames:
        return lay
    scale = graph_px / lay.total
    by_width = sorted(lay.frames, key=lambda f: f[3], reverse=True)
    used = 0
    for f in by_width:
        used += _FRAME_BYTES + 2 * len(f[0]) if f[3] * scale > _TEXT_PX else _FRAME_BYTES + len(f[0])
        if used > budget:
            cut = f[3]
            break
    else:
        return lay
    kept = [f for f in lay.frames if f[3] > cut] or lay.frames[:1]
    return Layout(kept, lay.total, lay.narrow + len(lay.frames) - len(kept), max(lay.min_width_px, cut * scale),
                  max(f[1] for f in kept))  # fmt: skip


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    """Text safe in XML content and attributes (characters XML 1.0 forbids become U+FFFD)."""
    text = _NOT_XML.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def fit(name: str, width_px: float) -> str:
    """The name cut to a frame's width (flamegraph.pl's rule): nothing under 3 characters, else ``name..``."""
    n = int(width_px / (FONT_PX * FONT_WIDTH))
    if n < 3:
        return ""
    return name if len(name) <= n else name[: n - 2] + ".."


def _label(name: str, x_px: float, y: int, w_px: float) -> str:
    text = escape(fit(name, w_px))
    where = f'x="{_px(x_px + 3)}" y="{y + 11}"'
    return f"<text {where}>{text}</text>" if text else f"<text {where}/>"


def _px(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _count(value: float) -> str:
    return f"{round(value):,}" if abs(value - round(value)) < 1e-9 * max(1.0, abs(value)) else f"{value:,.2f}"


class _Tooltips:
    """A frame's tooltip: its name, then its count with the unit, the time where known, and its share."""

    def __init__(self, unit: str, options: FlameOptions, total: float) -> None:
        self.unit, self.total, self.rate = unit, total, options.rate_hz
        self.called = options.counts_called(unit)

    def amount(self, count: float) -> str:
        text = f"{_count(count)} {self.called}"
        if self.unit == "ns":
            ms = count / 1e6
            text += f" ({ms:,.3f} ms)" if ms < 1000 else f" ({ms:,.1f} ms)"
        elif self.unit == "samples" and self.rate:
            text += f" ({count / self.rate:,.3f} s)"
        return text

    def share(self, count: float) -> str:
        return f"{100 * count / self.total:.2f}% of all"

    def plain(self, name: str, kind: str, count: float) -> str:
        return f"{name}\n{_kind_label(kind)}{self.amount(count)}, {self.share(count)}"

    def differential(self, name: str, kind: str, after: float, before: float, delta: float) -> str:
        if delta == 0:
            change = "no change"
        else:
            rel = f"{100 * delta / before:+.1f}%" if before > 0 else "new"
            change = f"{'+' if delta > 0 else '-'}{_count(abs(delta))} ({rel})"
        return (
            f"{name}\n{_kind_label(kind)}{self.amount(after)}, {self.share(after)}; before {_count(before)}: {change}"
        )


def _kind_label(kind: str) -> str:
    return f"{KIND_LABELS[kind]}: " if kind in KIND_LABELS and kind != "python" else ""


def _legend(entries: list[tuple[str, str]], width: int) -> str:
    """Color swatches and their labels, centered on the legend row."""
    if not entries:
        return ""
    sizes = [12 + 4 + len(label) * 11 * FONT_WIDTH + 14 for _, label in entries]
    x = (width - sum(sizes)) / 2
    parts = ['<g id="legend">']
    for (fill, label), size in zip(entries, sizes):
        parts.append(f'<rect x="{_px(x)}" y="50" width="12" height="12" fill="{fill}"/>'
                     f'<text x="{_px(x + 16)}" y="60">{escape(label)}</text>')  # fmt: skip
        x += size
    parts.append("</g>")
    return "".join(parts)


def render_svg(folded: Folded, options: FlameOptions) -> str:
    """The SVG document of ``folded`` (see the module's docstring), at most ``options.max_bytes`` long."""
    graph_px = int(options.width_px) - 2 * XPAD
    every = layout(folded, graph_px, options.min_width_px)
    budget = options.max_bytes - _HEAD_BYTES
    while True:  # the byte estimate of ``within`` is close; a document still too long goes again, smaller
        svg = _document(folded, within(every, graph_px, budget), options)
        size = len(svg.encode("utf-8"))
        if size <= options.max_bytes:
            return svg
        budget = int(budget * options.max_bytes / size * 0.97)


def _document(folded: Folded, lay: Layout, options: FlameOptions) -> str:
    width = int(options.width_px)
    rows = lay.depth + 1
    height = TOP_PX + rows * ROW_PX + BOTTOM_PX
    y0, dy = (TOP_PX, ROW_PX) if options.icicle else (TOP_PX + (rows - 1) * ROW_PX, -ROW_PX)
    palette = "diff" if folded.differential and options.palette == "auto" else options.palette
    frames, kinds = _frames(folded, lay, options, palette, y0, dy)
    note = _note(lay)
    conf = {"xpad": XPAD, "gw": width - 2 * XPAD, "fontSize": FONT_PX, "fontW": FONT_WIDTH, "y0": y0, "dy": dy,
            "match": MATCH, "note": note}  # fmt: skip
    conf_js = json.dumps(conf).replace(">", "\\u003e")  # (">" only occurs in JSON strings) no "]]>" ends the CDATA
    center = f"{width / 2:g}"
    head = (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        f'<svg version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" xmlns:fg="{FG_NAMESPACE}">\n'
        f"<style>{CSS}</style>\n"
        '<defs><linearGradient id="background" x1="0" y1="0" x2="0" y2="1"><stop stop-color="#f6f6f6" offset="5%"/>'
        '<stop stop-color="#eeeed8" offset="95%"/></linearGradient></defs>\n'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="url(#background)"/>\n'
        f'<text id="title" x="{center}" y="24">{escape(options.title)}</text>\n'
        f'<text id="subtitle" x="{center}" y="42">{escape(options.subtitle or "")}</text>\n'
        f'<text id="unzoom" class="ctl hide" x="{XPAD}" y="24">Reset Zoom</text>\n'
        f'<text id="search" class="ctl" x="{width - XPAD}" y="24" text-anchor="end">Search</text>\n'
        f"{_legend(_legend_entries(palette, kinds), width)}\n"
        f'<text id="details" x="{XPAD}" y="{height - 11}">{escape(note)}</text>\n'
        f'<text id="matched" class="hide" x="{width - XPAD}" y="{height - 11}" text-anchor="end"></text>\n'
    )
    script = f"<script><![CDATA[\nvar CONF = {conf_js};{SCRIPT}]]></script>\n"
    return "".join([head, '<g id="frames">\n', "\n".join(frames), "\n</g>\n", script, "</svg>\n"])


def _frames(
    folded: Folded, lay: Layout, options: FlameOptions, palette: str, y0: int, dy: int
) -> tuple[list[str], set[str]]:
    """Each frame's markup, and the kinds of frame drawn."""
    scale = (int(options.width_px) - 2 * XPAD) / lay.total if lay.total else 0.0
    tips = _Tooltips(folded.unit, options, lay.total)
    # a differential's change per frame, after - before; a change within float rounding of the totals is no
    # change (a profile against itself, normalized, is then neutral everywhere)
    eps = 1e-9 * max(lay.total, lay.frames[0][4] if lay.frames else 0.0)
    deltas = [f[3] - f[4] if abs(f[3] - f[4]) > eps else 0.0 for f in lay.frames]
    max_delta = max((abs(d) for d in deltas[1:]), default=0.0)
    colors: dict[str, str] = {}
    kinds: set[str] = set()
    out = []
    for (frame, depth, x, w, before), delta in zip(lay.frames, deltas):
        name, kind = (frame, "root") if depth == 0 else kind_of(frame)
        kinds.add(kind)
        if palette == "diff":
            fill = diff_color(delta, max_delta) if depth else NEUTRAL
            tip = tips.differential(name, kind, w, before, delta)
        else:
            fill = ROOT_FILL if depth == 0 else colors.get(frame)
            if fill is None:
                fill = colors[frame] = kind_color(name, "hot" if palette == "hot" else kind)
            tip = tips.plain(name, kind, w)
        x_px, w_px, y = XPAD + x * scale, w * scale, y0 + depth * dy
        out.append(
            f'<g><title>{escape(tip)}</title><rect x="{_px(x_px)}" y="{y}" width="{_px(w_px)}" height="{FRAME_PX}" '
            f'fill="{fill}" fg:x="{_num(x)}" fg:w="{_num(w)}"/>{_label(name, x_px, y, w_px)}</g>'
        )
    return out, kinds


def _legend_entries(palette: str, kinds: set[str]) -> list[tuple[str, str]]:
    if palette == "diff":
        return [(diff_color(1, 1), "grew"), (diff_color(-1, 1), "shrank"), (NEUTRAL, "no change")]
    if palette == "hot":
        return []
    entries = [(_PALETTES[k](0.5, 0.5, 0.5), label) for k, label in KIND_LABELS.items() if k in kinds]
    return entries if len(entries) > 1 else []


def _note(lay: Layout) -> str:
    """The details line while no frame is hovered: what was left out, if anything."""
    if not lay.frames:
        return "no samples"
    if lay.narrow:
        return (f"{lay.narrow:,} frame{'s' if lay.narrow > 1 else ''} narrower than {lay.min_width_px:.2g} px not drawn "
                "(their counts are in their parents' widths)")  # fmt: skip
    return ""
