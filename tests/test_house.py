"""The house keeps its shape: every module's imports against the layer table in docs/architecture.md, no
import cycles, nothing outside traceinfer.cli imports it, reading a run never imports torch, and the
after-test check catches what a test leaves running."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "traceinfer"


def layer_table() -> dict[str, dict]:
    """docs/architecture.md's layer table: layer -> {modules, may import (layers), third party}."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.match(r"L\d", cells[0]):
            continue
        name = cells[0].split()[0]
        layers[name] = {
            "modules": re.findall(r"`([\w.]+)`", cells[1]),
            "imports": set(re.findall(r"L\d'?", cells[2])),  # "L2'" (ingest) is a layer of its own
            "third_party": {t.strip().split()[0] for t in cells[3].split(",")},
        }
    assert set(layers) == {"L0", "L1", "L2", "L2'", "L3", "L4", "L5"}, layers
    return layers


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Modules imported by the file, anywhere in it (functions too), except under TYPE_CHECKING; a
    ``from pkg import name`` counts as ``pkg.name`` when that is a module of ours."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def layer_of(module: str, layers: dict) -> str:
    best = max(((m, name) for name, spec in layers.items() for m in spec["modules"]
                if module == m or module.startswith(m + ".")), key=lambda x: len(x[0]), default=None)  # fmt: skip
    assert best is not None, f"{module} is in no layer of docs/architecture.md"
    return best[1]


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) for name, path in mods.items()}


def test_every_import_is_allowed_by_the_layer_table():
    layers = layer_table()
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    problems = []
    for module, imported in graph().items():
        layer = layer_of(module, layers)
        spec = layers[layer]
        for target in sorted(imported):
            top = target.split(".")[0]
            if top == "traceinfer":
                target_layer = layer_of(target, layers)
                if target_layer not in spec["imports"]:
                    problems.append(f"{module} ({layer}) imports {target} ({target_layer})")
            elif top not in stdlib and "anything" not in spec["third_party"] and top not in spec["third_party"]:
                problems.append(f"{module} ({layer}) imports {top}, which {layer} may not")
    assert problems == []


def test_the_engine_imports_no_probe_and_analysis_and_render_neither_engine_nor_probes():
    for module, imported in graph().items():
        ours = {t for t in imported if t.startswith("traceinfer.")}
        if module.startswith("traceinfer.engine"):
            assert not {t for t in ours if t.startswith("traceinfer.probes")}, module
        if module.startswith(("traceinfer.analysis", "traceinfer.render", "traceinfer.rundir")):
            assert not {t for t in ours if t.startswith(("traceinfer.engine", "traceinfer.probes"))}, module


def test_no_import_cycles():
    g = graph()
    edges = {m: {t for t in targets if t in g} for m, targets in g.items()}
    seen: dict[str, int] = {}  # 1 on the path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(edges[node]):
            if seen.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in seen:
                visit(nxt, path + [nxt])
        seen[node] = 2

    for node in sorted(edges):
        if node not in seen:
            visit(node, [node])
    assert cycles == []


def test_nothing_outside_the_command_layer_imports_it():
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "scripts").glob("*.py")]:
        module = module_name(path) if path.is_relative_to(PACKAGE) else str(path)
        if module.startswith("traceinfer.cli"):
            continue
        assert not [t for t in imports_of(path, set(modules())) if t.startswith("traceinfer.cli")], module


def test_reading_a_run_never_imports_torch(tmp_path):
    from traceinfer.rundir.writer import RunWriter

    writer = RunWriter(tmp_path / "run", {"note": "test"})
    writer.stream("steps").rows.append((0, 1, 2) + (None,) * (len(writer.stream("steps").schema.names) - 3))
    writer.close("completed")
    code = textwrap.dedent(f"""
        import sys, traceinfer
        run = traceinfer.open_run({str(tmp_path / 'run')!r})
        assert len(run.frame('steps')) == 1
        assert 'torch' not in sys.modules, 'torch was imported'
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_after_test_check_fails_a_test_that_leaves_something_behind(pytester):
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(textwrap.dedent("""
        import gc, threading
        from traceinfer.engine.hooks import Hooks
        from traceinfer.probes import gc_probe
        from traceinfer.rundir import encoder
        from traceinfer.rundir.helper_process import HelperProcess

        KEPT = []

        def test_nothing():  # first: the thread below outlives its test
            pass

        def test_a_hook():
            KEPT.append(Hooks())
            KEPT[0].subscribe(lambda *a: None, ("tokens",))

        def test_a_gc_callback():
            gc.callbacks.append(gc_probe.GCProbe._callback)

        def test_a_thread():
            threading.Thread(target=threading.Event().wait, name="traceinfer-x", daemon=True).start()

        def test_a_helper_process(tmp_path):
            HelperProcess("encoder process", encoder.__file__, [str(tmp_path)])
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, errors=4)
    for message in ("hooks still subscribed: {'tokens': 1}", "gc callbacks left", "threads alive: *traceinfer-x*",
                    "helper processes alive"):  # fmt: skip
        result.stdout.fnmatch_lines([f"*the test left traceinfer running: *{message}*"])
