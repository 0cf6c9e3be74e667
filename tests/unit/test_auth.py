"""Authentication and authorization: every way a credential is accepted or refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import (
    ANONYMOUS,
    ApiKeyConfig,
    AuthConfig,
    Authenticator,
    AuthMethod,
    Identity,
    JwtConfig,
    hash_key,
    hash_key_main,
    load_secrets_file,
)
from gateway.errors import Forbidden, PolicyError, Unauthorized

NOW = 1_800_000_000.0
KEY = "tg_live_3q9vXr0cJmT1aZkPz8yWbN4uHs6eLd2f"
OTHER_KEY = "tg_live_other_key_with_plenty_of_entropy_42"
SECRET = "hs256-shared-secret-of-at-least-32-bytes!"
WRONG_SECRET = "another-shared-secret-of-32-bytes-or-more"
ISSUER = "https://issuer.example"
AUDIENCE = "tailguard"


def _rsa_pair() -> tuple[rsa.RSAPrivateKey, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public_pem


RSA_PRIVATE, RSA_PUBLIC_PEM = _rsa_pair()


def keys() -> tuple[ApiKeyConfig, ...]:
    return (
        ApiKeyConfig("billing-prod", "billing", hash_key(KEY)),
        ApiKeyConfig("search-1", "search", hash_key(OTHER_KEY)),
    )


def hs_config(**kw: Any) -> JwtConfig:
    base: dict[str, Any] = {"algorithms": ("HS256",), "secret": SECRET}
    return JwtConfig(**{**base, **kw})


def authenticator(**kw: Any) -> Authenticator:
    base: dict[str, Any] = {"keys": keys(), "jwt": hs_config()}
    return Authenticator(AuthConfig(**{**base, **kw}))


def hs_token(claims: dict[str, Any] | None = None, secret: str = SECRET, **extra: Any) -> str:
    payload: dict[str, Any] = {"sub": "user-7", "exp": int(NOW) + 300, **(claims or {}), **extra}
    return jwt.encode(payload, secret, algorithm="HS256")


def rs_token(**extra: Any) -> str:
    payload = {"sub": "acme", "exp": int(NOW) + 300, **extra}
    return jwt.encode(payload, RSA_PRIVATE, algorithm="RS256")


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def refused(auth: Authenticator, headers: dict[str, str], now: float = NOW) -> Unauthorized:
    with pytest.raises(Unauthorized) as e:
        auth.authenticate(headers, now)
    return e.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed_hs256(payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token signed with any bytes (PyJWT refuses to sign with a PEM as secret)."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


# --- API keys ----------------------------------------------------------------------------------


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_api_key_in_its_header() -> None:
    who = authenticator().authenticate({"x-api-key": KEY}, NOW)
    assert who == Identity("billing", "billing-prod", AuthMethod.API_KEY)


def test_api_key_as_bearer() -> None:
    who = authenticator().authenticate(bearer(OTHER_KEY), NOW)
    assert who == Identity("search", "search-1", AuthMethod.API_KEY)


def test_api_key_header_wins_over_authorization() -> None:
    who = authenticator().authenticate({"x-api-key": KEY, **bearer(OTHER_KEY)}, NOW)
    assert who.tenant == "billing"
    assert refused(authenticator(), {"x-api-key": "wrong", **bearer(KEY)}).message == (
        "unknown API key"
    )


def test_bearer_scheme_is_case_insensitive() -> None:
    who = authenticator().authenticate({"authorization": f"bearer   {KEY} "}, NOW)
    assert who.tenant == "billing"


def test_custom_api_key_header_is_lower_cased() -> None:
    auth = authenticator(api_key_header="X-Tenant-Key")
    assert auth.authenticate({"x-tenant-key": KEY}, NOW).subject == "billing-prod"
    assert "missing credentials" in str(refused(auth, {"x-api-key": KEY}))


def test_dotted_bearer_is_an_api_key_when_jwt_is_not_configured() -> None:
    dotted = "part.one.two-with-entropy-9f8e7d6c5b4a"
    auth = Authenticator(AuthConfig(keys=(ApiKeyConfig("k", "t", hash_key(dotted)),)))
    assert auth.authenticate(bearer(dotted), NOW).subject == "k"


def test_unknown_api_key() -> None:
    err = refused(authenticator(), {"x-api-key": "not-a-key"})
    assert err.message == "unknown API key"
    assert err.status == 401
    assert err.headers["WWW-Authenticate"] == (
        'Bearer realm="tailguard", error="invalid_token", error_description="unknown API key"'
    )


def test_empty_and_oversized_api_keys_are_refused() -> None:
    assert refused(authenticator(), {"x-api-key": "  "}).message == "empty credential"
    assert refused(authenticator(), bearer("")).message == "empty credential"
    assert "too long" in refused(authenticator(), {"x-api-key": "k" * 10_000}).message


def test_api_key_when_only_jwt_is_accepted() -> None:
    auth = authenticator(keys=())
    assert refused(auth, {"x-api-key": KEY}).message == "API keys are not accepted"
    assert refused(auth, bearer(KEY)).message == "malformed token"


def test_missing_credentials_gets_a_bare_challenge() -> None:
    err = refused(authenticator(), {"accept": "application/json"})
    assert err.message == "missing credentials"
    assert err.headers == {"WWW-Authenticate": 'Bearer realm="tailguard"'}


def test_other_authorization_schemes_are_refused() -> None:
    err = refused(authenticator(), {"authorization": "Basic dXNlcjpwYXNz"})
    assert "use Bearer" in err.message


def test_anonymous_allowed_only_without_credentials() -> None:
    auth = authenticator(allow_anonymous=True)
    assert auth.authenticate({}, NOW) == ANONYMOUS
    assert ANONYMOUS.method is AuthMethod.ANONYMOUS
    # A wrong credential is an error, never a quiet downgrade to anonymous.
    assert refused(auth, {"x-api-key": "wrong"}).message == "unknown API key"


def test_anonymous_refused_by_default() -> None:
    assert refused(authenticator(), {}).message == "missing credentials"


# --- JWT HS256 ---------------------------------------------------------------------------------


def test_hs256_good_token() -> None:
    who = authenticator().authenticate(bearer(hs_token()), NOW)
    assert who == Identity("user-7", "user-7", AuthMethod.JWT)


def test_tenant_claim_and_subject() -> None:
    auth = authenticator(jwt=hs_config(tenant_claim="tenant"))
    who = auth.authenticate(bearer(hs_token(tenant="billing")), NOW)
    assert who == Identity("billing", "user-7", AuthMethod.JWT)
    no_sub = jwt.encode({"tenant": "billing", "exp": int(NOW) + 60}, SECRET, algorithm="HS256")
    assert auth.authenticate(bearer(no_sub), NOW).subject == "billing"


def test_expiry_is_judged_against_injected_now_with_leeway() -> None:
    auth = authenticator()  # leeway 30 s
    token = hs_token(exp=int(NOW))
    assert auth.authenticate(bearer(token), NOW + 29.9).tenant == "user-7"
    assert refused(auth, bearer(token), NOW + 30).message == "token expired"
    # The real clock (years before NOW) plays no part: the token is expired at NOW + 30.
    strict = authenticator(jwt=hs_config(leeway=0.0))
    assert refused(strict, bearer(token), NOW).message == "token expired"
    assert strict.authenticate(bearer(token), NOW - 0.5).tenant == "user-7"


def test_not_yet_valid() -> None:
    auth = authenticator()
    token = hs_token(nbf=int(NOW) + 60)
    assert refused(auth, bearer(token), NOW).message == "token not yet valid"
    assert auth.authenticate(bearer(token), NOW + 30).tenant == "user-7"
    future = hs_token(iat=int(NOW) + 120)
    assert refused(auth, bearer(future), NOW).message == "token issued in the future"


def test_time_claims_must_be_numbers() -> None:
    err = refused(authenticator(), bearer(hs_token(exp="tomorrow")))
    assert err.message == "token claim 'exp' is not a number"


def test_wrong_signature() -> None:
    err = refused(authenticator(), bearer(hs_token(secret=WRONG_SECRET)))
    assert err.message == "bad token signature"
    assert 'error="invalid_token"' in err.headers["WWW-Authenticate"]


def test_tampered_payload_fails_the_signature() -> None:
    head, _, sig = hs_token().split(".")
    forged = b64(json.dumps({"sub": "admin", "exp": int(NOW) + 300}).encode())
    assert refused(authenticator(), bearer(f"{head}.{forged}.{sig}")).message == (
        "bad token signature"
    )


def test_issuer_and_audience() -> None:
    auth = authenticator(jwt=hs_config(issuer=ISSUER, audience=AUDIENCE))
    good = hs_token(iss=ISSUER, aud=AUDIENCE)
    assert auth.authenticate(bearer(good), NOW).tenant == "user-7"
    bad_iss = hs_token(iss="https://evil.example", aud=AUDIENCE)
    assert refused(auth, bearer(bad_iss)).message == "token issuer not accepted"
    bad_aud = hs_token(iss=ISSUER, aud="someone-else")
    assert refused(auth, bearer(bad_aud)).message == "token audience not accepted"
    no_aud = hs_token(iss=ISSUER)
    assert "'aud'" in refused(auth, bearer(no_aud)).message


def test_required_claims() -> None:
    no_exp = jwt.encode({"sub": "user-7"}, SECRET, algorithm="HS256")
    assert refused(authenticator(), bearer(no_exp)).message == (
        "token lacks the required claim 'exp'"
    )
    lenient = authenticator(jwt=hs_config(required_claims=()))
    assert lenient.authenticate(bearer(no_exp), NOW).tenant == "user-7"


def test_missing_tenant_claim() -> None:
    auth = authenticator(jwt=hs_config(tenant_claim="tenant"))
    err = refused(auth, bearer(hs_token()))
    assert err.message == "token lacks the tenant claim 'tenant'"
    assert refused(auth, bearer(hs_token(tenant=42))).message == err.message
    assert refused(auth, bearer(hs_token(tenant=" "))).message == err.message


def test_alg_none_is_refused() -> None:
    head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "admin", "exp": int(NOW) + 300}).encode())
    unsigned = f"{head}.{body}."
    assert refused(authenticator(), bearer(unsigned)).message == "token algorithm not accepted"


def test_malformed_token() -> None:
    assert refused(authenticator(), bearer("abc.def.ghi")).message == "malformed token"
    assert refused(authenticator(), bearer("..")).message == "malformed token"


def test_algorithm_confusion_is_refused() -> None:
    # The attacker "signs" HS256 with the RS256 public key, which is public.
    forged = hand_signed_hs256({"sub": "admin", "exp": int(NOW) + 300}, RSA_PUBLIC_PEM.encode())
    rs_only = authenticator(jwt=JwtConfig(algorithms=("RS256",), public_key=RSA_PUBLIC_PEM))
    assert refused(rs_only, bearer(forged)).message == "token algorithm not accepted"
    both = authenticator(
        jwt=JwtConfig(algorithms=("HS256", "RS256"), secret=SECRET, public_key=RSA_PUBLIC_PEM)
    )
    assert refused(both, bearer(forged)).message == "bad token signature"


def test_rs256_token() -> None:
    auth = authenticator(jwt=JwtConfig(algorithms=("RS256",), public_key=RSA_PUBLIC_PEM))
    assert auth.authenticate(bearer(rs_token()), NOW) == Identity("acme", "acme", AuthMethod.JWT)
    other_private, _ = _rsa_pair()
    other = jwt.encode({"sub": "acme", "exp": int(NOW) + 300}, other_private, algorithm="RS256")
    assert refused(auth, bearer(other)).message == "bad token signature"
    # An HS256 token is not accepted where only RS256 is configured.
    assert refused(auth, bearer(hs_token())).message == "token algorithm not accepted"


def test_both_algorithms_accepted_when_configured() -> None:
    auth = authenticator(
        jwt=JwtConfig(algorithms=("HS256", "RS256"), secret=SECRET, public_key=RSA_PUBLIC_PEM)
    )
    assert auth.authenticate(bearer(rs_token()), NOW).tenant == "acme"
    assert auth.authenticate(bearer(hs_token()), NOW).tenant == "user-7"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii"), max_size=200))
def test_any_bearer_value_is_an_identity_or_unauthorized(value: str) -> None:
    auth = authenticator()
    try:
        auth.authenticate({"authorization": f"Bearer {value}"}, NOW)
    except Unauthorized:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=60), min_size=3, max_size=3))
def test_any_three_part_token_is_unauthorized(parts: list[bytes]) -> None:
    token = ".".join(b64(p) for p in parts)
    with pytest.raises(Unauthorized):
        authenticator().authenticate(bearer(token), NOW)


# --- authorization -----------------------------------------------------------------------------


def test_authorize_allow_lists() -> None:
    billing = Identity("billing", "billing-prod", AuthMethod.API_KEY)
    Authenticator.authorize(billing, None, "classify")
    Authenticator.authorize(billing, frozenset({"billing", "search"}), "classify")
    with pytest.raises(Forbidden) as e:
        Authenticator.authorize(billing, frozenset({"search"}), "classify")
    assert e.value.status == 403
    assert e.value.message == "tenant 'billing' may not use route 'classify'"
    with pytest.raises(Forbidden):
        Authenticator.authorize(billing, frozenset(), "classify")


def test_anonymous_needs_an_explicit_allow_list_entry() -> None:
    with pytest.raises(Forbidden, match="requires credentials"):
        Authenticator.authorize(ANONYMOUS, None, "classify")
    Authenticator.authorize(ANONYMOUS, frozenset({"anonymous"}), "public")


# --- secrets stay secret -----------------------------------------------------------------------


def test_reprs_never_show_secrets() -> None:
    cfg = AuthConfig(
        keys=keys(),
        jwt=JwtConfig(algorithms=("HS256", "RS256"), secret=SECRET, public_key=RSA_PUBLIC_PEM),
    )
    for text in (repr(cfg), str(cfg), repr(Authenticator(cfg)), repr(cfg.keys[0])):
        assert SECRET not in text
        assert KEY not in text
        assert hash_key(KEY).removeprefix("sha256:") not in text
    assert "billing-prod" in repr(cfg)


def test_errors_never_quote_the_credential() -> None:
    auth = authenticator(jwt=hs_config(issuer=ISSUER, audience=AUDIENCE))
    tokens = [
        hs_token(secret=WRONG_SECRET),
        hs_token(exp=int(NOW) - 3600),
        hs_token(iss="x", aud=AUDIENCE),
        hs_token(iss=ISSUER, aud="x"),
        "abc.def.ghi",
    ]
    for credential in [*tokens, "no-such-key-1234567890"]:
        err = refused(auth, bearer(credential))
        shown = [err.message, str(err), repr(err), *err.headers.values()]
        assert all(credential not in s and SECRET not in s for s in shown)
        # No library exception rides along to be printed in a traceback.
        assert err.__cause__ is None
        assert err.__context__ is None or err.__suppress_context__


def test_config_errors_never_quote_secrets() -> None:
    with pytest.raises(ValueError) as e:
        ApiKeyConfig("k", "t", KEY)  # the raw key pasted where its hash belongs
    assert KEY not in str(e.value)
    short = "too-short-secret"
    with pytest.raises(ValueError) as e:
        JwtConfig(algorithms=("HS256",), secret=short)
    assert short not in str(e.value)
    with pytest.raises(ValueError, match="looks like a public key") as e:
        JwtConfig(algorithms=("HS256",), secret=RSA_PUBLIC_PEM)
    assert RSA_PUBLIC_PEM not in str(e.value)


# --- configuration -----------------------------------------------------------------------------


def test_api_key_hash_is_normalized() -> None:
    upper = "sha256:" + hash_key(KEY).removeprefix("sha256:").upper()
    assert ApiKeyConfig("k", "t", upper).hash == hash_key(KEY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keys": ()}, "accepts nothing"),
        ({"keys": (ApiKeyConfig("a", "t", hash_key("x")),) * 2}, "used twice"),
        (
            {
                "keys": (
                    ApiKeyConfig("a", "t", hash_key("x")),
                    ApiKeyConfig("b", "t", hash_key("x")),
                )
            },
            "same hash",
        ),
        ({"keys": keys(), "api_key_header": "authorization"}, "must not be 'authorization'"),
        ({"keys": keys(), "api_key_header": "bad header"}, "not an HTTP header name"),
    ],
)
def test_auth_config_refuses(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuthConfig(**kwargs)


def test_anonymous_only_config_is_allowed() -> None:
    assert Authenticator(AuthConfig(allow_anonymous=True)).authenticate({}, NOW) == ANONYMOUS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithms": ()}, "at least one"),
        ({"algorithms": ("HS512",), "secret": SECRET}, "not supported"),
        ({"algorithms": ("HS256", "HS256"), "secret": SECRET}, "must not repeat"),
        ({"algorithms": ("HS256",)}, "needs a secret"),
        ({"algorithms": ("RS256",)}, "needs a public_key"),
        (
            {"algorithms": ("RS256",), "public_key": RSA_PUBLIC_PEM, "secret": SECRET},
            "HS256 is not",
        ),
        (
            {"algorithms": ("HS256",), "secret": SECRET, "public_key": RSA_PUBLIC_PEM},
            "RS256 is not",
        ),
        ({"algorithms": ("RS256",), "public_key": "not a pem"}, "not an RSA public key"),
        ({"algorithms": ("HS256",), "secret": SECRET, "leeway": -1.0}, "leeway"),
        ({"algorithms": ("HS256",), "secret": SECRET, "tenant_claim": ""}, "tenant_claim"),
    ],
)
def test_jwt_config_refuses(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JwtConfig(**kwargs)


def test_jwt_config_refuses_private_and_small_rsa_keys() -> None:
    private_pem = RSA_PRIVATE.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ValueError, match="holds a private key"):
        JwtConfig(algorithms=("RS256",), public_key=private_pem)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    small_pem = small.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    with pytest.raises(ValueError, match="at least 2048 bits"):
        JwtConfig(algorithms=("RS256",), public_key=small_pem)


# --- secrets file ------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secrets.yaml"
    path.write_text(text)
    return path


def test_load_secrets_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
keys:
  - {{id: billing-prod, tenant: billing, hash: "{hash_key(KEY)}"}}
  - id: search-1
    tenant: search
    hash: "{hash_key(OTHER_KEY).upper().replace("SHA256", "sha256")}"
jwt_secret: "{SECRET}"
""",
    )
    loaded, secret = load_secrets_file(path)
    assert loaded == keys()
    assert secret == SECRET
    auth = Authenticator(AuthConfig(keys=loaded, jwt=hs_config(secret=secret)))
    assert auth.authenticate({"x-api-key": OTHER_KEY}, NOW).tenant == "search"


def test_empty_secrets_file(tmp_path: Path) -> None:
    assert load_secrets_file(write(tmp_path, "")) == ((), None)


def test_secrets_file_errors_are_located_and_never_quote_secrets(tmp_path: Path) -> None:
    short = "short-secret"
    path = write(
        tmp_path,
        f"""\
keys:
  - {{id: a, tenant: billing, hash: "{hash_key(KEY)}"}}
  - id: a
    tenant: ""
    hash: "{KEY}"
  - {{id: c, tenant: t, hash: "{hash_key(KEY)}", scope: all}}
jwt_secret: {short}
""",
    )
    with pytest.raises(PolicyError) as e:
        load_secrets_file(path)
    found = [str(i) for i in e.value.issues]
    name = str(path)
    assert found == [
        f"{name}:3:9: keys[1].id: id 'a' is used by keys[0] too",
        f"{name}:4:13: keys[1].tenant: must not be empty",
        f"{name}:5:11: keys[1].hash: must be 'sha256:' and 64 hex digits "
        "(from `tailguard hash-key`)",
        f"{name}:6:30: keys[2].hash: same hash as keys[0] too",
        f"{name}:6:105: keys[2].scope: unknown key 'scope'",
        f"{name}:7:13: jwt_secret: must be at least 32 bytes",
    ]
    text = str(e.value)
    assert KEY not in text and short not in text


def test_secrets_file_duplicate_hash(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
keys:
  - {{id: a, tenant: t, hash: "{hash_key(KEY)}"}}
  - {{id: b, tenant: t, hash: "{hash_key(KEY)}"}}
""",
    )
    with pytest.raises(PolicyError) as e:
        load_secrets_file(path)
    assert [str(i) for i in e.value.issues] == [
        f"{path}:3:30: keys[1].hash: same hash as keys[0] too"
    ]


def test_unreadable_secrets_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the file"):
        load_secrets_file(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError, match=r"secrets.yaml:3:1: invalid YAML"):
        load_secrets_file(write(tmp_path, "keys: [\n  {id: a\n"))


# --- hash-key command --------------------------------------------------------------------------


def test_hash_key_main_from_argv(capsys: pytest.CaptureFixture[str]) -> None:
    assert hash_key_main([KEY]) == 0
    assert capsys.readouterr().out == hash_key(KEY) + "\n"


def test_hash_key_main_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    assert hash_key_main() == 0
    assert capsys.readouterr().out == hash_key(KEY) + "\n"


def test_hash_key_main_without_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert hash_key_main([]) == 2
    assert "no key given" in capsys.readouterr().err
    assert hash_key_main(["a", "b"]) == 2
