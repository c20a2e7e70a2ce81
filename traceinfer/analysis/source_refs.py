"""Where the engine does what: ``path:line`` references into ``traceinfer/engine``, found by parsing its
source with ``ast``, so they follow the code as it changes (nothing here is typed by hand).

    hook_sites()["schedule"]   [SourceRef(path='traceinfer/engine/llm_engine.py', line=<where it is now>,
                                          function='LLMEngine.step', symbol='hooks.schedule.span',
                                          code='with hooks.schedule.span(step=self.step_index) as info:')]
    block_op_sites()["evict"]  the ``self._record("evict", ...)`` call in BlockManager._pop_free
    function_site("Scheduler.schedule"), function_site("engine/sampler.py:sample")   its ``def`` line
    call_sites("allocate", "Scheduler.schedule"), attribute_sites("max_num_seqs", "Scheduler.schedule")

The engine is never imported (analysis sits below it in docs/architecture.md's layer table):
``importlib.util.find_spec`` locates its files and they are read as text. Paths are relative to the
directory holding the ``traceinfer`` package (the repository root in a checkout); lines are 1-based.
Every function takes ``root``, the engine's directory, to read another copy of the source.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

ENGINE_PACKAGE = "traceinfer.engine"
#: the methods of a hook point the engine calls (traceinfer/engine/hooks.py: HookPoint)
HOOK_METHODS = ("span", "emit", "emit_at")


@dataclass(frozen=True)
class SourceRef:
    """One line of the engine's source and what it holds."""

    path: str  # relative to the repository root: traceinfer/engine/block_manager.py
    line: int  # 1-based
    function: str  # the enclosing function's qualified name (BlockManager._allocate), "" at module level
    symbol: str  # what the line holds, as written: a callee (self.hooks.block.emit), "def name", an attribute
    code: str  # the line, stripped

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


# -- reading the source --------------------------------------------------------------------------
def engine_dir() -> Path:
    """The directory of the ``traceinfer.engine`` package (found, not imported)."""
    spec = importlib.util.find_spec(ENGINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"cannot find the {ENGINE_PACKAGE} package's source")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class _Node:
    node: ast.AST
    function: str  # enclosing qualified name


@dataclass(frozen=True)
class _Module:
    path: str  # relative, as SourceRef.path
    lines: tuple[str, ...]
    tree: ast.Module
    nodes: tuple[_Node, ...]  # every node with the function it sits in
    functions: dict[str, ast.FunctionDef]  # qualified name -> def


def _qualified_nodes(tree: ast.Module) -> tuple[tuple[_Node, ...], dict[str, ast.FunctionDef]]:
    nodes: list[_Node] = []
    functions: dict[str, ast.FunctionDef] = {}

    def visit(node: ast.AST, scope: list[str], function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = [*scope, child.name]
                if not isinstance(child, ast.ClassDef):
                    functions[".".join(inner)] = child
                nodes.append(_Node(child, function))
                visit(child, inner, ".".join(inner) if not isinstance(child, ast.ClassDef) else function)
            else:
                nodes.append(_Node(child, function))
                visit(child, scope, function)

    visit(tree, [], "")
    return tuple(nodes), functions


@functools.lru_cache(maxsize=64)
def _parse(path: str, rel: str, mtime_ns: int, size: int) -> _Module:
    text = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(text, filename=path)
    nodes, functions = _qualified_nodes(tree)
    return _Module(rel, tuple(text.splitlines()), tree, nodes, functions)


def _modules(root: Path | None) -> list[_Module]:
    """Every module of the engine, parsed (cached until the file changes)."""
    root = Path(root) if root is not None else engine_dir()
    base = root.parent.parent  # the directory holding the traceinfer package
    out = []
    for file in sorted(root.rglob("*.py")):
        st = file.stat()
        out.append(_parse(str(file), file.relative_to(base).as_posix(), st.st_mtime_ns, st.st_size))
    return out


def _ref(mod: _Module, node: ast.AST, function: str, symbol: str) -> SourceRef:
    return SourceRef(mod.path, node.lineno, function, symbol, mod.lines[node.lineno - 1].strip())


def _dedupe(refs) -> list[SourceRef]:
    seen, out = set(), []
    for r in refs:
        if (r.path, r.line, r.symbol) not in seen:
            seen.add((r.path, r.line, r.symbol))
            out.append(r)
    return out


def _inside(function: str, within: str | None) -> bool:
    return within is None or function == within or function.startswith(within + ".")


def _callee_name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


# -- hook points ---------------------------------------------------------------------------------
def hook_points(root: Path | None = None) -> tuple[str, ...]:
    """HOOK_POINTS as hooks.py declares it (read from the source)."""
    for mod in _modules(root):
        if not mod.path.endswith("/hooks.py"):
            continue
        for node in mod.tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "HOOK_POINTS" for t in targets):
                    return tuple(ast.literal_eval(node.value))
    raise LookupError("no HOOK_POINTS in the engine's hooks.py")


def _hook_point_of(expr: ast.AST, points: tuple[str, ...]) -> str | None:
    """``<...>hooks.<point>`` -> point (the Hooks object reached as ``hooks`` or ``<obj>.hooks``)."""
    if isinstance(expr, ast.Attribute) and expr.attr in points:
        owner = expr.value
        if (isinstance(owner, ast.Name) and owner.id == "hooks") or (
            isinstance(owner, ast.Attribute) and owner.attr == "hooks"
        ):
            return expr.attr
    return None


def hook_sites(root: Path | None = None) -> dict[str, list[SourceRef]]:
    """Every hook point (in HOOK_POINTS order) -> where the engine fires it: ``hooks.<point>.span(...)``,
    ``.emit(...)`` or ``.emit_at(...)``, and where it queues the point for the handover (``hooks.<point>``
    put in a tuple, as LLMEngine does with 'tokens' and 'finish'). Guards (``if hooks.<point>:``) are not sites."""
    points = hook_points(root)
    sites: dict[str, list[SourceRef]] = {p: [] for p in points}
    for mod in _modules(root):
        for n in mod.nodes:
            node = n.node
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in HOOK_METHODS:
                point = _hook_point_of(node.func.value, points)
                if point is not None:
                    sites[point].append(_ref(mod, node, n.function, ast.unparse(node.func)))
            elif isinstance(node, ast.Tuple):
                for element in node.elts:
                    point = _hook_point_of(element, points)
                    if point is not None:
                        sites[point].append(_ref(mod, element, n.function, ast.unparse(element)))
    return {p: sorted(_dedupe(refs), key=lambda r: (r.path, r.line)) for p, refs in sites.items()}


# -- block operations ----------------------------------------------------------------------------
def _str_constants(expr: ast.AST) -> list[str]:
    """The string constants an op argument can take: "hit", or both arms of ``"allocate" if c else "append"``."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.IfExp):
        return _str_constants(expr.body) + _str_constants(expr.orelse)
    return []


def _argument(call: ast.Call, fn: ast.FunctionDef, param: str) -> ast.AST | None:
    """The expression ``call`` passes for ``fn``'s parameter ``param`` (None: left to its default)."""
    for kw in call.keywords:
        if kw.arg == param:
            return kw.value
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    is_method = bool(names) and names[0] in ("self", "cls")
    index = names.index(param) - (1 if is_method else 0)
    return call.args[index] if 0 <= index < len(call.args) else None


def _default(fn: ast.FunctionDef, param: str) -> ast.AST | None:
    args = fn.args.posonlyargs + fn.args.args
    defaults = dict(zip([a.arg for a in args][len(args) - len(fn.args.defaults) :], fn.args.defaults))
    defaults.update({a.arg: d for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None})
    return defaults.get(param)


def _values_of_parameter(mods: list[_Module], mod: _Module, function: str, param: str,
                         depth: int = 0) -> list[tuple[str, list[SourceRef]]]:  # fmt: skip
    """The string values ``param`` of ``function`` takes, each with the call sites that pass it (outermost
    last): callers passing a constant, callers passing a parameter of their own (followed up), callers
    leaving it to the default (the default's value, with that caller and the ``def`` line that sets it).
    Callers are found by name."""
    fn = mod.functions.get(function)
    params = [a.arg for a in (fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs)] if fn is not None else []
    if fn is None or param not in params or depth > 4:
        return []
    out: list[tuple[str, list[SourceRef]]] = []
    for other in mods:
        for n in other.nodes:
            call = n.node
            if not (isinstance(call, ast.Call) and _callee_name(call) == fn.name) or n.function == function:
                continue
            site = _ref(other, call, n.function, ast.unparse(call.func))
            chain = [site]
            arg = _argument(call, fn, param)
            if arg is None:  # left to the default: the def line says which
                arg = _default(fn, param)
                chain.append(_ref(mod, fn, function, f"def {fn.name}"))
            values = _str_constants(arg) if arg is not None else []
            if values:
                out += [(v, chain) for v in values]
            elif isinstance(arg, ast.Name) and n.function:
                for v, chain in _values_of_parameter(mods, other, n.function, arg.id, depth + 1):
                    out.append((v, [site, *chain]))
    return out


def block_op_sites(root: Path | None = None) -> dict[str, list[SourceRef]]:
    """Each block operation the block manager records (``self._record(op, ...)``, the ops of the kv_events
    stream) -> the ``_record`` call that records it, then, when the op is passed in, the calls that pass it
    (``self.bm.free(seq, op="preempt")`` in the scheduler) or leave it to the default (``free``'s "free")."""
    mods = _modules(root)
    sites: dict[str, list[SourceRef]] = {}
    for mod in mods:
        if not mod.path.endswith("/block_manager.py"):
            continue
        for n in mod.nodes:
            call = n.node
            if not (isinstance(call, ast.Call) and _callee_name(call) == "_record" and call.args):
                continue
            record = _ref(mod, call, n.function, ast.unparse(call.func))
            op = call.args[0]
            for value in _str_constants(op):
                sites.setdefault(value, []).append(record)
            if isinstance(op, ast.Name):
                for value, chain in _values_of_parameter(mods, mod, n.function, op.id):
                    sites.setdefault(value, []).extend([record, *chain])
    return {op: _dedupe(refs) for op, refs in sites.items()}


# -- functions, calls, attributes ----------------------------------------------------------------
def function_site(qualname: str, root: Path | None = None) -> SourceRef:
    """The ``def`` line of ``qualname``: "Class.method", "function", or "dir/file.py:function" (the form of
    traceinfer.analysis.phases.STAGE_FRAMES). LookupError naming it when the engine has no such function."""
    path_suffix, _, name = qualname.rpartition(":")
    for mod in _modules(root):
        if path_suffix and not mod.path.endswith(path_suffix):
            continue
        fn = mod.functions.get(name)
        if fn is not None:
            return _ref(mod, fn, name, f"def {fn.name}")
    raise LookupError(f"the engine's source has no function {qualname!r}")


def call_sites(name: str, within: str | None = None, root: Path | None = None) -> list[SourceRef]:
    """Calls of anything named ``name`` (``x.name(...)`` or ``name(...)``), optionally only inside the
    function ``within`` (a qualified name, nested functions included)."""
    refs = []
    for mod in _modules(root):
        for n in mod.nodes:
            if isinstance(n.node, ast.Call) and _callee_name(n.node) == name and _inside(n.function, within):
                refs.append(_ref(mod, n.node, n.function, ast.unparse(n.node.func)))
    return _dedupe(refs)


def attribute_sites(attr: str, within: str | None = None, root: Path | None = None) -> list[SourceRef]:
    """Reads of an attribute named ``attr`` (``self.config.max_num_seqs``), optionally inside ``within``."""
    refs = []
    for mod in _modules(root):
        for n in mod.nodes:
            node = n.node
            if (isinstance(node, ast.Attribute) and node.attr == attr and isinstance(node.ctx, ast.Load)
                    and _inside(n.function, within)):  # fmt: skip
                refs.append(_ref(mod, node, n.function, ast.unparse(node)))
    return _dedupe(refs)


def stage_sites(root: Path | None = None) -> dict[str, list[SourceRef]]:
    """Each engine stage -> the functions that run it (traceinfer.analysis.phases.STAGE_FRAMES)."""
    from traceinfer.analysis.phases import STAGE_FRAMES

    out: dict[str, list[SourceRef]] = {}
    for frame, stage in STAGE_FRAMES:
        out.setdefault(stage, []).append(function_site(frame, root))
    return out
