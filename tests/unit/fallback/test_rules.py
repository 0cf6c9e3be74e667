"""The rules engine: every mistake located in one pass, matching, templates, shipped examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as triton_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import PolicyError
from gateway.fallback.rules import (
    MAX_FILE_BYTES,
    RuleAnswer,
    RuleRequest,
    RuleSet,
    load_rules,
    load_rules_text,
    looks_like_rules,
)

ROOT = Path(__file__).resolve().parents[3]
FALLBACKS = ROOT / "fallbacks"


def issues(text: str, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(PolicyError) as e:
        load_rules_text(text, "r.yaml", base_dir)
    return [str(i) for i in e.value.issues]


def request(
    body: Any = None,
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
    now: float = 1700000000.5,
) -> RuleRequest:
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    return RuleRequest(method, path, headers or {}, raw, now)


def one_rule(respond: str, match: str = "{}") -> RuleSet:
    return load_rules_text(
        f"version: 1\nrules:\n  - name: r\n    match: {match}\n    respond: {respond}\n"
    )


def answer(rules: RuleSet, req: RuleRequest) -> RuleAnswer:
    got = rules.answer(req)
    assert got is not None
    return got


def rendered(body: str, req: RuleRequest) -> Any:
    return json.loads(answer(one_rule(f"{{body: {body}}}"), req).body)


# --- every mistake, at its line and column, in one pass -----------------------------------

BAD = """\
version: 1
rules:
  - name: first
    match:
      methds: [POST]
      json:
        - {field: user, matches: "(free"}
        - {field: user}
        - {field: user, equals: 1, in: [1]}
    respond:
      status: 700
      headers: {Content-Type: text/plain, x-a: b, X-A: c}
      body: {a: "${reqest.id}", b: "x ${path.name}", c: "${now|upper}", d: "${open", e: 2024-01-01}
  - name: first
    respond: {file: responses/missing.json}
  - name: Upper
    respond: {text: hi, body: 1}
  - name: empty
    respond: {}
"""


def test_every_mistake_in_one_pass_with_line_and_column(tmp_path: Path) -> None:
    assert issues(BAD, tmp_path) == [
        "r.yaml:5:7: rules[0].match.methds: unknown key 'methds' (did you mean 'methods'?)",
        "r.yaml:7:34: rules[0].match.json[0].matches: not a valid regular expression: "
        "missing ), unterminated subpattern at position 0",
        "r.yaml:8:11: rules[0].match.json[1]: give one of equals, exists, in or matches",
        "r.yaml:9:40: rules[0].match.json[2].in: "
        "give only one of equals, exists, in or matches (not equals too)",
        "r.yaml:11:15: rules[0].respond.status: must be between 200 and 599",
        "r.yaml:12:17: rules[0].respond.headers.Content-Type: "
        "header 'Content-Type' cannot be set here: set it with content_type",
        "r.yaml:12:51: rules[0].respond.headers.X-A: header 'X-A' is given twice (names ignore case)",
        "r.yaml:13:17: rules[0].respond.body.a: unknown placeholder '${reqest.id}' "
        "(did you mean 'request'?)",
        "r.yaml:13:36: rules[0].respond.body.b: unknown placeholder '${path.name}' "
        "(the path gives path.model)",
        "r.yaml:13:57: rules[0].respond.body.c: unknown filter 'upper' in '${now|upper}' "
        "(the one filter is json)",
        "r.yaml:13:76: rules[0].respond.body.d: '${' at offset 0 is not closed with '}' "
        "(write '$${' for a literal '${')",
        "r.yaml:13:89: rules[0].respond.body.e: not a JSON value (quote it to make it a string)",
        "r.yaml:14:11: rules[1].name: rule name 'first' is already used by rules[0]",
        "r.yaml:15:21: rules[1].respond.file: cannot read 'responses/missing.json': "
        "No such file or directory",
        "r.yaml:16:11: rules[2].name: must start with a lower-case letter or digit and hold "
        "only a-z, 0-9, '.', '_' and '-'",
        "r.yaml:17:21: rules[2].respond.text: give only one of body, text or file (not body too)",
        "r.yaml:19:14: rules[3].respond: give one of body, text or file",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: []\n", "r.yaml:1:1: version: required"),
        ("version: 2\nrules: []\n", "r.yaml:1:10: version: must be 1"),
        ("version: 1\nrules: []\n", "r.yaml:2:8: rules: must not be empty"),
        ("- a\n", "r.yaml:1:1: the top level must be a mapping"),
        ("version: 1\nrules: [\n", "r.yaml:3:1: invalid YAML"),
    ],
)
def test_file_level_mistakes(text: str, expected: str) -> None:
    assert any(i.startswith(expected) for i in issues(text)), issues(text)


def test_template_mistakes_in_text_and_file_answers(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{\n  "a": "${nope}"\n}\n', encoding="utf-8")
    (tmp_path / "broken.json").write_text('{"a": ', encoding="utf-8")
    (tmp_path / "bad.txt").write_text("hello ${header}", encoding="utf-8")
    text = """\
version: 1
rules:
  - {name: a, respond: {text: "x ${request.} y"}}
  - {name: b, respond: {file: bad.json}}
  - {name: c, respond: {file: broken.json}}
  - {name: d, respond: {file: bad.txt, content_type: text/plain}}
  - {name: e, respond: {file: ../outside.json}}
  - {name: f, respond: {body: {a: "${request.a}"}, content_type: json}}
"""
    assert issues(text, tmp_path) == [
        "r.yaml:3:31: rules[0].respond.text: '${request.}' must name a field, "
        "like ${request.model}",
        "r.yaml:4:31: rules[1].respond.file: in 'bad.json' at a: unknown placeholder "
        "'${nope}' (use request.<field>, path.model, header.<name> or now)",
        "r.yaml:5:31: rules[2].respond.file: 'broken.json' is not valid JSON: Expecting value "
        "at line 1, column 7 (set content_type to serve another kind of file)",
        "r.yaml:6:31: rules[3].respond.file: in 'bad.txt': '${header}' must name a header, "
        "like ${header.x-user-id}",
        "r.yaml:7:31: rules[4].respond.file: must be a path inside the rule file's directory",
        "r.yaml:8:66: rules[5].respond.content_type: expected a media type like application/json",
    ]


def test_ambiguous_regexes_are_refused() -> None:
    text = 'version: 1\nrules:\n  - {name: a, match: {json: [{field: x, matches: "[[a]"}]}, respond: {text: x}}\n'
    assert issues(text) == [
        "r.yaml:3:50: rules[0].match.json[0].matches: an ambiguous regular expression: "
        "Possible nested set at position 1 (escape it)"
    ]


def test_file_answers_need_a_base_directory_and_a_small_file(tmp_path: Path) -> None:
    text = "version: 1\nrules:\n  - {name: a, respond: {file: big.json}}\n"
    assert issues(text) == [
        "r.yaml:3:31: rules[0].respond.file: a file answer needs the rules to be loaded from a file"
    ]
    (tmp_path / "big.json").write_bytes(b" " * (MAX_FILE_BYTES + 1))
    assert issues(text, tmp_path) == [
        f"r.yaml:3:31: rules[0].respond.file: 'big.json' is larger than {MAX_FILE_BYTES} bytes"
    ]


def test_an_empty_answer_status_takes_no_body() -> None:
    text = "version: 1\nrules:\n  - {name: a, respond: {status: 204, body: {}}}\n"
    assert issues(text) == [
        'r.yaml:3:33: rules[0].respond.status: a 204 answer has no body: respond with text: ""'
    ]
    empty = one_rule('{status: 204, text: ""}')
    assert answer(empty, request()).body == b""


def test_an_unreadable_rule_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as e:
        load_rules(tmp_path / "nope.yaml")
    assert "cannot read the file" in str(e.value)


# --- matching -----------------------------------------------------------------------------


def matches(match: str, req: RuleRequest) -> bool:
    return one_rule("{text: ok}", match).answer(req) is not None


KSERVE = "/v2/models/classifier/infer"


@pytest.mark.parametrize(
    ("match", "req", "expected"),
    [
        ("{}", request(method="GET", path="/anything"), True),
        ("{methods: [post]}", request(method="post"), True),
        ("{methods: [POST]}", request(method="GET"), False),
        ("{path: /v1/chat/completions}", request(), True),
        ("{path: /v1/chat}", request(), False),
        ("{path_prefix: /v1/}", request(), True),
        ("{path_prefix: /v2/}", request(), False),
        ("{model: classifier}", request(path=KSERVE), True),
        ("{model: classifier}", request(path="/v2/models/other/infer"), False),
        ("{model: gpt}", request({"model": "gpt"}), True),
        ("{model: gpt}", request({"model": "gpt-4"}), False),
        ("{model: gpt}", request({"model": "gpt"}, path="/v2/models/x/infer"), False),
        ("{headers: {X-Tenant: free}}", request(headers={"x-tenant": "free"}), True),
        ("{headers: {x-tenant: free}}", request(headers={"x-tenant": "paid"}), False),
        ("{headers: {x-tenant: free}}", request(), False),
    ],
)
def test_each_request_condition(match: str, req: RuleRequest, expected: bool) -> None:
    assert matches(match, req) is expected


BODY = {"stream": True, "n": 1, "model": "gpt-small", "user": "free-7", "inputs": [{"name": "IN"}]}


@pytest.mark.parametrize(
    ("predicate", "expected"),
    [
        ("{field: stream, equals: true}", True),
        ("{field: stream, equals: false}", False),
        ("{field: n, equals: 1.0}", True),  # JSON numbers compare by value
        ("{field: n, equals: true}", False),  # ... but true is not 1
        ("{field: stream, equals: 1}", False),
        ("{field: missing, equals: null}", False),
        ("{field: inputs, equals: [{name: IN}]}", True),
        ("{field: inputs.0.name, exists: true}", True),
        ("{field: inputs.1.name, exists: true}", False),
        ("{field: inputs.name, exists: true}", False),  # a list is indexed by numbers only
        ("{field: missing, exists: false}", True),
        ("{field: stream, exists: false}", False),
        ("{field: model, in: [gpt-small, gpt-large]}", True),
        ("{field: model, in: [gpt-large]}", False),
        ('{field: user, matches: "^free-"}', True),
        ('{field: user, matches: "^paid-"}', False),
        ('{field: n, matches: "1"}', False),  # a regex only matches strings
        ('{field: missing, matches: ".*"}', False),
    ],
)
def test_each_json_predicate(predicate: str, expected: bool) -> None:
    assert matches(f"{{json: [{predicate}]}}", request(BODY)) is expected


def test_all_conditions_must_hold() -> None:
    match = "{methods: [POST], json: [{field: stream, equals: true}, {field: n, equals: 2}]}"
    assert not matches(match, request(BODY))
    assert matches(match, request({**BODY, "n": 2}))


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"n": NaN}', b"\xff\xfe", b"[" * 100000])
def test_invalid_request_json_fails_json_predicates_and_leaves_placeholders_missing(
    body: bytes,
) -> None:
    assert not matches("{json: [{field: n, exists: true}]}", request(body))
    assert matches("{json: [{field: n, exists: false}]}", request(body))
    assert rendered('{n: "${request.n}", s: "n=${request.n}"}', request(body)) == {
        "n": None,
        "s": "n=",
    }


def test_kserve_binary_requests_read_only_the_json_header() -> None:
    header = json.dumps({"id": "b1", "inputs": [{"name": "IN"}]}).encode()
    req = request(
        header + b"\x00\x01\x02\x03",
        path=KSERVE,
        headers={"inference-header-content-length": str(len(header))},
    )
    assert rendered('{id: "${request.id}"}', req) == {"id": "b1"}


def test_first_matching_rule_wins_in_file_order() -> None:
    rules = load_rules_text(
        """\
version: 1
rules:
  - {name: streams, match: {json: [{field: stream, equals: true}]}, respond: {text: stream}}
  - {name: chat, match: {path: /v1/chat/completions}, respond: {text: chat}}
  - {name: any, respond: {text: any}}
"""
    )
    assert rules.names == ("streams", "chat", "any")
    assert answer(rules, request(BODY)).rule == "streams"
    assert answer(rules, request({"stream": False})).rule == "chat"
    assert answer(rules, request(path="/other")).rule == "any"


def test_no_rule_matching_is_none() -> None:
    assert one_rule("{text: x}", "{path: /only}").answer(request()) is None


# --- answers and templates ----------------------------------------------------------------


def test_answer_status_headers_and_default_content_types() -> None:
    got = answer(one_rule("{status: 503, headers: {X-Reason: degraded}, body: {a: 1}}"), request())
    assert (got.status, got.rule, got.body) == (503, "r", b'{"a":1}')
    assert got.headers == (("content-type", "application/json"), ("x-reason", "degraded"))
    text = answer(one_rule("{text: hi}"), request())
    assert text.headers == (("content-type", "text/plain; charset=utf-8"),)
    sse = answer(one_rule("{text: hi, content_type: text/event-stream}"), request())
    assert sse.headers == (("content-type", "text/event-stream"),)


def test_an_exact_placeholder_keeps_the_json_type() -> None:
    body = {"id": "abc", "n": 3, "f": 0.5, "ok": False, "tags": ["a"], "obj": {"k": None}}
    template = '{id: "${request.id}", n: "${request.n}", f: "${request.f}", ok: "${request.ok}", tags: "${request.tags}", obj: "${request.obj}", now: "${now}"}'
    assert rendered(template, request(body)) == {**body, "now": 1700000000}


def test_a_placeholder_inside_a_longer_string_is_text() -> None:
    body = {"id": "abc", "n": 3, "ok": True, "tags": ["a", 1], "quote": 'say "hi"\n'}
    template = '{s: "id=${request.id} n=${request.n} ok=${request.ok} tags=${request.tags} q=${request.quote}"}'
    assert rendered(template, request(body)) == {
        "s": 'id=abc n=3 ok=true tags=["a",1] q=say "hi"\n'
    }


def test_missing_values_are_null_alone_and_empty_inside_text() -> None:
    req = request({"present": None}, path="/v1/chat/completions")
    template = '{a: "${request.absent}", b: "${path.model}", c: "${header.x-none}", d: "[${request.absent}${request.present}${header.x-none}]", e: "${request.present}"}'
    assert rendered(template, req) == {"a": None, "b": None, "c": None, "d": "[]", "e": None}


def test_path_header_and_now_placeholders() -> None:
    req = request(path=KSERVE, headers={"x-user-id": "u1"}, now=12.9)
    template = '{m: "${path.model}", u: "${header.X-User-Id}", t: "${now}", s: "at ${now}"}'
    assert rendered(template, req) == {"m": "classifier", "u": "u1", "t": 12, "s": "at 12"}


def test_json_filter_and_literal_dollar_brace() -> None:
    template = '{raw: "${request.args|json}", lit: "$${request.id} costs $5", missing: "${request.x|json}"}'
    req = request({"args": {"a": [1]}, "id": "i"})
    assert rendered(template, req) == {
        "raw": '{"a":[1]}',
        "lit": "${request.id} costs $5",
        "missing": "null",
    }


def test_text_templates_interpolate_and_json_filter_escapes() -> None:
    rules = one_rule(
        '{text: "data: {\\"model\\":${request.model|json},\\"t\\":${now}} user=${request.user}\\n\\n"}'
    )
    got = answer(rules, request({"model": 'a"b', "user": 7}, now=5))
    assert got.body == b'data: {"model":"a\\"b","t":5} user=7\n\n'
    event = json.loads(got.body.decode().split("\n")[0].split(" user=")[0].removeprefix("data: "))
    assert event == {"model": 'a"b', "t": 5}


def test_file_answers_are_templates_read_at_load_time(tmp_path: Path) -> None:
    (tmp_path / "responses").mkdir()
    (tmp_path / "responses" / "a.json").write_text(
        '{"model": "${path.model}", "n": 1}', encoding="utf-8"
    )
    (tmp_path / "responses" / "b.txt").write_text("hi ${header.x-user}", encoding="utf-8")
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(
        """\
version: 1
rules:
  - {name: a, match: {path_prefix: /v2/}, respond: {file: responses/a.json}}
  - {name: b, respond: {file: responses/b.txt, content_type: text/plain}}
""",
        encoding="utf-8",
    )
    rules = load_rules(rule_file)
    assert rules.source == str(rule_file)
    (tmp_path / "responses" / "a.json").unlink()  # read once, at load time
    assert json.loads(answer(rules, request(path=KSERVE)).body) == {"model": "classifier", "n": 1}
    assert answer(rules, request(headers={"x-user": "u"})).body == b"hi u"


def test_a_non_utf8_request_string_still_renders() -> None:
    # "\ud800" is valid JSON but has no UTF-8 form; the answer must still be produced.
    got = answer(one_rule('{text: "${request.s}"}'), request(b'{"s": "\\ud800"}'))
    assert got.body == b"?"


# --- telling rule files from policies -----------------------------------------------------


def test_looks_like_rules() -> None:
    assert looks_like_rules((FALLBACKS / "kserve-v2.yaml").read_text(encoding="utf-8"))
    assert looks_like_rules('version: 1\n"rules":\n  - name: a\n')
    assert not looks_like_rules((ROOT / "policies" / "reference.yaml").read_text(encoding="utf-8"))
    assert not looks_like_rules("version: 1\nroutes: []\nrules: []\n")
    assert not looks_like_rules("version: 1\n  rules: []\n")  # not at the top level


# --- the shipped examples -----------------------------------------------------------------


def test_shipped_examples_load() -> None:
    for path in sorted(FALLBACKS.glob("*.yaml")):
        assert load_rules(path).rules, path


def test_kserve_example_answers_a_valid_infer_response() -> None:
    rules = load_rules(FALLBACKS / "kserve-v2.yaml")
    body = {"id": "req-1", "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}  # fmt: skip
    got = answer(rules, request(body, path=KSERVE))
    assert got.status == 200
    assert ("x-tailguard-reason", "degraded") in got.headers
    result = triton_http.InferResult.from_response_body(got.body)
    assert result.as_numpy("OUTPUT0").tolist() == [[0.0]]
    response = result.get_response()
    assert (response["id"], response["model_name"]) == ("req-1", "classifier")
    other = answer(rules, request(method="GET", path="/v2/models/classifier"))
    assert other.status == 503
    assert json.loads(other.body)["error"].startswith("model 'classifier'")


def test_openai_example_answers_chat_completions() -> None:
    rules = load_rules(FALLBACKS / "openai-chat.yaml")
    req = {"model": "gpt-small", "messages": [{"role": "user", "content": "hi"}]}
    got = answer(rules, request(req, now=1700000000.9))
    completion = json.loads(got.body)
    assert completion["object"] == "chat.completion"
    assert completion["created"] == 1700000000
    assert completion["model"] == "gpt-small"
    assert isinstance(completion["id"], str) and completion["id"]
    choice = completion["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "degraded" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"

    stream = answer(rules, request({**req, "stream": True, "model": 'odd "name"'}))
    assert ("content-type", "text/event-stream") in stream.headers
    events = stream.body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    (chunk_event,) = events[:-2]
    chunk = json.loads(chunk_event.removeprefix("data: "))
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["model"] == 'odd "name"'
    assert chunk["choices"][0]["finish_reason"] == "stop"
    assert rules.answer(request(req, path="/v1/embeddings")) is None


# --- robustness ---------------------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(text: str) -> None:
    try:
        load_rules_text(text, "f.yaml", FALLBACKS)
    except PolicyError as e:
        assert e.issues
        assert all(i.file == "f.yaml" and i.line >= 1 and i.column >= 1 for i in e.issues)


@FUZZ
@given(st.text(max_size=300))
def test_any_text_loads_or_raises_policy_error(text: str) -> None:
    check(text)


YAML_BITS = st.sampled_from(
    [*":-[]{},&*!|>'\"#\n\n  ", "version: 1\n", "rules:\n", "  - ", "name: a", "match: ",
     "respond: ", "body: ", "text: ", "file: ", "json: ", "field: ", "matches: ", "equals: ",
     "in: ", "exists: ", "status: ", "headers: ", "${", "}", "request.", "now", "..", "responses/",
     "kserve-unavailable.json", "("]
)  # fmt: skip


@FUZZ
@given(st.lists(YAML_BITS, max_size=60).map("".join))
def test_rule_looking_text_loads_or_raises_policy_error(text: str) -> None:
    check(text)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)  # fmt: skip
EXAMPLES = [load_rules(p) for p in sorted(FALLBACKS.glob("*.yaml"))]


@FUZZ
@given(
    st.one_of(JSON_VALUES.map(lambda v: json.dumps(v).encode()), st.binary(max_size=50)),
    st.sampled_from([KSERVE, "/v1/chat/completions", "/v2/", "/"]),
    st.dictionaries(st.sampled_from(["x-a", "inference-header-content-length"]), st.text(max_size=4)),
)  # fmt: skip
def test_answers_never_raise_and_json_answers_parse(
    body: bytes, path: str, headers: dict[str, str]
) -> None:
    for rules in EXAMPLES:
        got = rules.answer(RuleRequest("POST", path, headers, body, 1.0))
        if got is not None and ("content-type", "application/json") in got.headers:
            json.loads(got.body)


def test_only_ascii_digits_index_lists() -> None:
    rules = one_rule(
        '{body: {a: "${request.x.²}", b: "${request.x.0}"}}',
        "{json: [{field: x.², exists: false}]}",
    )
    got = answer(rules, request({"x": ["first"]}, headers={"inference-header-content-length": "²"}))
    assert json.loads(got.body) == {"a": None, "b": "first"}
