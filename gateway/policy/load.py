"""YAML with positions → validated pydantic model, every problem reported in one pass.

The pipeline, generic over the model class (policies today, fallback rule files next):

1. `read_yaml`: `yaml.compose` keeps each node's mark; the node tree becomes plain data
   (dicts, lists, scalars) plus a map from each path — a tuple of keys and indices — to
   its 1-based (line, column), and a second map to the position of each mapping key.
   Keys are taken as written (YAML 1.1 would turn `on:` into True). Duplicate keys,
   recursive aliases, unsupported tags and unreadable scalars become issues here.
2. `model_cls.model_validate(data)`; each pydantic error becomes a `PolicyIssue` with a
   human message (`must be between 0 and 100`, `unknown key 'retires' (did you mean
   'retries'?)`, `required`) located at the node that caused it: an unknown key at the
   key, a missing key at its parent mapping, a bad value at the value. Model validators
   report their problems with `checks_failed`, which carries the location of each.
3. `extra_checks(data, model)`: cross-checks over the plain data (and the model, None
   when validation failed), so they are reported in the same pass as schema errors.

`load_yaml_model` raises nothing but `PolicyError`, whatever the text.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from yaml.composer import ComposerError
from yaml.constructor import SafeConstructor
from yaml.reader import ReaderError

from gateway.errors import PolicyError, PolicyIssue
from gateway.policy.model import (
    AT_KEY,
    FrozenMap,
    PolicyModel,
    Problem,
    did_you_mean,
    policy_cross_checks,
)

__all__ = [
    "Loc",
    "ModelLoader",
    "YamlDocument",
    "format_path",
    "load_policy",
    "load_policy_text",
    "load_yaml_model",
    "locate",
    "read_yaml",
]

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]
Position = tuple[int, int]
ExtraChecks = Callable[[Any, M | None], Iterable[Problem]]

MAX_NODES = 100_000  # after alias expansion: a "billion laughs" file stops here
MAX_DEPTH = 64

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_INTERNAL_LOC = re.compile(r"^[a-z][a-z0-9_-]*\[.*\]$")  # pydantic's union/function tags


# --- positions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """Plain data read from YAML, with the position of every node and every mapping key."""

    filename: str
    data: Any
    positions: Mapping[Loc, Position] = field(default_factory=dict)
    key_positions: Mapping[Loc, Position] = field(default_factory=dict)
    unreadable: frozenset[Loc] = frozenset()  # values already reported while reading

    def locate(self, loc: Loc, *, key: bool = False) -> Position:
        return locate(self, loc, key=key)

    def issue(self, loc: Loc, message: str, *, key: bool = False) -> PolicyIssue:
        line, column = self.locate(loc, key=key)
        return PolicyIssue(self.filename, line, column, format_path(loc), message)


def locate(doc: YamlDocument, loc: Loc, *, key: bool = False) -> Position:
    """Where `loc` is written: its key (`key=True`) or value, else its nearest written parent.

    A path that is not in the file (a missing key, a default) falls back to the
    innermost enclosing node that is.
    """
    if key and loc in doc.key_positions:
        return doc.key_positions[loc]
    for n in range(len(loc), -1, -1):
        where = doc.positions.get(loc[:n])
        if where is not None:
            return where
    return (1, 1)


def format_path(loc: Loc) -> str:
    """`("routes", 0, "split", 1, "weight")` → `routes[0].split[1].weight`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# --- stage 1: YAML → data + positions ---------------------------------------------------------


class _Abort(Exception):
    """The document cannot be read further (too large or too deep)."""


def _mark(node: yaml.Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Reader:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.positions: dict[Loc, Position] = {}
        self.key_positions: dict[Loc, Position] = {}
        self.issues: list[PolicyIssue] = []
        self.bad: set[Loc] = set()  # paths whose value could not be read
        self.nodes = 0
        self.constructor = SafeConstructor()

    def problem(self, where: Position, loc: Loc, message: str) -> None:
        self.issues.append(PolicyIssue(self.filename, *where, format_path(loc), message))

    def build(self, node: yaml.Node, loc: Loc, active: frozenset[int]) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Abort(f"the document is too large (more than {MAX_NODES} nodes with aliases)")
        if len(loc) > MAX_DEPTH:
            raise _Abort(f"the document nests deeper than {MAX_DEPTH} levels")
        self.positions[loc] = _mark(node)
        if id(node) in active:
            self.problem(_mark(node), loc, "an alias refers to a node that contains it")
            self.bad.add(loc)
            return None
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                return self._unsupported(node, loc)
            return self._mapping(node, loc, active | {id(node)})
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                return self._unsupported(node, loc)
            inner = active | {id(node)}
            return [self.build(v, (*loc, i), inner) for i, v in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node, deep=True)
        except Exception as e:  # any library failure on one scalar is that scalar's issue
            problem = getattr(e, "problem", None) or str(e) or type(e).__name__
            self.problem(_mark(node), loc, f"cannot read this value: {problem}")
            self.bad.add(loc)
            return None

    def _unsupported(self, node: yaml.Node, loc: Loc) -> None:
        self.problem(_mark(node), loc, f"unsupported YAML tag '{node.tag}'")
        self.bad.add(loc)

    def _entries(
        self, node: yaml.MappingNode, loc: Loc, active: frozenset[int]
    ) -> tuple[list[tuple[yaml.Node, yaml.Node]], list[tuple[yaml.Node, yaml.Node]]]:
        """The mapping's own entries, and those merged in with `<<` (which never override)."""
        own: list[tuple[yaml.Node, yaml.Node]] = []
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for k, v in node.value:
            if not (isinstance(k, yaml.ScalarNode) and k.tag == _MERGE_TAG):
                own.append((k, v))
                continue
            sources = v.value if isinstance(v, yaml.SequenceNode) else [v]
            for src in sources:
                if not isinstance(src, yaml.MappingNode):
                    self.problem(_mark(src), loc, "'<<' merges a mapping or a list of mappings")
                elif id(src) in active:
                    self.problem(_mark(src), loc, "an alias refers to a node that contains it")
                else:
                    inner_own, inner_merged = self._entries(src, loc, active | {id(src)})
                    merged.extend(inner_own + inner_merged)
        return own, merged

    def _mapping(self, node: yaml.MappingNode, loc: Loc, active: frozenset[int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        own, merged = self._entries(node, loc, active)
        for k, v in own:
            if not isinstance(k, yaml.ScalarNode):
                self.problem(_mark(k), loc, "a key must be a plain string, not a list or mapping")
                continue
            key = str(k.value)
            kloc = (*loc, key)
            if key in out:
                first = self.key_positions[kloc]
                self.problem(_mark(k), kloc, f"duplicate key '{key}' (first at line {first[0]})")
                continue  # the first one stays: YAML would silently keep the last one
            self.key_positions[kloc] = _mark(k)
            out[key] = self.build(v, kloc, active)
        for k, v in merged:
            if isinstance(k, yaml.ScalarNode) and str(k.value) not in out:
                key = str(k.value)
                self.key_positions[(*loc, key)] = _mark(k)
                out[key] = self.build(v, (*loc, key), active)
        return out


def _syntax_issue(filename: str, text: str, e: BaseException) -> PolicyIssue:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        if isinstance(e, ComposerError) and "single document" in str(e.context):
            msg = "the file must hold one YAML document; a second one starts here"
        else:
            msg = str(e.problem or "invalid YAML")
            cm = e.context_mark
            if e.context and cm is not None and (cm.line, cm.column) != (line - 1, col - 1):
                msg += f" ({e.context} at line {cm.line + 1}, column {cm.column + 1})"
            elif e.context:
                msg += f" ({e.context})"
        return PolicyIssue(filename, line, col, "", f"invalid YAML: {msg}")
    if isinstance(e, ReaderError):
        pos = max(0, min(e.position, len(text)))
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = e.character if isinstance(e.character, str) else chr(e.character)
        return PolicyIssue(
            filename, line, col, "", f"invalid YAML: character {char!r} is not allowed"
        )
    if isinstance(e, RecursionError):
        return PolicyIssue(filename, 1, 1, "", "invalid YAML: the document nests too deeply")
    return PolicyIssue(filename, 1, 1, "", f"invalid YAML: {e}")


def read_yaml(text: str, filename: str) -> tuple[YamlDocument | None, list[PolicyIssue]]:
    """Plain data with positions, and the issues found while reading.

    The document is None when the YAML cannot be parsed at all (the issues say why).
    An empty file reads as an empty mapping.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except Exception as e:  # the parser's own errors, and anything it trips over
        return None, [_syntax_issue(filename, text, e)]
    if node is None:
        return YamlDocument(filename, {}, {(): (1, 1)}, {}), []
    reader = _Reader(filename)
    try:
        data = reader.build(node, (), frozenset())
    except _Abort as e:
        return None, [*reader.issues, PolicyIssue(filename, 1, 1, "", str(e))]
    except RecursionError:
        return None, [PolicyIssue(filename, 1, 1, "", "the document nests too deeply")]
    doc = YamlDocument(
        filename, data, reader.positions, reader.key_positions, frozenset(reader.bad)
    )
    return doc, reader.issues


# --- stage 2: pydantic errors → issues --------------------------------------------------------


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """Strip `Annotated` (collecting its metadata) and `X | None` down to the inner type."""
    meta: list[Any] = []
    while True:
        if get_origin(tp) is Annotated:
            args = get_args(tp)
            tp = args[0]
            for m in args[1:]:
                meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
        elif get_origin(tp) in (Union, types.UnionType):
            inner = [a for a in get_args(tp) if a is not type(None)]
            if len(inner) != 1:
                return tp, meta
            tp = inner[0]
        else:
            return tp, meta


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _walk(root: type[BaseModel], loc: Loc) -> tuple[Any, list[Any]]:
    """The declared type at `loc` and its constraint metadata; (None, []) when unknown."""
    tp: Any = root
    meta: list[Any] = []
    for part in loc:
        tp, _ = _unwrap(tp)
        origin = get_origin(tp)
        if isinstance(part, str) and _is_model(tp):
            info = next((f for n, f in tp.model_fields.items() if (f.alias or n) == part), None)
            if info is None:
                return None, []
            tp, meta = info.annotation, list(info.metadata)
        elif isinstance(part, int) and origin is tuple:
            tp, meta = get_args(tp)[0], []
        elif isinstance(part, str) and origin in (dict, FrozenMap):
            tp, meta = get_args(tp)[1], []
        else:
            return None, []
    tp, more = _unwrap(tp)
    return tp, [*meta, *more]


def _num(x: Any) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)


def _bounds_message(kind: str, ctx: Mapping[str, Any], meta: list[Any]) -> str:
    lo = hi = None
    for m in meta:
        lo = getattr(m, "ge", lo)
        hi = getattr(m, "le", hi)
    if lo is not None and hi is not None:
        return f"must be between {_num(lo)} and {_num(hi)}"
    words = {
        "greater_than_equal": ("ge", "must be at least"),
        "greater_than": ("gt", "must be more than"),
        "less_than_equal": ("le", "must be at most"),
        "less_than": ("lt", "must be less than"),
    }
    key, text = words[kind]
    return f"{text} {_num(ctx.get(key))}"


_TYPE_MESSAGES = {
    "missing": "required",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "must be a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "string_too_short": "must not be empty",
}


def _message(e: Mapping[str, Any], loc: Loc, model_cls: type[BaseModel]) -> str:
    kind = e["type"]
    ctx: Mapping[str, Any] = e.get("ctx") or {}
    if kind == "extra_forbidden":
        parent, _ = _walk(model_cls, loc[:-1])
        known = [f.alias or n for n, f in parent.model_fields.items()] if _is_model(parent) else []
        return f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), known)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return _bounds_message(kind, ctx, _walk(model_cls, loc)[1])
    if kind == "literal_error":
        tp, _ = _walk(model_cls, loc)
        choices = [str(a) for a in get_args(tp)] if get_origin(tp) is Literal else []
        value = e.get("input")
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        return f"must be one of {ctx.get('expected', '')}{hint}"
    if kind in ("too_short", "too_long"):
        n = ctx.get("min_length" if kind == "too_short" else "max_length")
        if kind == "too_short" and n == 1:
            return "must not be empty"
        return f"must have at {'least' if kind == 'too_short' else 'most'} {n} item(s)"
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind]
    return (
        str(e.get("msg", "invalid"))
        .removeprefix("Value error, ")
        .removeprefix("Assertion failed, ")
    )


def _validation_issues(
    err: ValidationError, doc: YamlDocument, model_cls: type[BaseModel]
) -> list[PolicyIssue]:
    bad = doc.unreadable
    errors = err.errors(include_url=False)
    locs = [tuple(p for p in e["loc"] if not _is_internal(p)) for e in errors]
    out: list[PolicyIssue] = []
    for e, loc in zip(errors, locs, strict=True):
        kind = e["type"]
        if kind != "extra_forbidden" and any(loc[:n] in bad for n in range(len(loc) + 1)):
            continue  # already reported while reading the YAML
        if kind == "checks":
            for at, message in (e.get("ctx") or {}).get("problems", ()):
                out.append(_issue_at(doc, (*loc, *at), message))
            continue
        if kind == "too_short" and any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs):
            continue  # a list whose items failed is not also "too short"
        message = _message(e, loc[:-1] if loc[-1:] == (AT_KEY,) else loc, model_cls)
        out.append(_issue_at(doc, loc, message, key=kind == "extra_forbidden"))
    return out


def _issue_at(doc: YamlDocument, loc: Loc, message: str, *, key: bool = False) -> PolicyIssue:
    """An issue at `loc`; a trailing AT_KEY points at the mapping key instead of its value."""
    if loc[-1:] == (AT_KEY,):
        return doc.issue(loc[:-1], message, key=True)
    return doc.issue(loc, message, key=key)


def _is_internal(part: str | int) -> bool:
    return isinstance(part, str) and part != AT_KEY and bool(_INTERNAL_LOC.match(part))


# --- the loader -------------------------------------------------------------------------------


def _finish(issues: Iterable[PolicyIssue]) -> list[PolicyIssue]:
    return sorted(set(issues), key=lambda i: (i.line, i.column, i.path, i.message))


def load_yaml_model(
    text: str,
    filename: str,
    model_cls: type[M],
    extra_checks: ExtraChecks[M] | None = None,
) -> M:
    """Parse, validate and cross-check one YAML document into `model_cls`.

    `extra_checks(data, model)` gets the plain data (always) and the validated model (None
    when validation failed), and returns `(absolute location, message)` problems (a
    location ending in `AT_KEY` points at a key); it must tolerate malformed data, which
    validation reports anyway. Raises `PolicyError` with every issue found, sorted by
    position; raises nothing else.
    """
    doc, issues = read_yaml(text, filename)
    if doc is None:
        raise PolicyError(_finish(issues))
    if not isinstance(doc.data, dict):
        kind = "a list" if isinstance(doc.data, list) else "a single value"
        issues.append(
            doc.issue((), f"the top level must be a mapping of keys to values, not {kind}")
        )
        raise PolicyError(_finish(issues))
    model: M | None = None
    try:
        model = model_cls.model_validate(doc.data)
    except ValidationError as e:
        issues.extend(_validation_issues(e, doc, model_cls))
    if extra_checks is not None:
        issues.extend(_issue_at(doc, loc, msg) for loc, msg in extra_checks(doc.data, model))
    if issues or model is None:
        raise PolicyError(_finish(issues))
    return model


class ModelLoader(Generic[M]):
    """`load_yaml_model` bound to one model class and its cross-checks, for one file kind."""

    def __init__(self, model_cls: type[M], extra_checks: ExtraChecks[M] | None = None) -> None:
        self.model_cls = model_cls
        self.extra_checks = extra_checks

    def load_text(self, text: str, filename: str = "<input>") -> M:
        return load_yaml_model(text, filename, self.model_cls, self.extra_checks)

    def load(self, path: str | Path) -> M:
        """Read a file (UTF-8) and load it; unreadable files are a `PolicyError` too."""
        name = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            msg = f"cannot read the file: {e.strerror or e}"
            raise PolicyError([PolicyIssue(name, 1, 1, "", msg)]) from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
            msg = f"not UTF-8 text (byte 0x{raw[e.start]:02x})"
            raise PolicyError([PolicyIssue(name, line, col, "", msg)]) from None
        return self.load_text(text, name)


# --- policies ---------------------------------------------------------------------------------


def _policy_checks(data: Any, model: PolicyModel | None) -> list[Problem]:
    # A valid model has passed these already (PolicyModel runs them); when validation
    # failed, run them on the plain data so they show up in the same pass.
    return policy_cross_checks(data) if model is None else []


POLICY_LOADER: ModelLoader[PolicyModel] = ModelLoader(PolicyModel, _policy_checks)


def load_policy_text(text: str, filename: str = "<policy>") -> PolicyModel:
    """Load a policy from text; raises `PolicyError` listing every problem."""
    return POLICY_LOADER.load_text(text, filename)


def load_policy(path: str | Path) -> PolicyModel:
    """Load a policy file; raises `PolicyError` listing every problem (also if unreadable)."""
    return POLICY_LOADER.load(path)
