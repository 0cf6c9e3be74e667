"""YAML with positions → validated model, with every problem reported in one pass.

Each problem is a `PolicyIssue` located at the YAML node that caused it:
an unknown key at the key, a bad value at the value, a missing key at its
parent mapping. The loader raises nothing but `PolicyError`, whatever the input.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gateway.errors import PolicyError, PolicyIssue
from gateway.policy.model import PolicyModel

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]
Positions = dict[Loc, tuple[int, int]]
KEY = "__key__"


def _build(node: yaml.Node, loc: Loc, pos: Positions, issues: list[tuple[Loc, str]]) -> Any:
    pos[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k, v in node.value:
            # keys are taken as written: YAML 1.1 would turn `on:` into True
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            pos[(*loc, key, KEY)] = (k.start_mark.line + 1, k.start_mark.column + 1)
            if key in out:
                issues.append(((*loc, key, KEY), f"duplicate key '{key}'"))
            out[key] = _build(v, (*loc, key), pos, issues)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*loc, i), pos, issues) for i, v in enumerate(node.value)]
    return yaml.constructor.SafeConstructor().construct_object(node)


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if part == KEY:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _locate(loc: Loc, pos: Positions) -> tuple[int, int]:
    for n in range(len(loc), -1, -1):
        if loc[:n] in pos:
            return pos[loc[:n]]
    return (1, 1)


_MESSAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "missing": lambda e: "required",
    "greater_than_equal": lambda e: f"must be at least {e['ctx']['ge']:g}",
    "less_than_equal": lambda e: f"must be at most {e['ctx']['le']:g}",
    "too_short": lambda e: f"must have at least {e['ctx']['min_length']} item(s)",
    "literal_error": lambda e: f"must be one of {e['ctx']['expected']}",
    "string_pattern_mismatch": lambda e: "must be a name of letters, digits, '_', '.', '-'",
    "int_type": lambda e: "expected an integer",
    "int_parsing": lambda e: "expected an integer",
    "float_type": lambda e: "expected a number",
    "float_parsing": lambda e: "expected a number",
    "bool_type": lambda e: "expected true or false",
    "bool_parsing": lambda e: "expected true or false",
    "string_type": lambda e: "expected a string",
    "dict_type": lambda e: "expected a mapping",
    "model_type": lambda e: "expected a mapping",
    "tuple_type": lambda e: "expected a list",
    "list_type": lambda e: "expected a list",
}


def _range_message(e: dict[str, Any], loc: Loc, model_cls: type[BaseModel]) -> str:
    return _MESSAGES[e["type"]](e)


def _issue_for(e: dict[str, Any], filename: str, pos: Positions, data: Any) -> PolicyIssue:
    loc: Loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = e["type"]
    if kind == "extra_forbidden":
        parent = _get(data, loc[:-1])
        known = _known_keys(e)
        key = str(loc[-1])
        msg = f"unknown key '{key}'"
        close = difflib.get_close_matches(key, known, n=1) if known else []
        if close:
            msg += f" (did you mean '{close[0]}'?)"
        elif isinstance(parent, dict):
            pass
        line, col = _locate((*loc, KEY), pos)
    elif kind in _MESSAGES:
        msg = _MESSAGES[kind](e)
        line, col = _locate(loc, pos)
    else:
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        line, col = _locate(loc, pos)
    if kind == "greater_than_equal" or kind == "less_than_equal":
        ctx = e.get("ctx", {})
        if "ge" in ctx and "le" in ctx:
            msg = f"must be between {ctx['ge']} and {ctx['le']}"
    return PolicyIssue(filename, line, col, format_loc(loc), msg)


_KNOWN: dict[str, list[str]] = {}


def _known_keys(e: dict[str, Any]) -> list[str]:
    return e.get("_known", [])  # type: ignore[no-any-return]


def _get(data: Any, loc: Loc) -> Any:
    for p in loc:
        try:
            data = data[p]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _fields_at(model_cls: type[BaseModel], data: Any, loc: Loc) -> list[str]:
    """Field names of the model at `loc`, to suggest a fix for a misspelt key."""
    cls: Any = model_cls
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        fields = getattr(cls, "model_fields", None)
        if fields is None or part not in fields:
            continue  # a name in a mapping (backends.<name>): the value type is already `cls`
        fld = fields[part]
        ann = fld.annotation
        if getattr(ann, "__origin__", None) is dict:
            cls = _model_in(ann.__args__[1])
        else:
            cls = _model_in(ann)
    return list(getattr(cls, "model_fields", {}) or [])


def _model_in(tp: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for a in getattr(tp, "__args__", ()) or ():
        found = _model_in(a)
        if found is not None:
            return found
    return None


def load_yaml_model(
    text: str,
    filename: str,
    model_cls: type[M],
    extra_checks: Callable[[M, Positions], list[tuple[Loc, str]]] | None = None,
) -> M:
    """Parse, validate and cross-check one YAML document into `model_cls`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PolicyError(
            [PolicyIssue(filename, line, col, "", f"YAML syntax: {e.problem}")]
        ) from None
    except yaml.YAMLError as e:
        raise PolicyError([PolicyIssue(filename, 1, 1, "", f"YAML: {e}")]) from None
    except (ValueError, RecursionError) as e:
        raise PolicyError([PolicyIssue(filename, 1, 1, "", f"unreadable: {e}")]) from None
    if node is None:
        raise PolicyError([PolicyIssue(filename, 1, 1, "", "the file is empty")])
    pos: Positions = {}
    dup: list[tuple[Loc, str]] = []
    try:
        data = _build(node, (), pos, dup)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as e:
        raise PolicyError([PolicyIssue(filename, 1, 1, "", f"YAML: {e}")]) from None
    issues = [PolicyIssue(filename, *_locate(loc, pos), format_loc(loc), m) for loc, m in dup]
    if not isinstance(data, dict):
        issues.append(PolicyIssue(filename, 1, 1, "", "the top level must be a mapping"))
        raise PolicyError(issues)
    try:
        model = model_cls.model_validate(data)
    except ValidationError as ve:
        errors = ve.errors()
        deeper = [tuple(x["loc"]) for x in errors]
        for raw in errors:
            err: dict[str, Any] = dict(raw)
            loc = tuple(err["loc"])
            if err["type"] == "too_short" and any(
                len(d) > len(loc) and d[: len(loc)] == loc for d in deeper
            ):
                continue  # a list whose items failed is not also "too short"
            if err["type"] == "extra_forbidden":
                err["_known"] = _fields_at(model_cls, data, tuple(err["loc"])[:-1])
            issues.append(_issue_for(err, filename, pos, data))
        raise PolicyError(sorted(issues, key=lambda i: (i.line, i.column))) from None
    except (ValueError, TypeError, RecursionError) as e:
        issues.append(PolicyIssue(filename, 1, 1, "", f"invalid: {e}"))
        raise PolicyError(issues) from None
    if extra_checks is not None:
        for loc, msg in extra_checks(model, pos):
            issues.append(PolicyIssue(filename, *_locate(loc, pos), format_loc(loc), msg))
    if issues:
        raise PolicyError(sorted(issues, key=lambda i: (i.line, i.column)))
    return model


def _policy_checks(p: PolicyModel, pos: Positions) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    seen: set[str] = set()
    for i, r in enumerate(p.routes):
        if r.name in seen:
            out.append((("routes", i, "name"), f"route name '{r.name}' is used twice"))
        seen.add(r.name)
        backends: set[str] = set()
        for j, s in enumerate(r.split):
            if s.backend not in p.backends:
                out.append(
                    (("routes", i, "split", j, "backend"),
                     f"backend '{s.backend}' is not defined in backends")
                )  # fmt: skip
            if s.backend in backends:
                out.append((("routes", i, "split", j, "backend"), f"backend '{s.backend}' twice"))
            backends.add(s.backend)
        if sum(s.weight for s in r.split) <= 0:
            out.append((("routes", i, "split"), "weights must add up to more than 0"))
        if r.retries and r.retries.per_try_timeout and r.retries.per_try_timeout > r.timeout:
            out.append(
                (("routes", i, "retries", "per_try_timeout"), "must not exceed the route's timeout")
            )
    for name, b in p.backends.items():
        regions = {e.region or p.gateway.region for e in b.endpoints}
        for k, region in enumerate(b.locality.priority):
            if region not in regions:
                out.append(
                    (("backends", name, "locality", "priority", k),
                     f"region '{region}' has no endpoints in this backend")
                )  # fmt: skip
    return out


def load_policy_text(text: str, filename: str = "<policy>") -> PolicyModel:
    return load_yaml_model(text, filename, PolicyModel, _policy_checks)


def load_policy(path: str | Path) -> PolicyModel:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(
            [PolicyIssue(str(path), 1, 1, "", f"not UTF-8 text: {e.reason}")]
        ) from None
    return load_policy_text(text, str(path))
