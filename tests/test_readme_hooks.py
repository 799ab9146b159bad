"""README.md's "### Hooks" table against lbcore/hookspecs.py: same hooks, same exact signatures, each tested.

Signatures are rendered as ``name(param: annotation, ...) -> return`` with every annotation written as its
source text, whether or not the module uses ``from __future__ import annotations`` (then inspect hands back
strings) or not (then the text is read from the function's source with ast).

A hook counts as tested when a Python file under tests/ (other than this one) implements it in a plugin
(``def <hook>(``) or calls it (``.<hook>(``).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from lbcore import hookspecs

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TESTS = Path(__file__).resolve().parent


def hookspec_functions() -> dict[str, Callable[..., object]]:
    """Every function of lbcore.hookspecs marked as a hook specification."""
    marker = f"{hookspecs.PROJECT}_spec"  # pluggy's HookspecMarker stores its options under this attribute
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and getattr(fn, marker, None) is not None
    }


def _source_annotations(fn: Callable[..., object]) -> dict[str, str]:
    """Annotation source text by parameter name (and ``return``), read from the function's definition."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    node = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    args = node.args
    out = {
        a.arg: ast.unparse(a.annotation)
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        if a is not None and a.annotation is not None
    }
    if node.returns is not None:
        out["return"] = ast.unparse(node.returns)
    return out


class _AsWritten:
    """An annotation that inspect renders verbatim (inspect shows a non-type annotation by its repr)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def render_signature(fn: Callable[..., object]) -> str:
    """``name(a: T, *, b: U = 1) -> R`` with annotations as source text (see the module docstring)."""
    sig = inspect.signature(fn, eval_str=False)
    source: dict[str, str] = {}

    def as_written(annotation: object, key: str) -> object:
        if annotation is inspect.Parameter.empty:
            return annotation
        if isinstance(annotation, str):
            return _AsWritten(annotation)
        if not source:
            source.update(_source_annotations(fn))
        return _AsWritten(source[key])

    params = [p.replace(annotation=as_written(p.annotation, p.name)) for p in sig.parameters.values()]
    sig = sig.replace(parameters=params, return_annotation=as_written(sig.return_annotation, "return"))
    return f"{fn.__name__}{sig}"


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; ``\\|`` is a pipe inside a cell."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _unquote(cell: str) -> str:
    return " ".join(cell.strip().strip("`").split())


def readme_hooks(text: str) -> dict[str, tuple[str, str]]:
    """``{hook: (signature, purpose)}`` from the first table under the "### Hooks" heading."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "### Hooks")
    except StopIteration:
        raise AssertionError(f"{README}: no '### Hooks' section") from None
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.lstrip().startswith("|"):
            rows.append(_cells(line))
        elif rows:
            break  # the first blank or text line after the table ends it
    assert len(rows) >= 2, f"{README}: no table under '### Hooks'"
    header, separator, *body = rows
    assert [h.lower() for h in header] == ["hook", "signature", "purpose"], f"unexpected table header {header}"
    assert all(set(c) <= set(":- ") for c in separator), (
        f"second row of the Hooks table is not a separator: {separator}"
    )
    out = {}
    for row in body:
        assert len(row) == 3, f"{README}: Hooks table row {row} does not have 3 cells"
        name = _unquote(row[0])
        assert name not in out, f"{README}: hook {name!r} is documented twice"
        out[name] = (_unquote(row[1]), row[2])
    return out


def hook_tests(name: str) -> list[str]:
    """Files under tests/ (this one excluded) that implement (``def name(``) or call (``.name(``) hook."""
    pattern = re.compile(rf"(\bdef\s+{re.escape(name)}\s*\(|\.{re.escape(name)}\s*\()")
    return sorted(
        p.name
        for p in TESTS.rglob("*.py")
        if p.resolve() != Path(__file__).resolve() and pattern.search(p.read_text(encoding="utf-8"))
    )


# -- the checks -------------------------------------------------------------------------------------------------


def test_every_hookspec_is_documented_and_every_documented_hook_exists() -> None:
    documented = set(readme_hooks(README.read_text(encoding="utf-8")))
    specs = set(hookspec_functions())
    assert specs, "lbcore.hookspecs defines no hook specifications"
    assert not specs - documented, f"hooks missing from README.md's Hooks table: {sorted(specs - documented)}"
    assert not documented - specs, f"README.md documents hooks that do not exist: {sorted(documented - specs)}"


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_documented_signature_matches_the_hookspec_exactly(name: str) -> None:
    documented = readme_hooks(README.read_text(encoding="utf-8"))
    if name not in documented:
        pytest.fail(f"hook {name!r} is not in README.md's Hooks table")
    signature, purpose = documented[name]
    assert signature == render_signature(hookspec_functions()[name])
    assert purpose, f"hook {name!r} has no purpose in README.md"


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_every_hook_has_a_test(name: str) -> None:
    assert hook_tests(name), (
        f"no test under {TESTS} implements (def {name}(...)) or calls (.{name}(...)) the hook {name!r}"
    )


# -- the checker checks itself ------------------------------------------------------------------------------------

_SPEC_SOURCE = '''
{future}
from collections.abc import Callable
from typing import Any, Literal


def hook(register: Callable[[type[int]], Any], *, limit: int | None = None, mode: Literal["a", 'b'] = "a", **extra: Any) -> None:
    """A hook."""
'''


def _load(tmp_path: Path, name: str, future: bool) -> Callable[..., object]:
    path = tmp_path / f"{name}.py"
    path.write_text(_SPEC_SOURCE.format(future="from __future__ import annotations" if future else ""))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.hook


@pytest.mark.parametrize("future", [True, False], ids=["future-annotations", "evaluated-annotations"])
def test_signature_rendering_is_the_source_text_with_or_without_future_annotations(
    tmp_path: Path, future: bool
) -> None:
    fn = _load(tmp_path, f"lbtest_hookspec_{int(future)}", future)
    assert isinstance(fn.__annotations__["register"], str) is future
    assert render_signature(fn) == (
        "hook(register: Callable[[type[int]], Any], *, limit: int | None = None, mode: Literal['a', 'b'] = 'a', "
        "**extra: Any) -> None"
    )


def test_readme_table_parsing_handles_escaped_pipes_and_stops_at_the_table_end() -> None:
    text = textwrap.dedent(
        """
        ### Hooks

        | hook | signature | purpose |
        |---|---|---|
        | `a` | `a(x: int \\| None) -> None` | first |
        | `b` | `b() -> None` | second |

        | not | part | of it |
        """
    )
    assert readme_hooks(text) == {"a": ("a(x: int | None) -> None", "first"), "b": ("b() -> None", "second")}
