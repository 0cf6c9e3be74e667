"""Policy loading: every mistake reported at its line and column, in one pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from gateway.errors import PolicyError
from gateway.policy.load import (
    ModelLoader,
    YamlDocument,
    format_path,
    load_policy,
    load_policy_text,
    load_yaml_model,
    locate,
    read_yaml,
)
from gateway.policy.model import FrozenModel, HedgeModel, PolicyModel, checks_failed

GOOD = """\
version: 1
backends:
  a:
    endpoints: [{url: http://10.0.0.1:8000}]
routes:
  - name: r
    match: {path_prefix: /}
    split: [{backend: a, weight: 100}]
"""


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        load_policy_text(text, "p.yaml")
    return [str(i) for i in e.value.issues]


def with_route(extra: str, route: str = "") -> str:
    """GOOD with more keys in the route (`extra`) or a second route."""
    return GOOD + "".join(f"    {line}\n" for line in extra.splitlines()) + route


# --- one pass, exact positions ------------------------------------------------------------

SEVERAL = """\
version: 1
gateway:
  listen: 127.0.0.1:8080
  admin_listen: 127.0.0.1:8080
backends:
  a:
    protocol: kserv-v2
    endpoints:
      - {url: http://10.0.0.1:8000, weight: 0}
    circuit_breker: {}
  b:
    endpoints: [{url: http://10.0.0.2:8000}]
    locality: {priority: [mars]}
routes:
  - name: r
    match: {path_prefix: /}
    split: [{backend: a, weight: 150}, {backend: nope, weight: 5}]
    timeout: 5
    retires: {}
  - name: r
    match: {}
    split: [{backend: b, weight: 1}]
    admission: {queue: -1}
"""


def test_every_mistake_in_one_pass_with_line_and_column() -> None:
    assert issues(SEVERAL) == [
        "p.yaml:4:17: gateway.admin_listen: must differ from listen (port 8080)",
        "p.yaml:7:15: backends.a.protocol: must be one of 'kserve-v2', 'openai' or 'http' "
        "(did you mean 'kserve-v2'?)",
        "p.yaml:9:45: backends.a.endpoints[0].weight: must be between 1 and 1000",
        "p.yaml:10:5: backends.a.circuit_breker: unknown key 'circuit_breker' "
        "(did you mean 'circuit_breaker'?)",
        "p.yaml:13:27: backends.b.locality.priority[0]: region 'mars' has no endpoints in "
        "this backend",
        "p.yaml:17:34: routes[0].split[0].weight: must be between 0 and 100",
        "p.yaml:17:50: routes[0].split[1].backend: backend 'nope' is not defined in backends",
        "p.yaml:18:14: routes[0].timeout: expected a duration like 250ms or 2s",
        "p.yaml:19:5: routes[0].retires: unknown key 'retires' (did you mean 'retries'?)",
        "p.yaml:20:11: routes[1].name: route name 'r' is already used by routes[0]",
        "p.yaml:21:12: routes[1].match: needs at least one of path_prefix, path, model, "
        "headers or methods",
        "p.yaml:23:16: routes[1].admission.max_concurrency: required",
        "p.yaml:23:24: routes[1].admission.queue: must be at least 0",
    ]


def test_the_error_carries_the_issues_and_a_readable_message() -> None:
    with pytest.raises(PolicyError) as e:
        load_policy_text(SEVERAL, "p.yaml")
    assert e.value.status == 400
    assert str(e.value).splitlines() == [str(i) for i in e.value.issues]
    first = e.value.issues[0]
    assert (first.file, first.line, first.column, first.path) == (
        "p.yaml",
        4,
        17,
        "gateway.admin_listen",
    )


def test_a_valid_policy_loads() -> None:
    policy = load_policy_text(GOOD)
    assert isinstance(policy, PolicyModel)
    assert policy.routes[0].split[0].weight == 100


# --- where each kind of issue points --------------------------------------------------------


def test_unknown_key_points_at_the_key_and_suggests_the_closest() -> None:
    assert issues(with_route("retries: {atempts: 2}")) == [
        "p.yaml:9:15: routes[0].retries.atempts: unknown key 'atempts' (did you mean 'attempts'?)"
    ]
    assert issues(GOOD + "canary: {}\n") == ["p.yaml:9:1: canary: unknown key 'canary'"]


def test_missing_key_points_at_the_parent_mapping() -> None:
    text = GOOD.replace("  - name: r\n", "  - \n")
    assert issues(text) == ["p.yaml:7:5: routes[0].name: required"]
    assert issues("version: 1\n") == [
        "p.yaml:1:1: backends: required",
        "p.yaml:1:1: routes: required",
    ]


def test_bad_value_points_at_the_value() -> None:
    assert issues(with_route("retries:\n  budget: 0.2")) == [
        "p.yaml:10:15: routes[0].retries.budget: expected a percentage like 20%"
    ]


def test_key_errors_of_mappings_point_at_the_key() -> None:
    text = GOOD.replace("  a:\n", "  a b:\n").replace("backend: a,", "backend: a b,")
    assert issues(text) == [
        "p.yaml:3:3: backends.a b: must start with a letter or digit and hold only letters, "
        "digits, '_', '.' and '-'",
        "p.yaml:8:23: routes[0].split[0].backend: must start with a letter or digit and hold "
        "only letters, digits, '_', '.' and '-'",
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("timeout: 0s", "p.yaml:9:14: routes[0].timeout: must be more than 0"),
        ("timeout: 2", "p.yaml:9:14: routes[0].timeout: expected a duration like 250ms or 2s"),
        ("sticky: {header: 'x user'}",
         "p.yaml:9:22: routes[0].sticky.header: 'x user' is not a valid HTTP header name"),
        ("retries: {attempts: 2.0}", "p.yaml:9:25: routes[0].retries.attempts: expected an integer"),
        ("retries: {attempts: true}",
         "p.yaml:9:25: routes[0].retries.attempts: expected an integer"),
        ("retries: {attempts: 11}",
         "p.yaml:9:25: routes[0].retries.attempts: must be between 1 and 10"),
        ("retries: {non_idempotent: 1}",
         "p.yaml:9:31: routes[0].retries.non_idempotent: expected true or false"),
        ("retries: {on: []}", "p.yaml:9:19: routes[0].retries.on: must not be empty"),
        ("retries: {on: 5xx}", "p.yaml:9:19: routes[0].retries.on: expected a list"),
        ("retries: {on: [5xx, bogus]}",
         "p.yaml:9:25: routes[0].retries.on[1]: unknown condition 'bogus' "
         "(one of: connect-failure, reset, timeout, 5xx, 429)"),
        ("retries: {on: [resett]}",
         "p.yaml:9:20: routes[0].retries.on[0]: unknown condition 'resett' "
         "(did you mean 'reset'?)"),
        ("retries: {backoff: {base: 1s, max: 10ms}}",
         "p.yaml:9:40: routes[0].retries.backoff.max: must be at least base"),
        ("hedging: {delay: 5}",
         "p.yaml:9:22: routes[0].hedging.delay: expected adaptive, a duration like 50ms "
         "or a latency percentile like p95"),
        ("hedging: {delay: p100}",
         "p.yaml:9:22: routes[0].hedging.delay: must be a percentile from p50 to below p100, "
         "like p95 or p99.9"),
        ("hedging: {max_extra: 4}",
         "p.yaml:9:26: routes[0].hedging.max_extra: must be between 1 and 3"),
        ("hedging: {min_delay: 2s, max_delay: 1s}",
         "p.yaml:9:41: routes[0].hedging.max_delay: must be at least min_delay"),
        ("admission: {max_concurrency: 0}",
         "p.yaml:9:34: routes[0].admission.max_concurrency: must be at least 1"),
        ("admission: {max_concurrency: 1, priority_header: null, adaptive: maybe}",
         "p.yaml:9:70: routes[0].admission.adaptive: expected true or false"),
        ("match: {path_prefix: v2}",
         "p.yaml:7:26: routes[0].match.path_prefix: expected a path starting with '/', "
         "without spaces or '?'"),
    ],
)  # fmt: skip
def test_value_messages(extra: str, expected: str) -> None:
    if extra.startswith("match:"):
        text = GOOD.replace("    match: {path_prefix: /}\n", f"    {extra}\n")
    else:
        text = with_route(extra)
    assert issues(text) == [expected]


@pytest.mark.parametrize(
    ("gateway", "expected"),
    [
        ("{max_body: 0}", "p.yaml:1:21: gateway.max_body: must be at least 1 byte"),
        ("{max_body: 4 mebibytes}",
         "p.yaml:1:21: gateway.max_body: expected a size like 4MiB or 512KiB, "
         "or a number of bytes"),
        ("{listen: 8080}",
         "p.yaml:1:19: gateway.listen: expected HOST:PORT like 127.0.0.1:8080, :8080 "
         "or [::1]:8080"),
        ("{listen: '::1:8080'}",
         "p.yaml:1:19: gateway.listen: write IPv6 addresses in brackets, like [::1]:8080"),
        ("{listen: ':70000'}",
         "p.yaml:1:19: gateway.listen: the port must be between 0 and 65535"),
        ("{listen: ':9090'}", "p.yaml:1:10: gateway.admin_listen: must differ from listen "
         "(port 9090)"),
        ("{max_concurrency: 0}", "p.yaml:1:28: gateway.max_concurrency: must be at least 1"),
        ("{region: ''}", "p.yaml:1:19: gateway.region: must not be empty"),
        ("{drain_timeout: 10}",
         "p.yaml:1:26: gateway.drain_timeout: expected a duration like 250ms or 2s"),
    ],
)  # fmt: skip
def test_gateway_messages(gateway: str, expected: str) -> None:
    # the gateway goes on line 1, so that columns are easy to read
    text = f"gateway: {gateway}\n" + GOOD
    assert issues(text) == [expected]


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("protocol: grpc",
         "p.yaml:4:15: backends.a.protocol: must be one of 'kserve-v2', 'openai' or 'http'"),
        ("endpoints: []", "p.yaml:4:16: backends.a.endpoints: must not be empty"),
        ("pool: {max_connections: 0}",
         "p.yaml:4:29: backends.a.pool.max_connections: must be at least 1"),
        ("health: {expect: [200, 700]}",
         "p.yaml:4:28: backends.a.health.expect[1]: must be between 100 and 599"),
        ("health: {expect: []}", "p.yaml:4:22: backends.a.health.expect: must not be empty"),
        ("health: {jitter: 100%}",
         "p.yaml:4:22: backends.a.health.jitter: must be at least 0% and less than 100%"),
        ("health: {path: health}",
         "p.yaml:4:20: backends.a.health.path: expected a path starting with '/', "
         "without spaces or '?'"),
        ("health: {unhealthy_threshold: 0}",
         "p.yaml:4:35: backends.a.health.unhealthy_threshold: must be at least 1"),
        ("outlier_detection: {base_ejection: 60s, max_ejection: 30s}",
         "p.yaml:4:59: backends.a.outlier_detection.max_ejection: must be at least base_ejection"),
        ("outlier_detection: {failure_percentage: 120%}",
         "p.yaml:4:45: backends.a.outlier_detection.failure_percentage: must be between 0% and 100%"),
        ("outlier_detection: {max_ejection_percent: 50}",
         "p.yaml:4:47: backends.a.outlier_detection.max_ejection_percent: expected a percentage "
         "like 20%"),
        ("circuit_breaker: {window: 5s, window_calls: 10}",
         "p.yaml:4:49: backends.a.circuit_breaker.window_calls: set either window (time-based) "
         "or window_calls, not both"),
        ("circuit_breaker: {failure_rate: 0%}",
         "p.yaml:4:37: backends.a.circuit_breaker.failure_rate: must be more than 0% and at most "
         "100%"),
        ("circuit_breaker: {slow_call: {rate: 50%}}",
         "p.yaml:4:34: backends.a.circuit_breaker.slow_call.duration: required"),
        ("locality: {overprovisioning: 0.5}",
         "p.yaml:4:34: backends.a.locality.overprovisioning: must be between 1 and 1000000"),
        ("locality: {priority: [local, local]}",
         "p.yaml:4:34: backends.a.locality.priority[1]: region 'local' is listed twice"),
    ],
)  # fmt: skip
def test_backend_messages(backend: str, expected: str) -> None:
    # the key under test goes on line 4, before the endpoints (unless it is the endpoints)
    endpoints = "    endpoints: [{url: http://10.0.0.1:8000}]\n"
    keep = "" if backend.startswith("endpoints") else endpoints
    assert issues(GOOD.replace(endpoints, f"    {backend}\n{keep}")) == [expected]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://10.0.0.1", "expected an http(s) URL like http://10.0.0.1:8000 or "
         "https://host:443/base"),
        ("http://", "expected an http(s) URL like http://10.0.0.1:8000 or https://host:443/base"),
        ("http://h:99999", "the URL's port must be a number between 1 and 65535"),
        ("http://h:0", "the URL's port must be a number between 1 and 65535"),
        ("http://[::1", "expected an http(s) URL like http://10.0.0.1:8000 or https://host:443/base"),
        ("http://h:80/x?y=1", "a backend URL has no query or fragment"),
        ("http://h:80/#top", "a backend URL has no query or fragment"),
        ("http://user:secret@h:80", "credentials in the URL are not allowed (URLs are logged)"),
    ],
)  # fmt: skip
def test_endpoint_urls(url: str, message: str) -> None:
    text = GOOD.replace("{url: http://10.0.0.1:8000}", f"{{url: '{url}'}}")
    assert issues(text) == [f"p.yaml:4:23: backends.a.endpoints[0].url: {message}"]


def test_match_header_names_ignore_case() -> None:
    text = GOOD.replace("{path_prefix: /}", "{headers: {X-Tenant: a, x-tenant: b}}")
    assert issues(text) == [
        "p.yaml:7:36: routes[0].match.headers.x-tenant: header 'x-tenant' is given twice "
        "(names ignore case)"
    ]


def test_endpoint_urls_accept_https_base_paths_and_default_ports() -> None:
    for url in ("https://api.example.com/v1", "'http://[::1]:8000'", "http://h:8000/base/"):
        load_policy_text(GOOD.replace("http://10.0.0.1:8000", url))


def test_version() -> None:
    for bad in ("2", "'1'", "true", "1.0"):
        text = GOOD.replace("version: 1", f"version: {bad}")
        assert issues(text) == [
            "p.yaml:1:10: version: must be 1 (this gateway reads policy language version 1)"
        ]


def test_state_store() -> None:
    text = GOOD + "state: {store: redis}\n"
    assert issues(text) == ["p.yaml:9:8: state.url: required when store is redis"]
    text = GOOD + "state: {store: redis, url: 'http://x'}\n"
    assert issues(text) == [
        "p.yaml:9:28: state.url: expected a Redis URL like redis://127.0.0.1:6379/0, "
        "redis+sentinel://s1:26379,s2:26379/mymaster or redis+cluster://n1:6379,n2:6379"
    ]
    text = GOOD + "state: {store: redis, url: 'redis+sentinel://s1,s2:26379'}\n"
    assert issues(text) == [
        "p.yaml:9:28: state.url: name the master: redis+sentinel://HOST:PORT,…/SERVICE[/DB]"
    ]
    policy = load_policy_text(GOOD + "state: {store: redis, url: 'redis://r:6379/0'}\n")
    assert policy.state.url == "redis://r:6379/0"


# --- cross-checks -----------------------------------------------------------------------------


def test_split_backend_must_be_defined_with_a_suggestion() -> None:
    assert issues(GOOD.replace("backend: a,", "backend: A,")) == [
        "p.yaml:8:23: routes[0].split[0].backend: backend 'A' is not defined in backends "
        "(did you mean 'a'?)"
    ]


def test_split_names_a_backend_once_and_weights_add_up() -> None:
    text = GOOD.replace(
        "split: [{backend: a, weight: 100}]",
        "split: [{backend: a, weight: 0}, {backend: a, weight: 0}]",
    )
    assert issues(text) == [
        "p.yaml:8:12: routes[0].split: weights must add up to more than 0",
        "p.yaml:8:48: routes[0].split[1].backend: backend 'a' appears twice in this split",
    ]


def test_sticky_needs_a_split_entry_with_weight() -> None:
    text = with_route("sticky: {header: X-User}").replace("weight: 100", "weight: 0")
    assert issues(text) == ["p.yaml:8:12: routes[0].split: weights must add up to more than 0"]
    policy = load_policy_text(with_route("sticky: {header: X-User}"))
    assert policy.routes[0].sticky is not None
    assert policy.routes[0].sticky.header == "x-user"


def test_per_try_timeout_fits_in_the_route_timeout() -> None:
    assert issues(with_route("timeout: 1s\nretries: {per_try_timeout: 2s}")) == [
        "p.yaml:10:32: routes[0].retries.per_try_timeout: must not be longer than the route's "
        "timeout"
    ]
    # the default route timeout is 30 s
    assert issues(with_route("retries: {per_try_timeout: 31s}")) == [
        "p.yaml:9:32: routes[0].retries.per_try_timeout: must not be longer than the route's "
        "timeout"
    ]


def test_route_names_are_unique() -> None:
    second = "  - {name: r, match: {path: /x}, split: [{backend: a, weight: 1}]}\n"
    assert issues(GOOD + second) == [
        "p.yaml:9:12: routes[1].name: route name 'r' is already used by routes[0]"
    ]


def test_locality_priority_regions_need_endpoints() -> None:
    text = GOOD.replace(
        "    endpoints: [{url: http://10.0.0.1:8000}]\n",
        "    endpoints: [{url: http://10.0.0.1:8000}, {url: http://10.1.0.1:8000, region: eu}]\n"
        "    locality: {priority: [eu, local, us]}\n",
    )
    assert issues(text) == [
        "p.yaml:5:38: backends.a.locality.priority[2]: region 'us' has no endpoints in this backend"
    ]
    # an endpoint without a region is in the gateway's region
    load_policy_text("gateway: {region: us}\n" + text.replace("eu, local, us", "eu, us"))


def test_endpoint_urls_are_unique_in_a_backend() -> None:
    text = GOOD.replace(
        "[{url: http://10.0.0.1:8000}]",
        "[{url: http://10.0.0.1:8000}, {url: http://10.0.0.1:8000/}]",
    )
    assert issues(text) == [
        "p.yaml:4:52: backends.a.endpoints[1].url: endpoint 'http://10.0.0.1:8000/' is listed "
        "twice in this backend"
    ]


def test_cross_checks_run_in_the_same_pass_as_schema_errors() -> None:
    text = GOOD.replace("backend: a,", "backend: b,").replace("path_prefix: /", "path_prefix: x")
    assert issues(text) == [
        "p.yaml:7:26: routes[0].match.path_prefix: expected a path starting with '/', without "
        "spaces or '?'",
        "p.yaml:8:23: routes[0].split[0].backend: backend 'b' is not defined in backends",
    ]


# --- YAML itself ------------------------------------------------------------------------------


def test_duplicate_keys_are_errors_and_the_first_stays() -> None:
    assert issues("version: 1\nversion: 2\n" + GOOD.removeprefix("version: 1\n")) == [
        "p.yaml:2:1: version: duplicate key 'version' (first at line 1)"
    ]
    text = GOOD.replace("{backend: a, weight: 100}", "{backend: a, weight: 100, weight: 5}")
    assert issues(text) == [
        "p.yaml:8:39: routes[0].split[0].weight: duplicate key 'weight' (first at line 8)"
    ]


def test_yaml_syntax_error_position() -> None:
    assert issues("version: [1\n") == [
        "p.yaml:2:1: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 1, column 10)"
    ]
    assert issues("a: b\n\tc: d\n") == [
        "p.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token "
        "(while scanning for the next token)"
    ]
    assert issues("version: 1\n---\nversion: 1\n") == [
        "p.yaml:2:1: invalid YAML: the file must hold one YAML document; a second one starts here"
    ]
    assert issues("version: 1\nx: \x01\n") == [
        "p.yaml:2:4: invalid YAML: character '\\x01' is not allowed"
    ]


def test_top_level_must_be_a_mapping() -> None:
    assert issues("- 1\n- 2\n") == [
        "p.yaml:1:1: the top level must be a mapping of keys to values, not a list"
    ]
    assert issues("# a comment\nhello\n") == [
        "p.yaml:2:1: the top level must be a mapping of keys to values, not a single value"
    ]


def test_an_empty_file_lacks_the_required_keys() -> None:
    assert issues("# nothing yet\n") == [
        "p.yaml:1:1: backends: required",
        "p.yaml:1:1: routes: required",
        "p.yaml:1:1: version: required",
    ]


def test_keys_are_read_as_written() -> None:
    # YAML 1.1 reads the key `on` as the boolean True; a policy means the word.
    policy = load_policy_text(with_route("retries: {on: [5xx, 429]}"))
    assert policy.routes[0].retries is not None
    assert policy.routes[0].retries.on == ("5xx", "429")
    # and `yes:` is not a boolean either
    assert issues(GOOD + "yes: 1\n") == ["p.yaml:9:1: yes: unknown key 'yes'"]


def test_anchors_aliases_and_merge_keys() -> None:
    text = """\
version: 1
backends:
  a:
    endpoints: [{url: http://10.0.0.1:8000}]
    pool: &pool {max_connections: 8}
  b:
    <<: {protocol: openai, endpoints: [{url: http://10.0.0.2:8000}]}
    protocol: kserve-v2
    pool: *pool
routes:
  - {name: r, match: {path: /}, split: [{backend: a, weight: 1}, {backend: b, weight: 1}]}
"""
    policy = load_policy_text(text)
    assert policy.backends["b"].pool.max_connections == 8
    assert policy.backends["b"].protocol == "kserve-v2"  # own keys win over merged ones
    assert policy.backends["b"].endpoints[0].url == "http://10.0.0.2:8000"


def test_merged_values_are_located_where_they_are_written() -> None:
    text = """\
version: 1
backends:
  a:
    <<: {protocol: grcp}
    endpoints: [{url: http://10.0.0.1:8000}]
routes:
  - {name: r, match: {path: /}, split: [{backend: a, weight: 1}]}
"""
    assert issues(text) == [
        "p.yaml:4:20: backends.a.protocol: must be one of 'kserve-v2', 'openai' or 'http'"
    ]


def test_recursive_aliases_and_unknown_tags_are_issues() -> None:
    assert "p.yaml:1:4: a[1]: an alias refers to a node that contains it" in issues(
        "a: &x [1, *x]\n"
    )
    assert "p.yaml:1:4: a: unsupported YAML tag '!thing'" in issues("a: !thing {b: 1}\n")
    assert (
        "p.yaml:1:4: a: cannot read this value: could not determine a constructor for the "
        "tag '!thing'" in issues("a: !thing b\n")
    )


def test_alias_expansion_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 7):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    assert issues("\n".join(lines) + "\n") == [
        "p.yaml:1:1: the document is too large (more than 100000 nodes with aliases)"
    ]


def test_deep_nesting_is_an_issue() -> None:
    assert issues("a: " + "[" * 80 + "]" * 80 + "\n") == [
        "p.yaml:1:1: the document nests deeper than 64 levels"
    ]
    assert issues("a: " + "[" * 5000 + "]" * 5000 + "\n")[0].startswith("p.yaml:1:1:")


# --- files ------------------------------------------------------------------------------------


def test_load_policy_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD, encoding="utf-8")
    assert load_policy(path).routes[0].name == "r"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())  # a BOM is fine
    assert load_policy(str(path)).routes[0].name == "r"


def test_unreadable_files_are_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as e:
        load_policy(tmp_path / "missing.yaml")
    assert [str(i) for i in e.value.issues] == [
        f"{tmp_path / 'missing.yaml'}:1:1: cannot read the file: No such file or directory"
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"version: 1\nx: \xff\n")
    with pytest.raises(PolicyError) as e:
        load_policy(bad)
    assert [str(i) for i in e.value.issues] == [f"{bad}:2:4: not UTF-8 text (byte 0xff)"]


# --- the generic machinery, as rule files will use it ---------------------------------------


class Rule(FrozenModel):
    when: str
    status: int = Field(default=200, ge=100, le=599)


class Rules(FrozenModel):
    rules: tuple[Rule, ...]
    default: str | None = None


def test_load_yaml_model_is_generic_with_extra_checks() -> None:
    def checks(data: object, model: Rules | None) -> list[tuple[tuple[str | int, ...], str]]:
        seen = set()
        out: list[tuple[tuple[str | int, ...], str]] = []
        rules = data.get("rules") if isinstance(data, dict) else None
        for i, r in enumerate(rules if isinstance(rules, list) else []):
            when = r.get("when") if isinstance(r, dict) else None
            if when in seen:
                out.append((("rules", i, "when"), "repeated"))
            seen.add(when)
        return out

    text = "rules:\n  - {when: a}\n  - {when: a, statuss: 7}\n"
    loader = ModelLoader(Rules, checks)
    with pytest.raises(PolicyError) as e:
        loader.load_text(text, "r.yaml")
    assert [str(i) for i in e.value.issues] == [
        "r.yaml:3:12: rules[1].when: repeated",
        "r.yaml:3:15: rules[1].statuss: unknown key 'statuss' (did you mean 'status'?)",
    ]
    assert load_yaml_model("rules: [{when: x}]", "r.yaml", Rules).rules[0].status == 200


def test_checks_failed_locates_each_problem() -> None:
    class Pair(FrozenModel):
        low: int
        high: int

        def model_post_init(self, context: object) -> None:
            if self.high < self.low:
                raise checks_failed((("high",), "must be at least low"), ((), "is upside down"))

    with pytest.raises(PolicyError) as e:
        load_yaml_model("low: 5\nhigh: 1\n", "x.yaml", Pair)
    assert [str(i) for i in e.value.issues] == [
        "x.yaml:1:1: is upside down",
        "x.yaml:2:7: high: must be at least low",
    ]


def test_read_yaml_positions_and_helpers() -> None:
    doc, problems = read_yaml("a:\n  b: [x, {c: 1}]\n", "f.yaml")
    assert problems == []
    assert isinstance(doc, YamlDocument)
    assert doc.data == {"a": {"b": ["x", {"c": 1}]}}
    assert doc.positions[("a", "b", 1, "c")] == (2, 14)
    assert doc.key_positions[("a", "b", 1, "c")] == (2, 11)
    assert locate(doc, ("a", "b", 1, "missing")) == (2, 10)
    assert locate(doc, ("a", "b"), key=True) == (2, 3)
    assert format_path(("routes", 0, "split", 1, "weight")) == "routes[0].split[1].weight"
    assert format_path(("backends", "classifier-v1", "endpoints", 0, "url")) == (
        "backends.classifier-v1.endpoints[0].url"
    )
    assert str(doc.issue(("a", "b", 0), "nope")) == "f.yaml:2:7: a.b[0]: nope"


def test_hedging_delay_keeps_its_yaml_path() -> None:
    text = with_route("hedging: {delay: 20ms, delay_spec: p95}")
    assert issues(text) == [
        "p.yaml:9:28: routes[0].hedging.delay_spec: unknown key 'delay_spec' "
        "(did you mean 'delay'?)"
    ]
    policy = load_policy_text(with_route("hedging: {delay: p99.9}"))
    hedging = policy.routes[0].hedging
    assert isinstance(hedging, HedgeModel)
    assert hedging.delay is None
    assert hedging.delay_percentile == pytest.approx(0.999)
