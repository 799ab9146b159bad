"""The shape of lbcore, derived from its source: no import cycle, library below application, no built-in
modality named in core code, and the size limits of the house style."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "lbcore"
BUILTIN_MODALITIES = ("audio", "video", "depth", "infrared", "thermal", "image")
# Building blocks and the middle layer: they must not import a runner or the CLI.
RUNNERS = (
    "runconfig", "engine", "trainer", "traindata", "runstate", "evaluate", "embedding", "showcase", "app", "appview",
    "captiontrain", "captioneval", "groupengine", "push", "textcache",
)  # fmt: skip
APPLICATION = ("cli",)
# Values of the Modality contract's `widget` (which upload component the web app shows): media kinds any plugin
# may pick, not modality names; only the app's two modules spell them.
WIDGET_KINDS = {"lbcore/app.py": {"audio", "video", "image"}, "lbcore/appview.py": {"audio", "video", "image"}}
# Function-level imports of lbcore modules kept on purpose, each with its reason.
DEFERRED = {("lbcore.plugins", "lbcore.modality"): "the registry loads for `lbind --help` without importing torch"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "plugin_template" not in p.parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.Module) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement that runs, with whether it sits inside a function."""

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.stmt, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                yield from (x for c in child.orelse for x in visit_one(c, in_function))
                continue
            yield from visit_one(child, in_function)

    def visit_one(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.stmt, bool]]:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        else:
            yield from visit(node, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))

    yield from visit(tree, False)


def imported_modules(node: ast.stmt, here: str, known: set[str]) -> set[str]:
    """The lbcore modules an import statement loads, parent packages included."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and not node.level:  # lbcore uses absolute imports only
        base = node.module or ""
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(2, len(parts) + 1):
            candidate = ".".join(parts[:i])
            # A package's own modules import siblings through it: that is not an edge back to the package.
            if candidate in known and not here.startswith(candidate + "."):
                out.add(candidate)
    return out


def import_graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[int, str, bool]]]]:
    known = {module_name(p) for p in core_files()}
    graph: dict[str, set[str]] = {}
    lines: dict[str, list[tuple[int, str, bool]]] = {}
    for path in core_files():
        here = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[here] = set()
        lines[here] = []
        for node, in_function in runtime_imports(tree):
            targets = imported_modules(node, here, known) - {here}
            graph[here] |= targets
            for t in targets:
                lines[here].append((node.lineno, t, in_function))
    return graph, lines


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_lbcore_has_no_import_cycle() -> None:
    graph, _ = import_graph()
    assert graph.get("lbcore.model"), "the graph reader found no imports: it is broken"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def _layer(module: str) -> int:
    leaf = module.split(".")[1] if "." in module else ""
    if leaf in APPLICATION:
        return 2
    return 1 if leaf in RUNNERS else 0


def test_library_below_application() -> None:
    graph, _ = import_graph()
    upward = sorted(
        f"{m} imports {t}" for m, targets in graph.items() for t in targets if _layer(t) > _layer(m) and m != "lbcore"
    )
    assert upward == []


def test_no_function_level_import_of_lbcore_and_every_other_one_says_why() -> None:
    _, lines = import_graph()
    inside = sorted(
        f"{m}:{line} imports {t}"
        for m, found in lines.items()
        for line, t, f in found
        if f and m != "lbcore" and (m, t) not in DEFERRED
    )
    assert inside == [], "function-level imports of lbcore modules hide the import graph"
    unexplained = []
    for path in core_files():
        text = path.read_text().splitlines()
        for node, in_function in runtime_imports(ast.parse("\n".join(text))):
            if in_function:
                around = " ".join(text[max(0, node.lineno - 2) : node.lineno])
                if "#" not in around:
                    unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unexplained == [], "a function-level import needs a comment saying why it is deferred"


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _encoder_depth(node: ast.Constant, parents: dict[int, ast.AST]) -> bool:
    """``"depth"`` as the encoder's layer count (a config field), not the modality: a key beside width/heads."""
    parent = parents.get(id(node))
    if isinstance(parent, (ast.Dict, ast.Set)):
        keys = parent.keys if isinstance(parent, ast.Dict) else parent.elts
        return bool({k.value for k in keys if isinstance(k, ast.Constant)} & {"width", "heads"})
    return isinstance(parent, ast.Subscript) and "enc" in ast.unparse(parent.value)


def builtin_names_in(source: str) -> list[tuple[int, str]]:
    """String constants of code (not docstrings) that name a built-in modality or its LanguageBind release."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        value = node.value.strip().lower()
        release = any(f"languagebind{name}" in value.replace("_", "") for name in BUILTIN_MODALITIES)
        if release or (value in BUILTIN_MODALITIES and not _encoder_depth(node, parents)):
            found.append((node.lineno, node.value))
    return found


def test_the_modality_name_finder_sees_code_not_docstrings() -> None:
    source = (
        'def f(x, cfg):\n    """Audio is fine here."""\n    a = x == "audio"\n    b = x.endswith("LanguageBindThermal")\n'
        '    c = {"width": 8, "depth": 2}\n    d = cfg["encoder"]["depth"]\n    e = {"depth": "max_depth"}\n'
    )
    assert [line for line, _ in builtin_names_in(source)] == [3, 4, 7]


def test_lbcore_code_names_no_builtin_modality() -> None:
    found = {}
    for path in core_files():
        name = str(path.relative_to(ROOT))
        allowed = WIDGET_KINDS.get(name, set())
        hits = [(line, value) for line, value in builtin_names_in(path.read_text()) if value not in allowed]
        if hits:
            found[name] = hits
    assert found == {}


@pytest.mark.parametrize("folder", ["lbcore", "plugins", "examples"])
def test_modules_and_functions_stay_small(folder: str) -> None:
    too_big = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "{{" in str(path) or "plugin_template" in path.parts:
            continue
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{path.relative_to(ROOT)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert too_big == []
