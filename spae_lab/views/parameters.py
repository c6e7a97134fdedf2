"""Notebook parameters, checked against their declared types before any work is done.

A notebook's `parameters` cell declares each parameter with a type (`num_images: int = 8  # ...`).
Values injected from outside (`spae-lab report -p`, a YAML file, `papermill -p`) are checked
against that type up front: `check_parameter(name, value, type_name)` returns the value to use or
raises a ParameterError naming the parameter, the type it takes and the value it was given.
papermill's `-p` passes most values as text, so text that is a Python literal of the declared type
is read as that literal (`'["runs/demo"]'` for a list, `"8"` for an int); any other text is refused,
never read character by character.

Bounds. A number (or a list of numbers) declares its range at the start of its comment, as the
CLI config bounds its sizes: `num_images: int = 8  # [1, 64] held-out scenes shown` takes 1 to 64
inclusive; a value outside is refused with the range, before any work (`-p num_images=1000000000`
used to take the kernel past 2.7 GB). A list's items are bounded one by one, and a list holds at
most MAX_LIST_ITEMS items. `parse_bounds(comment)` reads the range; `spae-lab report` checks it
from the notebook file (`views.report.check_injected`), the notebook itself from its parameters
cell as the kernel ran it (`check_parameters` finds that cell in IPython's input history).

In a notebook, the cell after the parameters cell calls `check_parameters(globals())`: the
parameters cell's annotations are the declared types, and the values are the injected ones.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

from spae_lab.errors import SpaeError


class ParameterError(SpaeError, TypeError):
    """A notebook parameter given a value of another type than it declares."""


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_A_LITERAL


_NOT_A_LITERAL = object()


def _as_int(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _NOT_A_LITERAL


def _as_float(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return _NOT_A_LITERAL


def _as_str(value: Any) -> Any:
    # a YAML `-p checkpoint=2024` arrives as a number; its text is what was meant
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return _NOT_A_LITERAL


def _as_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return _NOT_A_LITERAL


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else _NOT_A_LITERAL


def _as_dict(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else _NOT_A_LITERAL


_CONVERTERS = {"int": _as_int, "float": _as_float, "str": _as_str, "bool": _as_bool,
               "list": _as_list, "tuple": _as_list, "dict": _as_dict}
_EXAMPLES = {"int": "8", "float": "0.5", "str": "'text'", "bool": "True", "list": "'[\"a\", \"b\"]'",
             "tuple": "'[1, 2]'", "dict": "'{\"key\": 1}'"}


def _type_name(annotation: Any) -> str:
    """The annotation as text: `int`, `list[str]`, `str | None`."""
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__name__", None) if isinstance(annotation, type) else str(annotation)


MAX_LIST_ITEMS = 64  # a list parameter holds at most this many items (checkpoints, ways, ...)
_BOUNDS = re.compile(r"\s*\[\s*([-+]?[0-9][0-9_.eE+-]*)\s*,\s*([-+]?[0-9][0-9_.eE+-]*)\s*\]")


def parse_bounds(comment: str | None) -> tuple[float, float] | None:
    """The range a parameter's comment declares at its start, `[low, high]` (inclusive), or None."""
    match = _BOUNDS.match(comment or "")
    if not match:
        return None
    try:
        low, high = (ast.literal_eval(part) for part in match.groups())
    except (ValueError, SyntaxError):
        return None
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    return (low, high) if numbers and low <= high else None


def _check_bounds(name: str, value: Any, bounds: tuple[float, float] | None) -> None:
    if isinstance(value, list) and len(value) > MAX_LIST_ITEMS:
        raise ParameterError(f"parameter {name!r} holds {len(value)} items; at most {MAX_LIST_ITEMS}")
    if bounds is None:
        return
    low, high = bounds
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not low <= item <= high:
            shown = repr(item) if len(repr(item)) <= 40 else repr(item)[:37] + "..."
            raise ParameterError(f"parameter {name!r} must be in [{low}, {high}] (declared in its notebook's "
                                 f"parameters cell), got {shown}")


def check_parameter(name: str, value: Any, type_name: str | None, bounds: tuple[float, float] | None = None) -> Any:
    """`value` as the declared type `type_name` ("int", "list[str]", "str | None", ...; None or an
    unknown type: taken as it is) within `bounds` (see `parse_bounds`), or ParameterError."""
    value = _check_type(name, value, type_name)
    _check_bounds(name, value, bounds)
    return value


def _check_type(name: str, value: Any, type_name: str | None) -> Any:
    if type_name is None:
        return value
    options = [part.strip() for part in type_name.split("|")]
    if value is None and "None" in options:
        return None
    bases = [part.split("[", 1)[0] for part in options if part != "None"]
    known = [base for base in bases if base in _CONVERTERS]
    if len(known) != len(bases) or not known:
        return value  # a type this check does not know: the notebook's own cells judge it
    for base in known:
        converted = _CONVERTERS[base](value)
        if converted is _NOT_A_LITERAL and isinstance(value, str) and base != "str":
            parsed = _literal(value)
            if parsed is not _NOT_A_LITERAL:
                converted = _CONVERTERS[base](parsed)
        if converted is not _NOT_A_LITERAL:
            return converted
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise ParameterError(f"parameter {name!r} is declared {type_name}, got {shown} ({type(value).__name__}); "
                         f"e.g. -p {name}={_EXAMPLES.get(known[0], '...')}")


def declared_comments(source: str) -> dict[str, str]:
    """{name: comment} of the annotated assignments in a parameters cell's source."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    lines = source.splitlines()
    comments = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            rest = lines[node.end_lineno - 1][node.end_col_offset:]
            comments[node.target.id] = rest.split("#", 1)[1].strip() if "#" in rest else ""
    return comments


def _parameters_cell_comments(namespace: dict[str, Any], names: list[str]) -> dict[str, str]:
    """The comments of the latest cell the kernel ran that declares all of `names` (IPython keeps
    every cell's source in `_ih`; papermill and nbval run the parameters cell as written)."""
    for source in reversed(list(namespace.get("_ih") or [])):
        if isinstance(source, str) and ":" in source:
            comments = declared_comments(source)
            if comments and set(names) <= set(comments):
                return comments
    return {}


def check_parameters(namespace: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Check a notebook's parameters in place: every name its parameters cell annotated (the
    namespace's `__annotations__`) against its annotation and against the bounds its comment
    declares (from `source`, the parameters cell, else found in the kernel's input history).
    Values converted from text (a list given as `'["a"]'`) replace the text in `namespace`.
    Returns {name: value} of the parameters."""
    annotations = dict(namespace.get("__annotations__", {}))
    names = [name for name in annotations if name in namespace]
    comments = declared_comments(source) if source is not None else _parameters_cell_comments(namespace, names)
    checked = {}
    for name in names:
        bounds = parse_bounds(comments.get(name))
        checked[name] = namespace[name] = check_parameter(name, namespace[name], _type_name(annotations[name]), bounds)
    return checked
