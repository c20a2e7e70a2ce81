"""Flame-graph renderers (traceinfer.render.flame): folded text, the SVG read back as XML, speedscope JSON, and
the SVG's zoom and search in a real headless Chromium (skipped where chromium or chromedriver is missing)."""

from __future__ import annotations

import json
import random
import re
import time
import xml.etree.ElementTree as ET

import pytest

from traceinfer.errors import ConfigError
from traceinfer.flamegraphs.folded import Folded, kind_of, parse
from traceinfer.flamegraphs.transforms import differential
from traceinfer.render.flame import FORMATS, SPEEDSCOPE_SCHEMA, FlameOptions
from traceinfer.render.flame_svg import MATCH, NEUTRAL, XPAD

SVG = "{http://www.w3.org/2000/svg}"
FG = "{urn:traceinfer:flame}"
GRAPH_PX = 1200 - 2 * XPAD  # the default width less the side pads

ENGINE = """\
step;schedule;Scheduler.schedule;BlockManager.allocate 30
step;schedule;Scheduler.schedule 10
step;prepare;ModelRunner.prepare 25
step;forward;cudaGraphLaunch_[n];flash_fwd_kernel_[k] 200
step;forward;cudaGraphLaunch_[n];gemm_kernel_[k] 150
step;forward;nvtx:decode_[r];rmsnorm_[k] 40
step;sample;aten::softmax_[n] 20
step;sample 5
idle;epoll_wait_[i] 60
"""


def engine_profile() -> Folded:
    parsed = parse(ENGINE)
    assert parsed.ignored == 0
    return parsed.folded


def svg_frames(text: str) -> list[dict]:
    """The frames of a rendered SVG, in document order: name, tooltip, x, width, y, fill, counts, label."""
    root = ET.fromstring(text.encode())
    frames = []
    for g in root.find(f"{SVG}g[@id='frames']"):
        title, rect, label = g.find(f"{SVG}title"), g.find(f"{SVG}rect"), g.find(f"{SVG}text")
        frames.append({
            "name": title.text.split("\n")[0], "tip": title.text, "label": label.text or "",
            "x": float(rect.get("x")), "width": float(rect.get("width")), "y": float(rect.get("y")),
            "fill": rect.get("fill"), "fg_x": float(rect.get(f"{FG}x")), "fg_w": float(rect.get(f"{FG}w")),
        })  # fmt: skip
    return frames


def by_name(frames: list[dict]) -> dict[str, dict]:
    return {f["name"]: f for f in frames}


def render_svg(folded: Folded, **options) -> str:
    return FORMATS["svg"]().render(folded, FlameOptions(**options))


# -- the registry: every format renders and reads back


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_renders_and_reads_back(fmt):
    folded = engine_profile()
    renderer = FORMATS[fmt]()
    assert renderer.name == fmt and renderer.extension in ("svg", "speedscope.json", "folded")
    text = renderer.render(folded, FlameOptions(title="engine"))
    if fmt == "svg":
        root = by_name(svg_frames(text))["all"]
        assert root["fg_w"] == folded.total == 540 and root["width"] == GRAPH_PX
    elif fmt == "speedscope":
        assert sum(json.loads(text)["profiles"][0]["weights"]) == folded.total
    else:
        assert parse(text).folded.counts == folded.counts
    assert "{path}" in renderer.opens_with


def test_options_are_checked_and_name_the_field():
    with pytest.raises(ConfigError, match="palette"):
        FlameOptions(palette="rainbow")
    with pytest.raises(ConfigError, match="rate_hz"):
        FlameOptions(rate_hz=0)
    assert (
        FlameOptions().counts_called("ns") == "ns" and FlameOptions(count_name="ticks").counts_called("ns") == "ticks"
    )


# -- folded text


def test_folded_text_round_trips_merges_duplicates_and_reports_what_it_ignored():
    text = "b;c 2\na;b 1\nthis line has no count\na;b 3\n\na;x;y 1.5\n;; 4\n"
    parsed = parse(text)
    assert parsed.ignored == 2 and parsed.message == "ignored 2 lines that are not 'stack count'"
    golden = "a;b 4\na;x;y 1.5\nb;c 2\n"
    assert FORMATS["folded"]().render(parsed.folded, FlameOptions()) == golden
    assert FORMATS["folded"]().render(parse(golden).folded, FlameOptions()) == golden
    # the partial file still draws its graph
    frames = by_name(svg_frames(render_svg(parsed.folded)))
    assert {"all", "a", "b", "c", "x", "y"} <= set(frames) and frames["all"]["fg_w"] == 7.5


def test_a_differential_line_keeps_both_counts():
    parsed = parse("a;b 3 5\na;c 2\n")
    assert parsed.folded.differential
    assert FORMATS["folded"]().render(parsed.folded, FlameOptions()) == "a;b 3 5\na;c 2 0\n"


# -- the SVG, read back as XML


def test_svg_widths_are_proportional_to_counts_in_alphabetical_order():
    folded = parse("d 250\na;c 250\na;b 500\n").folded  # total 1000
    frames = svg_frames(render_svg(folded))
    assert [f["name"] for f in frames] == ["all", "a", "b", "c", "d"]  # pre-order, siblings alphabetical
    f = by_name(frames)
    for name, x_count, count in (("all", 0, 1000), ("a", 0, 750), ("b", 0, 500), ("c", 500, 250), ("d", 750, 250)):
        assert f[name]["fg_w"] == count and f[name]["fg_x"] == x_count
        assert f[name]["width"] == pytest.approx(GRAPH_PX * count / 1000, abs=0.05)  # rounded to 0.1 px
        assert f[name]["x"] == pytest.approx(XPAD + GRAPH_PX * x_count / 1000, abs=0.05)
    assert (f["b"]["width"], f["c"]["x"], f["d"]["x"]) == (590.0, 600.0, 895.0)
    # a flame: the root at the bottom, children above; an icicle: the other way up
    assert f["all"]["y"] > f["a"]["y"] > f["b"]["y"]
    icicle = by_name(svg_frames(render_svg(folded, icicle=True)))
    assert icicle["all"]["y"] < icicle["a"]["y"] < icicle["b"]["y"]
    assert f["b"]["label"] == "b" and f["b"]["tip"] == "b\n500 samples, 50.00% of all"


def test_tooltips_give_the_unit_the_share_the_time_and_the_kind():
    ns = by_name(svg_frames(render_svg(parse("step;fmha_[k] 2500000\nstep 7500000\n", unit="ns").folded)))
    assert ns["fmha"]["tip"] == "fmha\nGPU kernel: 2,500,000 ns (2.500 ms), 25.00% of all"
    samples = by_name(svg_frames(render_svg(engine_profile(), rate_hz=100)))
    assert samples["forward"]["tip"] == "forward\n390 samples (3.900 s), 72.22% of all"
    assert samples["epoll_wait"]["tip"].startswith("epoll_wait\nidle: 60 samples")
    by_bytes = by_name(svg_frames(render_svg(parse("alloc;cat 3072\n", unit="bytes").folded)))
    assert by_bytes["cat"]["tip"] == "cat\n3,072 bytes, 100.00% of all"


def test_colors_tell_the_frame_kinds_apart_and_stay_stable_per_name():
    f = by_name(svg_frames(render_svg(engine_profile())))

    def rgb(name):
        h = f[name]["fill"].lstrip("#")
        return tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))

    r, g, b = rgb("Scheduler.schedule")
    assert r > g > b  # python: red to orange
    r, g, b = rgb("flash_fwd_kernel")
    assert g > r and g > b  # GPU kernel: green
    r, g, b = rgb("nvtx:decode")
    assert b > r and b > g - 10  # range: blue
    r, g, b = rgb("epoll_wait")
    assert r == g == b  # idle: grey
    r, g, b = rgb("cudaGraphLaunch")
    assert min(r, g) > b + 80  # native: yellow
    again = by_name(svg_frames(render_svg(parse("other;Scheduler.schedule 3\n").folded)))
    assert again["Scheduler.schedule"]["fill"] == f["Scheduler.schedule"]["fill"]
    assert len({f[n]["fill"] for n in ("schedule", "prepare", "sample", "forward")}) > 1  # hue varies by name


def test_names_are_escaped_and_the_svg_stays_well_formed():
    nasty = 'Cache<int, float>::get&"quoted"'
    text = render_svg(parse(f"main;{nasty} 10\nmain;ctl\x01char 1\n").folded, title='a <b> & "c"', width_px=2400)
    drawing = text.split("<script>")[0]
    assert "Cache<int" not in drawing and '&"' not in drawing and "\x01" not in text
    frames = by_name(svg_frames(text))  # parses: well-formed
    assert frames[nasty]["label"] == nasty and frames[nasty]["tip"].startswith(nasty + "\n")
    assert "ctl\ufffdchar" in frames
    assert ET.fromstring(text.encode()).find(f"{SVG}text[@id='title']").text == 'a <b> & "c"'


def test_a_differential_is_drawn_by_the_second_profile_and_colored_by_the_change():
    same = svg_frames(render_svg(differential(engine_profile(), engine_profile())))
    assert len(same) > 10 and {f["fill"] for f in same} == {NEUTRAL}
    assert all("no change" in f["tip"] for f in same)
    before = parse("s;grow 100\ns;shrink 300\ns;same 100\n").folded
    after = parse("s;grow 300\ns;shrink 100\ns;same 100\n").folded
    f = by_name(svg_frames(render_svg(differential(before, after))))
    assert f["grow"]["fg_w"] == 300 and f["shrink"]["fg_w"] == 100  # widths: the after profile
    grow, shrink = (f[n]["fill"].lstrip("#") for n in ("grow", "shrink"))
    assert grow[:2] == "ff" and grow[2:4] == grow[4:] < "ff"  # red
    assert shrink[4:] == "ff" and shrink[:2] == shrink[2:4] < "ff"  # blue
    assert f["same"]["fill"] == NEUTRAL
    assert f["grow"]["tip"] == "grow\n300 samples, 60.00% of all; before 100: +200 (+200.0%)"
    # palette "kind" colors a differential by frame kind instead
    kinds = by_name(svg_frames(render_svg(differential(before, after), palette="kind")))
    assert kinds["grow"]["fill"] not in (NEUTRAL, f["grow"]["fill"])


def narrow_profile() -> Folded:
    """One wide frame and 2,000 leaves each far narrower than 0.1 px, under a frame that is wide."""
    folded = Folded()
    folded.add(["main", "wide"], 1_000_000)
    for i in range(2000):
        folded.add(["main", "many", f"leaf{i}"], 1)
    return folded


def test_frames_narrower_than_the_min_width_merge_into_their_parents():
    folded = narrow_profile()
    f = by_name(svg_frames(render_svg(folded)))
    assert not any(name.startswith("leaf") for name in f)
    assert f["all"]["fg_w"] == folded.total and f["all"]["width"] == GRAPH_PX  # the total stays
    assert f["many"]["fg_w"] == 2000 and f["main"]["fg_w"] == 1_002_000  # the leaves' counts stay in "many"
    every = by_name(svg_frames(render_svg(folded, min_width_px=0)))
    assert sum(1 for name in every if name.startswith("leaf")) == 2000


def one_minute_profile(stacks: int = 100_000, depth: int = 50, seed: int = 0) -> Folded:
    """Seeded stacks 50 frames deep sharing prefixes (as real ones do), heavy-tailed counts."""
    rng = random.Random(seed)
    names = [f"site-packages/pkg/module_{i % 89}.py:Class{i % 17}.method_{i}" for i in range(2000)]
    counts: dict[tuple[str, ...], float] = {}
    previous = tuple(rng.choices(names, k=depth))
    while len(counts) < stacks:
        keep = depth - 1 - min(int(rng.expovariate(0.12)), depth - 1)  # the frames shared with a recent stack
        stack = previous[:keep] + tuple(rng.choices(names, k=depth - keep))
        counts[stack] = counts.get(stack, 0.0) + int(rng.paretovariate(1.1))
        if rng.random() < 0.3:
            previous = stack
    return Folded(counts=counts)


def test_a_one_minute_profile_renders_under_5_mb():
    folded = one_minute_profile()
    start = time.perf_counter()
    text = render_svg(folded)
    seconds = time.perf_counter() - start
    size = len(text.encode())
    frames = svg_frames(text)
    print(f"100,000 stacks x 50 frames: {size:,} bytes, {len(frames):,} frames, rendered in {seconds:.2f} s")
    assert size < 5_000_000 and seconds < 10
    assert frames[0]["fg_w"] == folded.total and frames[0]["width"] == GRAPH_PX
    assert 1000 < len(frames) and max(f["y"] for f in frames) - min(f["y"] for f in frames) == 50 * 16


# -- speedscope


def test_speedscope_has_the_schema_fields_and_weights_summing_to_the_total():
    folded = engine_profile()
    doc = json.loads(FORMATS["speedscope"]().render(folded, FlameOptions(title="engine")))
    assert doc["$schema"] == SPEEDSCOPE_SCHEMA and {"shared", "profiles"} <= set(doc)
    frames = doc["shared"]["frames"]
    assert all(isinstance(fr["name"], str) for fr in frames) and len({fr["name"] for fr in frames}) == len(frames)
    (profile,) = doc["profiles"]
    assert {"type", "name", "unit", "startValue", "endValue", "samples", "weights"} <= set(profile)
    assert profile["type"] == "sampled" and profile["unit"] == "none" and profile["name"] == "engine"
    assert len(profile["samples"]) == len(profile["weights"]) == len(folded)
    assert sum(profile["weights"]) == profile["endValue"] - profile["startValue"] == folded.total
    names = [[frames[i]["name"] for i in sample] for sample in profile["samples"]]
    assert ["step", "forward", "cudaGraphLaunch [native]", "gemm_kernel [kernel]"] in names
    ns = json.loads(FORMATS["speedscope"]().render(parse("a;b 5\n", unit="ns").folded))
    assert ns["profiles"][0]["unit"] == "nanoseconds"
    diff = differential(parse("a;b 1\na;c 3\n").folded, parse("a;b 2\n").folded)  # a;c is gone after
    after = json.loads(FORMATS["speedscope"]().render(diff))["profiles"][0]
    assert after["weights"] == [2] and len(after["samples"]) == 1


# -- the SVG in a real browser


def open_svg(browser, tmp_path, folded: Folded, **options):
    path = tmp_path / "flame.svg"
    path.write_text(render_svg(folded, **options))
    browser.get(path.as_uri())
    return path


def rects(browser) -> dict:
    """name -> the frame's <rect>, as the page sees it."""
    pairs = browser.execute_script(
        "return Array.from(document.getElementById('frames').children)"
        ".map(g => [g.children[0].textContent.split('\\n')[0], g.children[1]]);"
    )
    return dict(pairs)


def width(rect) -> float:
    return float(rect.get_attribute("width"))


def test_the_svg_loads_and_renders_in_chromium(browser, tmp_path):
    open_svg(browser, tmp_path, engine_profile(), title="engine")
    frames = rects(browser)
    assert len(frames) == 17
    for name, rect in frames.items():
        assert rect.is_displayed(), name
        assert rect.size["width"] > 0 and rect.size["height"] == 15, name
    assert frames["all"].size["width"] == pytest.approx(GRAPH_PX, abs=1)
    assert frames["forward"].size["width"] == pytest.approx(GRAPH_PX * 390 / 540, abs=1)
    shot = tmp_path / "flame.png"
    assert browser.save_screenshot(str(shot))
    assert shot.exists() and shot.stat().st_size > 1000


def test_clicking_a_frame_zooms_and_reset_restores(browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_svg(browser, tmp_path, engine_profile())
    frames = rects(browser)
    before = {name: (float(rect.get_attribute("x")), width(rect)) for name, rect in frames.items()}
    reset = browser.find_element(By.ID, "unzoom")
    assert not reset.is_displayed()

    frames["forward"].click()
    assert width(frames["forward"]) == pytest.approx(GRAPH_PX, abs=0.01)
    assert frames["forward"].size["width"] == pytest.approx(GRAPH_PX, abs=1)
    assert width(frames["cudaGraphLaunch"]) == pytest.approx(GRAPH_PX * 350 / 390, abs=0.01)  # scaled with it
    assert width(frames["step"]) == pytest.approx(GRAPH_PX, abs=0.01) and frames["step"].is_displayed()  # ancestor
    for sibling in ("schedule", "sample", "epoll_wait"):
        assert not frames[sibling].is_displayed(), sibling
    assert reset.is_displayed()
    browser.save_screenshot(str(tmp_path / "zoomed.png"))

    reset.click()
    for name, rect in frames.items():  # back where they were (to the 0.1 px the file rounds to)
        assert (float(rect.get_attribute("x")), width(rect)) == pytest.approx(before[name], abs=0.06), name
    assert frames["schedule"].is_displayed() and not reset.is_displayed()

    frames["Scheduler.schedule"].click()  # zoom again; clicking the root zooms out
    assert not frames["forward"].is_displayed()
    frames["all"].click()
    assert frames["forward"].is_displayed() and width(frames["forward"]) == pytest.approx(
        before["forward"][1], abs=0.06
    )


def matched_share(folded: Folded, pattern: str) -> float:
    """The percent of all under a frame whose name (without its kind) matches: each stack counted once."""
    rx = re.compile(pattern)
    hit = sum(c for stack, c in folded.counts.items() if any(rx.search(kind_of(f)[0]) for f in stack))
    return 100 * hit / folded.total


def test_search_highlights_matches_and_shows_the_matched_share(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    folded = engine_profile()
    open_svg(browser, tmp_path, folded)
    frames = rects(browser)
    fills = {name: rect.get_attribute("fill") for name, rect in frames.items()}
    matched = browser.find_element(By.ID, "matched")
    assert not matched.is_displayed()

    # Ctrl-F asks for a term; "sched" matches "schedule" and, nested in it, "Scheduler.schedule": counted once
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("f").key_up(Keys.CONTROL).perform()
    prompt = browser.switch_to.alert
    prompt.send_keys("sched")
    prompt.accept()
    assert matched_share(folded, "sched") == pytest.approx(100 * 40 / 540)
    shown = float(re.fullmatch(r"Matched: ([\d.]+)%", matched.text).group(1))
    assert shown == pytest.approx(matched_share(folded, "sched"), abs=0.051)
    for name in ("schedule", "Scheduler.schedule"):
        assert frames[name].get_attribute("fill") == MATCH
    assert frames["forward"].get_attribute("fill") == fills["forward"]
    browser.save_screenshot(str(tmp_path / "search.png"))

    # the control: "Reset Search" clears; "Search" asks again, here a regular expression
    search = browser.find_element(By.ID, "search")
    assert search.text == "Reset Search"
    search.click()
    assert not matched.is_displayed() and frames["schedule"].get_attribute("fill") == fills["schedule"]
    search.click()
    prompt = browser.switch_to.alert
    prompt.send_keys("^(gemm|flash)_.*kernel$|softmax")
    prompt.accept()
    expected = matched_share(folded, "^(gemm|flash)_.*kernel$|softmax")
    assert expected == pytest.approx(100 * 370 / 540)
    assert float(re.fullmatch(r"Matched: ([\d.]+)%", matched.text).group(1)) == pytest.approx(expected, abs=0.051)
    assert [n for n, r in frames.items() if r.get_attribute("fill") == MATCH] == [
        "flash_fwd_kernel", "gemm_kernel", "aten::softmax"]  # fmt: skip
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()  # Escape clears the search
    assert not matched.is_displayed() and frames["gemm_kernel"].get_attribute("fill") == fills["gemm_kernel"]
