"""The CSS and JavaScript inside every flame-graph SVG (traceinfer.render.flame_svg), kept apart so both files
read as what they are. The script needs ``CONF`` (written before it by flame_svg) and finds the frames as
the children of ``<g id="frames">``, in pre-order (a frame, then its children left to right), each
``<g><title>name\\ntooltip</title><rect y=.. fg:x=.. fg:w=../><text/></g>``: ``fg:x`` and ``fg:w`` are the
frame's offset and width in counts, so zoom and search work on exact counts, not on rounded pixels.
"""

CSS = """\
text{font-family:Verdana,sans-serif;font-size:12px;fill:#000}
#title{font-size:17px;text-anchor:middle}
#subtitle{text-anchor:middle;fill:#444}
#legend text{font-size:11px;fill:#333}
.ctl{cursor:pointer;fill:#1f4e9c}
.ctl:hover{text-decoration:underline}
.hide{display:none}
#frames g{cursor:pointer}
#frames text{pointer-events:none}
#frames rect{rx:2px;ry:2px}
#frames g:hover rect{stroke:#000;stroke-width:.5}
#frames g.parent{opacity:.5}
#details,#matched{fill:#333}
"""

# CONF: xpad, gw (graph width px), fontSize, fontW, y0 (y of depth 0), dy (y step per depth), match
# (the highlight fill), note (the details line when no frame is hovered)
SCRIPT = r"""
(function () {
  "use strict";
  var frames = document.getElementById("frames");
  var details = document.getElementById("details");
  var matchedEl = document.getElementById("matched");
  var unzoomEl = document.getElementById("unzoom");
  var searchEl = document.getElementById("search");
  var F = [], index = new Map(), zoomed = -1, term = null;

  // F[i]: the i-th frame in pre-order; its subtree is F[i .. end), its parent F[parent]
  (function init() {
    var gs = frames.children, open = [];
    for (var i = 0; i < gs.length; i++) {
      var g = gs[i], rect = g.children[1], tip = g.children[0].textContent;
      var f = {
        g: g, rect: rect, text: g.children[2], name: tip.split("\n")[0], tip: tip.replace(/\n/g, " \u2014 "),
        x: +rect.getAttribute("fg:x"), w: +rect.getAttribute("fg:w"), fill: rect.getAttribute("fill"),
        depth: Math.round((+rect.getAttribute("y") - CONF.y0) / CONF.dy), end: gs.length, parent: -1
      };
      while (open.length && F[open[open.length - 1]].depth >= f.depth) F[open.pop()].end = i;
      f.parent = open.length ? open[open.length - 1] : -1;
      open.push(i);
      F.push(f);
      index.set(g, i);
    }
  })();

  function frameOf(node) {
    while (node && node.parentNode !== frames) node = node.parentNode;
    return node ? index.get(node) : undefined;
  }

  // the name cut to the frame's width, as flamegraph.pl: nothing under 3 characters, else "name.."
  function fit(name, w) {
    var n = Math.floor(w / (CONF.fontSize * CONF.fontW));
    if (n < 3) return "";
    return name.length <= n ? name : name.slice(0, n - 2) + "..";
  }

  function place(f, x, w) {
    f.rect.setAttribute("x", x.toFixed(2));
    f.rect.setAttribute("width", w.toFixed(2));
    f.text.setAttribute("x", (x + 3).toFixed(2));
    f.text.textContent = fit(f.name, w);
  }

  function show(f, faded) {
    f.g.classList.remove("hide");
    if (faded) f.g.classList.add("parent"); else f.g.classList.remove("parent");
  }

  // zoom into F[i]: it fills the width, its subtree scales with it, its ancestors span the width (faded),
  // every other frame is hidden; the root zooms out
  function zoom(i) {
    var z = F[i];
    if (z.parent < 0) { unzoom(); return; }
    var scale = CONF.gw / z.w, ancestors = new Set();
    for (var p = z.parent; p >= 0; p = F[p].parent) ancestors.add(p);
    for (var j = 0; j < F.length; j++) {
      var f = F[j];
      if (j >= i && j < z.end) { place(f, CONF.xpad + (f.x - z.x) * scale, f.w * scale); show(f, false); }
      else if (ancestors.has(j)) { place(f, CONF.xpad, CONF.gw); show(f, true); }
      else f.g.classList.add("hide");
    }
    zoomed = i;
    unzoomEl.classList.remove("hide");
  }

  function unzoom() {
    if (!F.length) return;
    var scale = CONF.gw / F[0].w;
    for (var j = 0; j < F.length; j++) { place(F[j], CONF.xpad + F[j].x * scale, F[j].w * scale); show(F[j], false); }
    zoomed = -1;
    unzoomEl.classList.add("hide");
  }

  function compile(t) {
    try { return new RegExp(t); }
    catch (e) { return new RegExp(t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")); }  // not a regex: the text
  }

  // highlight the frames whose name matches; "Matched" is the share of the root's count under a matching
  // frame, each stack counted once (a match inside a counted match is not added again), as flamegraph.pl
  function search(t) {
    if (!t) { resetSearch(); return; }
    var re = compile(t), sum = 0, covered = 0;
    for (var i = 1; i < F.length; i++) {  // F[0] is the root, "all": no frame of the profile
      var f = F[i], hit = re.test(f.name);
      f.rect.setAttribute("fill", hit ? CONF.match : f.fill);
      if (hit && i >= covered) { sum += f.w; covered = f.end; }
    }
    term = t;
    matchedEl.textContent = "Matched: " + (F.length ? 100 * sum / F[0].w : 0).toFixed(1) + "%";
    matchedEl.classList.remove("hide");
    searchEl.textContent = "Reset Search";
  }

  function resetSearch() {
    for (var i = 0; i < F.length; i++) F[i].rect.setAttribute("fill", F[i].fill);
    term = null;
    matchedEl.classList.add("hide");
    searchEl.textContent = "Search";
  }

  function ask() {
    var t = window.prompt("Search frames: a regular expression (or plain text)", term || "");
    if (t !== null) search(t);
  }

  frames.addEventListener("click", function (e) { var i = frameOf(e.target); if (i !== undefined) zoom(i); });
  frames.addEventListener("mouseover", function (e) {
    var i = frameOf(e.target);
    if (i !== undefined) details.textContent = F[i].tip;
  });
  frames.addEventListener("mouseout", function () { details.textContent = CONF.note; });
  unzoomEl.addEventListener("click", unzoom);
  searchEl.addEventListener("click", function () { if (term !== null) resetSearch(); else ask(); });
  window.addEventListener("keydown", function (e) {
    if ((e.ctrlKey || e.metaKey) && (e.key === "f" || e.key === "F")) { e.preventDefault(); ask(); }
    else if (e.key === "Escape") { if (term !== null) resetSearch(); else if (zoomed >= 0) unzoom(); }
  });
  window.flame = { zoom: zoom, unzoom: unzoom, search: search, resetSearch: resetSearch };
})();
"""
