"""Notebook parameters, checked against their declared types before any work is done.

A notebook's `parameters` cell declares each parameter with a type (`num_images: int = 8  # ...`).
Values injected from outside (`spae-lab report -p`, a YAML file, `papermill -p`) are checked
against that type up front: `check_parameter(name, value, type_name)` returns the value to use or
raises a ParameterError naming the parameter, the type it takes and the value it was given.
papermill's `-p` passes most values as text, so text that is a Python literal of the declared type
is read as that literal (`'["runs/demo"]'` for a list, `"8"` for an int); any other text is refused,
never read character by character.

In a notebook, the cell after the parameters cell calls `check_parameters(globals())`: the
parameters cell's annotations are the declared types, and the values are the injected ones.
"""

from __future__ import annotations

import ast
import math
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


def check_parameter(name: str, value: Any, type_name: str | None) -> Any:
    """`value` as the declared type `type_name` ("int", "list[str]", "str | None", ...; None or an
    unknown type: taken as it is), or ParameterError."""
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


def check_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """Check a notebook's parameters in place: every name its parameters cell annotated (the
    namespace's `__annotations__`) against its annotation. Values converted from text (a list
    given as `'["a"]'`) replace the text in `namespace`. Returns {name: value} of the parameters."""
    checked = {}
    for name, annotation in dict(namespace.get("__annotations__", {})).items():
        if name in namespace:
            checked[name] = namespace[name] = check_parameter(name, namespace[name], _type_name(annotation))
    return checked
