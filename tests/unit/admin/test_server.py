"""Who opens the admin API: tokens, the environment's token, loopback, the supervisor's word."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.admin.server import (
    PEER_HEADER,
    SUPERVISOR_HEADER,
    AdminCredentials,
    authenticate,
    exposure_problem,
)
from gateway.auth import hash_key

TOKEN = "ops-token-0123456789abcdef"
TOKENS = {hash_key(TOKEN): "ops", hash_key("other-token-0123456789"): "ci"}
SECRET = "5e" * 32
NONE = AdminCredentials()
WORKER = AdminCredentials(supervisor_secret=SECRET.encode())


def hdrs(**kw: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in kw.items()})


def test_policy_tokens_open_the_api_by_either_header() -> None:
    for peer in ("127.0.0.1", "203.0.113.7", None):
        assert authenticate(TOKENS, NONE, hdrs(x_admin_token=TOKEN), peer) == "admin:ops"
        assert authenticate(TOKENS, NONE, hdrs(authorization=f"Bearer {TOKEN}"), peer) == (
            "admin:ops"
        )
        assert authenticate(TOKENS, NONE, hdrs(authorization=f"bearer  {TOKEN} "), peer) == (
            "admin:ops"
        )
    assert authenticate(TOKENS, NONE, hdrs(x_admin_token="other-token-0123456789"), None) == (
        "admin:ci"
    )
    for wrong in ({"x_admin_token": TOKEN[:-1]}, {"authorization": f"Basic {TOKEN}"}, {}):
        assert authenticate(TOKENS, NONE, hdrs(**wrong), "127.0.0.1") is None


def test_environment_token_and_the_loopback_rule() -> None:
    env = AdminCredentials.from_environ({"TAILGUARD_ADMIN_TOKEN": "from-env-0123"})
    assert env.env_token == b"from-env-0123" and env.supervisor_secret is None
    assert authenticate({}, env, hdrs(x_admin_token="from-env-0123"), "203.0.113.7") == (
        "admin:env"
    )
    assert authenticate(TOKENS, env, hdrs(x_admin_token="from-env-0123"), None) == "admin:env"
    # any configured token switches the loopback rule off
    assert authenticate({}, env, hdrs(), "127.0.0.1") is None
    assert authenticate(TOKENS, NONE, hdrs(), "127.0.0.1") is None
    # none configured: local callers only, and a presented token must still be right
    assert authenticate({}, NONE, hdrs(), "127.0.0.1") == "loopback"
    assert authenticate({}, NONE, hdrs(), "::1") == "loopback"
    assert authenticate({}, NONE, hdrs(), "203.0.113.7") is None
    assert authenticate({}, NONE, hdrs(), None) is None
    assert authenticate({}, NONE, hdrs(x_admin_token="guess"), "127.0.0.1") is None
    assert AdminCredentials.from_environ({"TAILGUARD_ADMIN_TOKEN": ""}) == NONE


def test_a_worker_trusts_an_address_only_on_the_supervisors_word() -> None:
    vouched = {SUPERVISOR_HEADER: SECRET}
    # the supervisor's own connection comes from loopback: that alone grants nothing
    assert authenticate({}, WORKER, hdrs(), "127.0.0.1") is None
    assert authenticate({}, WORKER, hdrs(**{PEER_HEADER: "127.0.0.1"}), "127.0.0.1") is None
    assert authenticate({}, WORKER, hdrs(**vouched, **{PEER_HEADER: "127.0.0.1"}), "::1") == (
        "loopback"
    )
    # the loopback rule applies to the caller the supervisor speaks for
    for peer in ("203.0.113.7", "", "not an address"):
        assert authenticate({}, WORKER, hdrs(**vouched, **{PEER_HEADER: peer}), "::1") is None
    assert authenticate({}, WORKER, hdrs(**vouched), "127.0.0.1") is None
    # the caller's token is judged by the worker's own tokens
    got = authenticate(TOKENS, WORKER, hdrs(**vouched, x_admin_token=TOKEN), "127.0.0.1")
    assert got == "admin:ops"
    assert authenticate(TOKENS, WORKER, hdrs(**vouched, x_admin_token="x"), "127.0.0.1") is None
    assert authenticate(TOKENS, WORKER, hdrs(**vouched), "127.0.0.1") is None
    # a token is good on a worker directly, as anywhere
    assert authenticate(TOKENS, WORKER, hdrs(x_admin_token=TOKEN), "127.0.0.1") == "admin:ops"


@pytest.mark.parametrize(
    "forged", [SECRET[:-1] + "0", "", "guess", SECRET + " ", SECRET.upper(), "\udcff" + SECRET[1:]]
)
def test_a_forged_supervisor_header_refuses_even_a_good_token(forged: str) -> None:
    for creds in (WORKER, NONE):
        h = hdrs(**{SUPERVISOR_HEADER: forged, PEER_HEADER: "127.0.0.1"}, x_admin_token=TOKEN)
        assert authenticate(TOKENS, creds, h, "127.0.0.1") is None
        h = hdrs(**{SUPERVISOR_HEADER: forged, PEER_HEADER: "127.0.0.1"})
        assert authenticate({}, creds, h, "127.0.0.1") is None
    # a gateway that is nobody's worker takes no one's word, not even the right secret
    h = hdrs(**{SUPERVISOR_HEADER: SECRET, PEER_HEADER: "127.0.0.1"})
    assert authenticate({}, NONE, h, "127.0.0.1") is None


@pytest.mark.parametrize(
    "presented",
    [
        "\udcff\udcfe",  # bytes that are not UTF-8, as aiohttp hands them over
        TOKEN[:-1] + "\udce9",
        TOKEN[:-1] + "é",  # valid UTF-8, not ASCII
        "ÿþ",  # the same bytes read as latin-1
        TOKEN + "\x7f",
        "tok\ten",
    ],
)
def test_bytes_that_are_no_token_are_refused_not_raised(presented: str) -> None:
    env = AdminCredentials(env_token=presented.encode("utf-8", "surrogateescape"))
    for tokens, creds in ((TOKENS, NONE), ({}, NONE), ({}, env)):
        assert authenticate(tokens, creds, hdrs(x_admin_token=presented), "127.0.0.1") is None
        h = hdrs(authorization=f"Bearer {presented}")
        assert authenticate(tokens, creds, h, "127.0.0.1") is None
    assert (
        authenticate({}, WORKER, hdrs(**{SUPERVISOR_HEADER: SECRET, PEER_HEADER: presented}), None)
        is None
    )


@given(st.text(), st.sampled_from(["x-admin-token", "authorization", SUPERVISOR_HEADER]))
def test_no_header_value_raises_and_only_the_token_opens(value: str, name: str) -> None:
    got = authenticate(TOKENS, WORKER, CIMultiDict({name: value}), "127.0.0.1")
    opens = (name == "x-admin-token" and value == TOKEN) or (
        name == "authorization" and value[:7].lower() == "bearer " and value[7:].strip() == TOKEN
    )
    assert got == ("admin:ops" if opens else None)


def test_an_exposed_admin_port_needs_a_token() -> None:
    env = AdminCredentials(env_token=b"t")
    for host in ("127.0.0.1", "::1", "127.0.0.2", "localhost"):
        assert exposure_problem((host, 9090), {}, NONE, source="gateway.admin_listen") is None
    for host in ("0.0.0.0", "::", "", "10.0.0.1", "203.0.113.7"):
        problem = exposure_problem((host, 9090), {}, NONE, source="--admin-listen")
        assert problem is not None and "--admin-listen" in problem
        assert "admin.tokens" in problem and "TAILGUARD_ADMIN_TOKEN" in problem
        assert exposure_problem((host, 9090), TOKENS, NONE, source="x") is None
        assert exposure_problem((host, 9090), {}, env, source="x") is None
    problem = exposure_problem(("::", 9090), {}, NONE, source="gateway.admin_listen")
    assert problem is not None and "[::]:9090" in problem
