"""The rules engine: operator-written answers for when no backend could answer.

A rule file (`fallbacks/*.yaml`) lists rules in order; the first rule whose `match` holds
for a request writes the answer from its `respond` template. The format, with every key:

    version: 1
    rules:
      - name: classifier-degraded        # unique; [a-z0-9][a-z0-9._-]*
        match:                           # all given conditions must hold; none = always
          path_prefix: /v2/models/
          path: /v2/models/classifier/infer
          model: classifier              # /v2/models/<name>/..., else the JSON body's "model"
          methods: [POST]
          headers: {x-tenant: free}      # exact values; names ignore case
          json:                          # predicates over the request JSON (dotted paths,
            - {field: stream, equals: true}          # list indices as numbers)
            - {field: inputs.0.name, exists: true}
            - {field: model, in: [gpt-small, gpt-large]}
            - {field: user, matches: "^free-"}       # a Python regex, searched
        respond:
          status: 200                    # 200..599
          headers: {x-tailguard-reason: degraded}
          body: {...}                    # a JSON template, or
          text: "..."                    # a text template, or
          file: responses/x.json         # a file beside the rule file, read at load time
          content_type: application/json # default: application/json (body, file),
                                         # text/plain; charset=utf-8 (text)

Templates are strings holding placeholders: `${request.<dotted path>}` (a field of the
request JSON), `${path.model}` (the model named in a `/v2/models/<name>/` path),
`${header.<name>}` and `${now}` (unix seconds, an integer). A string that is exactly one
placeholder keeps the JSON type of the value; inside a longer string the value is written
as text. A missing value is JSON null, or an empty string inside a longer string. The
filter `|json` writes a value as JSON text (`"model": ${request.model|json}` in an SSE
`text`). `$${` is a literal `${`. Mapping keys are never templates. A `file` is a JSON
template when its content type is JSON, else a text template.

Everything that can be wrong with a file is found at load time and reported at its line
and column, in one pass: schema errors, regexes that do not compile, unknown
placeholders, missing files, rule names used twice. Loading compiles each template into
a render plan (literal JSON text and value slots), so answering a request parses no
template and compiles no regex; the request body is parsed at most once, and only when
a rule needs it.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BeforeValidator, Field, Strict, model_validator
from pydantic_core import PydanticCustomError

from gateway.policy.compile import model_from_path
from gateway.policy.load import Loc, ModelLoader, format_path
from gateway.policy.model import (
    AT_KEY,
    Bool,
    FrozenMap,
    FrozenModel,
    HeaderName,
    Method,
    Problem,
    Text,
    UrlPath,
    checks_failed,
    did_you_mean,
)

__all__ = [
    "MAX_FILE_BYTES",
    "JsonPredicateModel",
    "RespondModel",
    "RuleAnswer",
    "RuleMatchModel",
    "RuleModel",
    "RuleRequest",
    "RuleSet",
    "RulesFileModel",
    "load_rules",
    "load_rules_text",
    "looks_like_rules",
]

RULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
MEDIA_TYPE_PATTERN = r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;.*)?$"
FIELD_PATH_PATTERN = r"^[^.]+(\.[^.]+)*$"
MAX_FILE_BYTES = 1 << 20  # a canned answer is small; a huge file is a mistake
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
# The HTTP layer owns these; a rule setting them would contradict the body it sends.
RESERVED_HEADERS = {
    "content-type": "set it with content_type",
    "content-length": "the gateway sets it",
    "transfer-encoding": "the gateway sets it",
    "connection": "the gateway sets it",
}
# KServe's binary tensor extension: the JSON header is only this many leading bytes.
KSERVE_JSON_LENGTH = "inference-header-content-length"


def _error(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, "{message}", {"message": message})


# --- the file format ----------------------------------------------------------------------


def _rule_name(value: str) -> str:
    if not re.fullmatch(RULE_NAME_PATTERN, value):
        raise _error(
            "rule_name",
            "must start with a lower-case letter or digit and hold only a-z, 0-9, '.', '_' and '-'",
        )
    return value


def _field_path(value: str) -> str:
    if not re.fullmatch(FIELD_PATH_PATTERN, value):
        raise _error("field_path", "expected a dotted path like inputs.0.name")
    return value


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise _error("header_value", "a header value must not hold line breaks or NUL")
    return value


def _media_type(value: str) -> str:
    if not re.fullmatch(MEDIA_TYPE_PATTERN, value) or any(c in value for c in "\r\n\0"):
        raise _error("media_type", "expected a media type like application/json")
    return value


def _version(value: object) -> object:
    if type(value) is not int or value != 1:
        raise _error("version", "must be 1 (this gateway reads rule files version 1)")
    return value


def _header_checks(headers: Any, loc: Loc, *, reserved: bool) -> list[Problem]:
    """Header names given twice (ignoring case) or owned by the HTTP layer, at their key."""
    if not isinstance(headers, Mapping):
        return []
    seen: set[str] = set()
    problems: list[Problem] = []
    for name in headers:
        lower = str(name).lower()
        if lower in seen:
            message = f"header '{name}' is given twice (names ignore case)"
            problems.append(((*loc, name, AT_KEY), message))
        elif reserved and lower in RESERVED_HEADERS:
            message = f"header '{name}' cannot be set here: {RESERVED_HEADERS[lower]}"
            problems.append(((*loc, name, AT_KEY), message))
        seen.add(lower)
    return problems


RuleName = Annotated[str, AfterValidator(_rule_name)]
FieldPath = Annotated[str, AfterValidator(_field_path)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]
MediaType = Annotated[str, AfterValidator(_media_type)]
ResponseStatus = Annotated[int, Strict(), Field(ge=200, le=599)]
_PREDICATE_OPS = ("equals", "exists", "in", "matches")


class JsonPredicateModel(FrozenModel):
    """One condition on a field of the request JSON; exactly one operator is given."""

    field: FieldPath
    equals: Any = None
    exists: Bool | None = None
    in_: Annotated[tuple[Any, ...], Field(min_length=1)] | None = Field(default=None, alias="in")
    matches: str | None = None

    def _given(self) -> list[str]:
        return [o for o in _PREDICATE_OPS if ("in_" if o == "in" else o) in self.model_fields_set]

    @property
    def operator(self) -> str:
        """The operator given: equals, exists, in or matches (validation ensures one)."""
        given = self._given()
        return given[0] if given else "exists"

    @model_validator(mode="after")
    def _one_operator(self) -> JsonPredicateModel:
        given = self._given()
        if not given:
            raise checks_failed(((), "give one of equals, exists, in or matches"))
        if len(given) > 1:
            raise checks_failed(
                (
                    (given[1],),
                    f"give only one of equals, exists, in or matches (not {given[0]} too)",
                )
            )
        return self


class RuleMatchModel(FrozenModel):
    """When a rule applies; every condition given must hold, and no condition means always."""

    path_prefix: UrlPath | None = None
    path: UrlPath | None = None
    model: Text | None = None
    methods: tuple[Method, ...] = ()
    headers: FrozenMap[HeaderName, str] = FrozenMap()
    json_: Annotated[tuple[JsonPredicateModel, ...], Field(alias="json")] = ()


class RespondModel(FrozenModel):
    """The answer: a status, headers, and exactly one of body, text or file."""

    status: ResponseStatus = 200
    headers: FrozenMap[HeaderName, HeaderValue] = FrozenMap()
    body: Any = None
    text: str | None = None
    file: Text | None = None
    content_type: MediaType | None = None

    @property
    def kind(self) -> Literal["body", "text", "file"]:
        if self.file is not None:
            return "file"
        return "text" if self.text is not None else "body"

    @model_validator(mode="after")
    def _one_payload(self) -> RespondModel:
        given = [k for k in ("body", "text", "file") if k in self.model_fields_set]
        if not given:
            raise checks_failed(((), "give one of body, text or file"))
        if len(given) > 1:
            raise checks_failed(
                ((given[1],), f"give only one of body, text or file (not {given[0]} too)")
            )
        if self.status in (204, 304) and (given[0] != "text" or self.text):
            raise checks_failed(
                (("status",), f'a {self.status} answer has no body: respond with text: ""')
            )
        return self


class RuleModel(FrozenModel):
    name: RuleName
    match: RuleMatchModel = RuleMatchModel()
    respond: RespondModel


class RulesFileModel(FrozenModel):
    """A whole rule file; rules are tried in this order."""

    version: Annotated[Literal[1], BeforeValidator(_version)]
    rules: Annotated[tuple[RuleModel, ...], Field(min_length=1)]


# --- requests and answers -----------------------------------------------------------------


class _Missing(Enum):
    """A value the request does not have (no such field, header or model)."""

    MISSING = 0


MISSING: Final = _Missing.MISSING


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True, slots=True)
class RuleRequest:
    """What rules may look at. `headers` keys are lower-case; `now` is unix time for `${now}`."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    now: float
    _parsed: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)

    def json(self) -> Any:
        """The body as JSON, parsed on first use; MISSING when it is not valid JSON.

        With KServe's binary tensor extension only the leading JSON header is parsed.
        """
        if not self._parsed:
            self._parsed.append(self._parse())
        return self._parsed[0]

    def _parse(self) -> Any:
        body = self.body
        length = self.headers.get(KSERVE_JSON_LENGTH)
        if length is not None and length.isascii() and length.isdigit():
            body = body[: int(length)]
        try:
            return json.loads(body, parse_constant=_no_constants)
        except (ValueError, RecursionError):
            return MISSING

    def model(self) -> str | None:
        """The model asked for: from a KServe v2 path, else the JSON body's "model" string."""
        name = model_from_path(self.path)
        if name is not None:
            return name
        data = self.json()
        value = data.get("model") if isinstance(data, dict) else None
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class RuleAnswer:
    """A rule's answer, ready to send; `rule` names the rule for metrics and headers."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    rule: str


# --- values from the request --------------------------------------------------------------


def _index(part: str) -> int | None:
    return int(part) if part.isascii() and part.isdigit() else None


@dataclass(frozen=True, slots=True)
class _FieldPath:
    """A dotted path into JSON; a part that is a number also indexes lists."""

    parts: tuple[tuple[str, int | None], ...]

    @classmethod
    def parse(cls, text: str) -> _FieldPath:
        return cls(tuple((p, _index(p)) for p in text.split(".")))

    def lookup(self, data: Any) -> Any:
        for key, index in self.parts:
            if isinstance(data, dict) and key in data:
                data = data[key]
            elif isinstance(data, list) and index is not None and index < len(data):
                data = data[index]
            else:
                return MISSING
        return data


class _SourceKind(Enum):
    REQUEST = "request"
    PATH = "path"
    HEADER = "header"
    NOW = "now"


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a placeholder's value comes from; `as_json` applies the `|json` filter."""

    kind: _SourceKind
    field: _FieldPath | None = None
    header: str = ""
    as_json: bool = False

    def value(self, request: RuleRequest) -> Any:
        value: Any
        if self.kind is _SourceKind.REQUEST:
            assert self.field is not None
            data = request.json()
            value = MISSING if data is MISSING else self.field.lookup(data)
        elif self.kind is _SourceKind.PATH:
            model = model_from_path(request.path)
            value = MISSING if model is None else model
        elif self.kind is _SourceKind.HEADER:
            value = request.headers.get(self.header, MISSING)
        else:
            value = int(request.now) if math.isfinite(request.now) else MISSING
        if self.as_json:
            return _dumps(None if value is MISSING else value)
        return value


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _as_text(value: Any) -> str:
    if value is MISSING or value is None:
        return ""
    if isinstance(value, str):
        return value
    return _dumps(value)  # numbers, booleans (true/false), lists and objects as JSON


class _Mode(Enum):
    JSON = "json"  # the value as JSON (a placeholder that is a whole JSON string)
    IN_STRING = "in-string"  # the value as text, escaped inside a JSON string
    TEXT = "text"  # the value as text


@dataclass(frozen=True, slots=True)
class _Slot:
    source: _Source
    mode: _Mode

    def render(self, request: RuleRequest) -> str:
        value = self.source.value(request)
        if self.mode is _Mode.JSON:
            return _dumps(None if value is MISSING else value)
        if self.mode is _Mode.IN_STRING:
            return _dumps(_as_text(value))[1:-1]
        return _as_text(value)


@dataclass(frozen=True, slots=True)
class _Template:
    """A compiled template: literal text and slots, joined in order."""

    parts: tuple[str | _Slot, ...]

    def render(self, request: RuleRequest) -> bytes:
        text = "".join(p if isinstance(p, str) else p.render(request) for p in self.parts)
        return text.encode("utf-8", "replace")  # a lone surrogate from a request is not UTF-8


# --- compiling templates ------------------------------------------------------------------

_TOKEN = re.compile(r"\$\$\{|\$\{([^{}]*)\}|\$\{")
_ROOTS = ("request", "path", "header", "now")
_KNOWN = "request.<field>, path.model, header.<name> or now"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class _TemplateError(Exception):
    pass


def _source(inner: str) -> _Source:
    expr, bar, filt = inner.partition("|")
    expr, filt = expr.strip(), filt.strip()
    if bar and filt != "json":
        raise _TemplateError(f"unknown filter '{filt}' in '${{{inner}}}' (the one filter is json)")
    root, dot, rest = expr.partition(".")
    if root == "now" and not dot:
        return _Source(_SourceKind.NOW, as_json=bool(bar))
    if root == "request" and re.fullmatch(FIELD_PATH_PATTERN, rest):
        return _Source(_SourceKind.REQUEST, _FieldPath.parse(rest), as_json=bool(bar))
    if root == "path" and rest == "model":
        return _Source(_SourceKind.PATH, as_json=bool(bar))
    if root == "header" and _HEADER_NAME.fullmatch(rest):
        return _Source(_SourceKind.HEADER, header=rest.lower(), as_json=bool(bar))
    if root == "request":
        raise _TemplateError(f"'${{{inner}}}' must name a field, like ${{request.model}}")
    if root == "path":
        raise _TemplateError(f"unknown placeholder '${{{inner}}}' (the path gives path.model)")
    if root == "header":
        raise _TemplateError(f"'${{{inner}}}' must name a header, like ${{header.x-user-id}}")
    hint = (did_you_mean(root, _ROOTS) if root else "") or f" (use {_KNOWN})"
    raise _TemplateError(f"unknown placeholder '${{{inner}}}'{hint}")


def _pieces(text: str) -> list[str | _Source]:
    """A template string as literal text and value sources; raises _TemplateError."""
    out: list[str | _Source] = []
    literal = ""
    at = 0
    for m in _TOKEN.finditer(text):
        literal += text[at : m.start()]
        at = m.end()
        if m.group(0) == "$${":
            literal += "${"
        elif m.group(1) is None:
            raise _TemplateError(
                "'${' at offset "
                f"{m.start()} is not closed with '}}' (write '$${{' for a literal '${{')"
            )
        else:
            if literal:
                out.append(literal)
                literal = ""
            out.append(_source(m.group(1)))
    literal += text[at:]
    if literal:
        out.append(literal)
    return out


Report = Callable[[Loc, str], None]


class _Builder:
    """Collects template parts, merging adjacent literal text."""

    def __init__(self) -> None:
        self.parts: list[str | _Slot] = []

    def text(self, s: str) -> None:
        if self.parts and isinstance(self.parts[-1], str):
            self.parts[-1] += s
        elif s:
            self.parts.append(s)

    def slot(self, source: _Source, mode: _Mode) -> None:
        self.parts.append(_Slot(source, mode))

    def template(self) -> _Template:
        return _Template(tuple(self.parts))


def _json_problem(value: Any) -> tuple[Loc, str] | None:
    """Where `value` (read from YAML) is not plain JSON, and why; None when it is."""
    if isinstance(value, dict):
        for k, v in value.items():
            found = _json_problem(v)
            if found is not None:
                return ((k, *found[0]), found[1])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _json_problem(v)
            if found is not None:
                return ((i, *found[0]), found[1])
    elif isinstance(value, float) and not math.isfinite(value):
        return ((), "must be a finite number")
    elif not isinstance(value, str | int | float | bool) and value is not None:
        return ((), "not a JSON value (quote it to make it a string)")
    return None


def _compile_json(value: Any, loc: Loc, out: _Builder, report: Report) -> None:
    if isinstance(value, dict):
        out.text("{")
        for n, (k, v) in enumerate(value.items()):
            out.text(("," if n else "") + _dumps(k) + ":")
            _compile_json(v, (*loc, k), out, report)
        out.text("}")
    elif isinstance(value, list):
        out.text("[")
        for i, v in enumerate(value):
            out.text("," if i else "")
            _compile_json(v, (*loc, i), out, report)
        out.text("]")
    elif isinstance(value, str):
        try:
            pieces = _pieces(value)
        except _TemplateError as e:
            report(loc, str(e))
            out.text("null")
            return
        if len(pieces) == 1 and isinstance(pieces[0], _Source):
            out.slot(pieces[0], _Mode.JSON)
            return
        out.text('"')
        for p in pieces:
            if isinstance(p, str):
                out.text(_dumps(p)[1:-1])
            else:
                out.slot(p, _Mode.IN_STRING)
        out.text('"')
    else:
        found = _json_problem(value)
        if found is not None:
            report(loc, found[1])
            out.text("null")
        else:
            out.text(_dumps(value))


def _compile_text(text: str, loc: Loc, report: Report) -> _Template:
    out = _Builder()
    try:
        pieces = _pieces(text)
    except _TemplateError as e:
        report(loc, str(e))
        return out.template()
    for p in pieces:
        if isinstance(p, str):
            out.text(p)
        else:
            out.slot(p, _Mode.TEXT)
    return out.template()


def _is_json_type(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == JSON_TYPE or media.endswith("+json")


def _compile_file(
    name: str, content_type: str, loc: Loc, base_dir: Path | None, report: Report
) -> _Template | None:
    if base_dir is None:
        report(loc, "a file answer needs the rules to be loaded from a file")
        return None
    try:
        root = base_dir.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            report(loc, "must be a path inside the rule file's directory")
            return None
        if path.stat().st_size > MAX_FILE_BYTES:
            report(loc, f"'{name}' is larger than {MAX_FILE_BYTES} bytes")
            return None
        raw = path.read_bytes()
    except OSError as e:
        report(loc, f"cannot read '{name}': {e.strerror or e}")
        return None
    except (ValueError, RuntimeError) as e:  # a NUL byte in the name; a symlink loop
        report(loc, f"cannot read '{name}': {e}")
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        report(loc, f"'{name}' is not UTF-8 text (byte {e.start})")
        return None

    def in_file(at: Loc, message: str) -> None:
        where = f" at {format_path(at)}" if at else ""
        report(loc, f"in '{name}'{where}: {message}")

    if not _is_json_type(content_type):
        return _compile_text(text, (), in_file)
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        hint = " (set content_type to serve another kind of file)"
        report(
            loc, f"'{name}' is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}{hint}"
        )
        return None
    except (ValueError, RecursionError) as e:
        report(loc, f"'{name}' is not valid JSON: {e}")
        return None
    out = _Builder()
    _compile_json(data, (), out, in_file)
    return out.template()


# --- loading --------------------------------------------------------------------------------


@dataclass
class _Compiled:
    """What the pass over the plain data built, by rule index, for the validated model."""

    patterns: dict[tuple[int, int], re.Pattern[str]] = field(default_factory=dict)
    templates: dict[int, _Template] = field(default_factory=dict)


def _predicate_checks(
    pred: Mapping[str, Any], i: int, j: int, loc: Loc, built: _Compiled, problems: list[Problem]
) -> None:
    pattern = pred.get("matches")
    if isinstance(pattern, str):
        where = (*loc, "matches")
        try:
            # A pattern Python warns about (a possible nested set) may change meaning in a
            # later Python; the operator escapes it now rather than learn of it then.
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                built.patterns[(i, j)] = re.compile(pattern)
        except re.error as e:
            problems.append((where, f"not a valid regular expression: {e}"))
        except Warning as e:
            problems.append((where, f"an ambiguous regular expression: {e} (escape it)"))
        except (RecursionError, OverflowError):
            problems.append((where, "not a valid regular expression: too complex"))
    for key in ("equals", "in"):
        if key in pred:
            found = _json_problem(pred[key])
            if found is not None:
                problems.append(((*loc, key, *found[0]), found[1]))


def _respond_checks(
    respond: Mapping[str, Any],
    i: int,
    loc: Loc,
    base_dir: Path | None,
    built: _Compiled,
    problems: list[Problem],
) -> None:
    def report(at: Loc, message: str) -> None:
        problems.append((at, message))

    content_type = respond.get("content_type")
    if not isinstance(content_type, str):
        content_type = JSON_TYPE
    if "body" in respond:
        out = _Builder()
        _compile_json(respond["body"], (*loc, "body"), out, report)
        built.templates[i] = out.template()
    if isinstance(respond.get("text"), str):
        built.templates[i] = _compile_text(respond["text"], (*loc, "text"), report)
    if isinstance(respond.get("file"), str) and respond["file"].strip():
        template = _compile_file(respond["file"], content_type, (*loc, "file"), base_dir, report)
        if template is not None:
            built.templates[i] = template


def _checks(data: Any, base_dir: Path | None, built: _Compiled) -> list[Problem]:
    """Checks past the schema, on plain data so they run even when validation failed.

    They compile what the answers need (regexes, templates, files) into `built` as they go.
    """
    problems: list[Problem] = []
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return problems
    names: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        loc: Loc = ("rules", i)
        name = rule.get("name")
        if isinstance(name, str):
            if name in names:
                message = f"rule name '{name}' is already used by rules[{names[name]}]"
                problems.append(((*loc, "name"), message))
            else:
                names[name] = i
        match = rule.get("match")
        if isinstance(match, dict):
            problems += _header_checks(
                match.get("headers"), (*loc, "match", "headers"), reserved=False
            )
        preds = match.get("json") if isinstance(match, dict) else None
        if isinstance(preds, list):
            for j, pred in enumerate(preds):
                if isinstance(pred, dict):
                    _predicate_checks(pred, i, j, (*loc, "match", "json", j), built, problems)
        respond = rule.get("respond")
        if isinstance(respond, dict):
            where = (*loc, "respond", "headers")
            problems += _header_checks(respond.get("headers"), where, reserved=True)
            _respond_checks(respond, i, (*loc, "respond"), base_dir, built, problems)
    return problems


def load_rules_text(text: str, filename: str = "<rules>", base_dir: Path | None = None) -> RuleSet:
    """Load a rule file from text; `file` answers are read relative to `base_dir`.

    Without `base_dir`, a rule with a `file` answer is an error. Raises `PolicyError`
    listing every problem, each with file, line and column; raises nothing else.
    """
    built = _Compiled()
    loader = ModelLoader(RulesFileModel, lambda data, _model: _checks(data, base_dir, built))
    return _rule_set(loader.load_text(text, filename), built, filename)


def load_rules(path: str | Path) -> RuleSet:
    """Load a rule file; `file` answers are read relative to its directory.

    Raises `PolicyError` listing every problem (also when the file cannot be read).
    """
    base_dir = Path(path).parent
    built = _Compiled()
    loader = ModelLoader(RulesFileModel, lambda data, _model: _checks(data, base_dir, built))
    return _rule_set(loader.load(path), built, str(path))


def looks_like_rules(data_text: str) -> bool:
    """Whether a YAML text is a rule file rather than a policy, without parsing it.

    A rule file has a top-level `rules:` key and neither `routes:` nor `backends:`; the
    caller then loads it with `load_rules` (which reports any real problem).
    """

    def top(key: str) -> bool:
        return re.search(rf"^[\"']?{key}[\"']?[ \t]*:", data_text, re.MULTILINE) is not None

    return top("rules") and not top("routes") and not top("backends")


# --- answering ----------------------------------------------------------------------------


class _Op(Enum):
    EQUALS = "equals"
    EXISTS = "exists"
    IN = "in"
    MATCHES = "matches"


def _same(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1`, `1` is `1.0`, containers compare item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


@dataclass(frozen=True, slots=True)
class _Predicate:
    field: _FieldPath
    op: _Op
    values: tuple[Any, ...] = ()  # equals: (value,); in: the choices
    exists: bool = True
    pattern: re.Pattern[str] | None = None

    def holds(self, data: Any) -> bool:
        value = MISSING if data is MISSING else self.field.lookup(data)
        if self.op is _Op.EXISTS:
            return (value is not MISSING) == self.exists
        if value is MISSING:
            return False
        if self.op is _Op.MATCHES:
            assert self.pattern is not None
            return isinstance(value, str) and self.pattern.search(value) is not None
        return any(_same(value, v) for v in self.values)


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    methods: frozenset[str]
    path: str | None
    path_prefix: str | None
    model: str | None
    headers: tuple[tuple[str, str], ...]
    predicates: tuple[_Predicate, ...]
    status: int
    response_headers: tuple[tuple[str, str], ...]
    body: _Template

    def matches(self, request: RuleRequest) -> bool:
        if self.methods and request.method.upper() not in self.methods:
            return False
        if self.path is not None and request.path != self.path:
            return False
        if self.path_prefix is not None and not request.path.startswith(self.path_prefix):
            return False
        if any(request.headers.get(k) != v for k, v in self.headers):
            return False
        if self.model is not None and request.model() != self.model:
            return False
        return all(p.holds(request.json()) for p in self.predicates)


@dataclass(frozen=True, slots=True, eq=False)
class RuleSet:
    """The rules of one file, compiled; immutable, shared by every request of a snapshot."""

    source: str
    rules: tuple[_Rule, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules)

    def answer(self, request: RuleRequest) -> RuleAnswer | None:
        """The first matching rule's answer; None when no rule matches (the caller fails on)."""
        for rule in self.rules:
            if rule.matches(request):
                return RuleAnswer(
                    rule.status, rule.response_headers, rule.body.render(request), rule.name
                )
        return None


def _predicate(model: JsonPredicateModel, i: int, j: int, built: _Compiled) -> _Predicate:
    path = _FieldPath.parse(model.field)
    op = _Op(model.operator)
    if op is _Op.EXISTS:
        return _Predicate(path, op, exists=bool(model.exists))
    if op is _Op.MATCHES:
        return _Predicate(path, op, pattern=built.patterns[(i, j)])
    values = (model.equals,) if op is _Op.EQUALS else (model.in_ or ())
    return _Predicate(path, op, values=values)


def _content_type(respond: RespondModel) -> str:
    if respond.content_type is not None:
        return respond.content_type
    return TEXT_TYPE if respond.kind == "text" else JSON_TYPE


def _rule_set(model: RulesFileModel, built: _Compiled, source: str) -> RuleSet:
    rules: list[_Rule] = []
    for i, r in enumerate(model.rules):
        m, out = r.match, r.respond
        headers: Iterable[tuple[str, str]] = out.headers.items()
        rules.append(
            _Rule(
                name=r.name,
                methods=frozenset(m.methods),
                path=m.path,
                path_prefix=m.path_prefix,
                model=m.model,
                headers=tuple(m.headers.items()),
                predicates=tuple(_predicate(p, i, j, built) for j, p in enumerate(m.json_)),
                status=out.status,
                response_headers=(("content-type", _content_type(out)), *headers),
                body=built.templates[i],
            )
        )
    return RuleSet(source, tuple(rules))
