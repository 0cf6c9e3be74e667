"""Who is calling, and may they use this route: API keys (stored hashed) and JWTs.

A caller proves who it is with one credential:

- an API key in the `x-api-key` header (the name is configurable), or
- `Authorization: Bearer <credential>`, where a credential of three dot-separated parts
  is a JWT when JWTs are configured, and anything else is an API key.

The result is an `Identity` naming the caller's tenant; `Authenticator.authorize` then
checks the tenant against the route's allow list. Failures raise `Unauthorized` (401,
with a `WWW-Authenticate` challenge) or `Forbidden` (403); the request path turns them
into JSON errors.

Only SHA-256 hashes of API keys are configured, so a leaked policy or secrets file does
not leak a usable key. The hashes are unsalted, which is sound only because API keys are
random strings with at least 128 bits of entropy (generate them with
`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), never passwords.

Secrets (keys, the HS256 secret, tokens) never appear in a repr, a log line or an error
message, and no library exception is chained to the errors raised here, so a traceback
shows nothing the client sent.

Like every decision in the gateway, authentication is pure: the caller passes the wall
time `now` (unix seconds) in, and token lifetimes are judged against it, never against a
clock read here.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import get_default_algorithms
from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from gateway.errors import Forbidden, Unauthorized
from gateway.policy.load import ModelLoader
from gateway.policy.model import FrozenModel, Problem, checks_failed

__all__ = [
    "ANONYMOUS",
    "HASH_PATTERN",
    "JWT_ALGORITHMS",
    "MAX_CREDENTIAL_LENGTH",
    "ApiKeyConfig",
    "AuthConfig",
    "AuthMethod",
    "Authenticator",
    "Identity",
    "JwtConfig",
    "SecretsFileModel",
    "hash_key",
    "hash_key_main",
    "load_secrets_file",
]

JWT_ALGORITHMS = ("HS256", "RS256")
HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$"
HEADER_PATTERN = r"^[a-z0-9!#$%&'*+.^_`|~-]+$"
MIN_HS256_SECRET_BYTES = 32  # RFC 7518 §3.2: a key at least as long as the hash output
MIN_RSA_BITS = 2048
# Far above any real key or token, far below what would make hashing or decoding costly.
MAX_CREDENTIAL_LENGTH = 8192
REALM = "tailguard"


class AuthMethod(enum.Enum):
    API_KEY = "api_key"
    JWT = "jwt"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated caller.

    tenant: whom rate limits, allow lists and audit lines are about.
    subject: the API key's id or the JWT's `sub` (the tenant when the token has none);
        safe to log, never the credential itself.
    """

    tenant: str
    subject: str
    method: AuthMethod


ANONYMOUS = Identity("anonymous", "anonymous", AuthMethod.ANONYMOUS)


def hash_key(key: str) -> str:
    """The form an API key is stored in (`sha256:<64 hex digits>`), for policy and secrets files."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyConfig:
    """One accepted API key, known only by its hash.

    id: a name for the key that is safe to log (it becomes `Identity.subject`).
    tenant: the tenant that presents this key.
    hash: `hash_key(key)`; upper-case hex is accepted and stored lower-case. Kept out
        of the repr: a hash of a weak key could be brute-forced offline.
    """

    id: str
    tenant: str
    hash: str = field(repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(KEY_ID_PATTERN, self.id):
            raise ValueError(
                f"API key id {self.id!r} must start with a letter or digit and hold only "
                "letters, digits and '_.:@-'"
            )
        if not self.tenant.strip():
            raise ValueError(f"API key {self.id!r} needs a tenant")
        normalized = self.hash.lower()
        if not re.fullmatch(HASH_PATTERN, normalized):
            # The value itself is not shown: it may be the raw key pasted by mistake.
            raise ValueError(
                f"API key {self.id!r}: hash must be 'sha256:' and 64 hex digits "
                "(from `tailguard hash-key`)"
            )
        object.__setattr__(self, "hash", normalized)


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """How JWTs are verified.

    algorithms: the accepted `alg` values, a subset of `JWT_ALGORITHMS`. Each needs its
        own key, so a token can never be verified with the other algorithm's key
        (an HS256 token "signed" with the RS256 public key is refused).
    secret: the HS256 shared secret, at least 32 bytes; kept out of the repr.
    public_key: the RS256 public key (PEM), at least 2048 bits; never a private key.
    issuer, audience: when set, the token's `iss` / `aud` must match. A token that
        carries an `aud` is refused when no audience is configured.
    tenant_claim: the claim naming the caller's tenant; it must be a non-empty string.
    leeway: seconds of clock skew tolerated for `exp`, `nbf` and `iat`.
    required_claims: claims every token must carry.
    """

    algorithms: tuple[str, ...]
    secret: str | None = field(default=None, repr=False)
    public_key: str | None = None
    issuer: str | None = None
    audience: str | None = None
    tenant_claim: str = "sub"
    leeway: float = 30.0
    required_claims: tuple[str, ...] = ("exp",)

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise ValueError("jwt algorithms must name at least one of HS256, RS256")
        for alg in self.algorithms:
            if alg not in JWT_ALGORITHMS:
                raise ValueError(f"jwt algorithm {alg!r} is not supported (use HS256 or RS256)")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError("jwt algorithms must not repeat")
        if "HS256" in self.algorithms and self.secret is None:
            raise ValueError("jwt algorithm HS256 needs a secret")
        if "HS256" not in self.algorithms and self.secret is not None:
            raise ValueError("a jwt secret is set but HS256 is not among the algorithms")
        if "RS256" in self.algorithms and self.public_key is None:
            raise ValueError("jwt algorithm RS256 needs a public_key")
        if "RS256" not in self.algorithms and self.public_key is not None:
            raise ValueError("a jwt public_key is set but RS256 is not among the algorithms")
        if not self.tenant_claim:
            raise ValueError("jwt tenant_claim must not be empty")
        if not (self.leeway >= 0 and math.isfinite(self.leeway)):
            raise ValueError(f"jwt leeway must be a non-negative number, got {self.leeway!r}")
        _verification_keys(self)  # fails here, at load time, on unusable key material


def _verification_keys(config: JwtConfig) -> dict[str, Any]:
    """PyJWT-ready keys by algorithm; raises ValueError (without the secret) when unusable."""
    algorithms = get_default_algorithms()
    keys: dict[str, Any] = {}
    if config.secret is not None:
        if len(config.secret.encode("utf-8")) < MIN_HS256_SECRET_BYTES:
            raise ValueError(f"the jwt secret must be at least {MIN_HS256_SECRET_BYTES} bytes")
        try:
            keys["HS256"] = algorithms["HS256"].prepare_key(config.secret)
        except jwt.InvalidKeyError:
            # PyJWT refuses PEM and SSH keys as HMAC secrets: a public key used as a
            # shared secret is the classic algorithm-confusion hole.
            raise ValueError(
                "the jwt secret looks like a public key, not a shared secret"
            ) from None
    if config.public_key is not None:
        try:
            key = algorithms["RS256"].prepare_key(config.public_key)
        except (jwt.InvalidKeyError, ValueError, TypeError):
            raise ValueError("the jwt public_key is not an RSA public key in PEM form") from None
        if isinstance(key, RSAPrivateKey):
            raise ValueError(
                "the jwt public_key holds a private key; give the gateway only the public key"
            )
        if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"the jwt public_key must be an RSA key of at least {MIN_RSA_BITS} bits"
            )
        keys["RS256"] = key
    return keys


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Which credentials the gateway accepts.

    api_key_header: the header carrying an API key (lower-cased here); an API key is
        also accepted as `Authorization: Bearer <key>`.
    keys: the accepted API keys; ids and hashes must be unique.
    jwt: how JWTs are verified; None: no JWT is accepted.
    allow_anonymous: requests without any credential get `ANONYMOUS`; requests with a
        bad credential are still refused, never downgraded to anonymous.
    """

    api_key_header: str = "x-api-key"
    keys: tuple[ApiKeyConfig, ...] = ()
    jwt: JwtConfig | None = None
    allow_anonymous: bool = False

    def __post_init__(self) -> None:
        header = self.api_key_header.lower()
        if not re.fullmatch(HEADER_PATTERN, header):
            raise ValueError(f"api_key_header {self.api_key_header!r} is not an HTTP header name")
        if header == "authorization":
            raise ValueError("api_key_header must not be 'authorization' (Bearer is always read)")
        object.__setattr__(self, "api_key_header", header)
        ids = [k.id for k in self.keys]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"API key id {twice[0]!r} is used twice")
        hashes = [k.hash for k in self.keys]
        if len(set(hashes)) != len(hashes):
            first = next(k.id for k in self.keys if hashes.count(k.hash) > 1)
            raise ValueError(f"API key {first!r} has the same hash as another key")
        if not self.keys and self.jwt is None and not self.allow_anonymous:
            raise ValueError(
                "authentication accepts nothing: configure API keys, jwt, or allow_anonymous"
            )


class Authenticator:
    """Turns request headers into an `Identity`, or refuses them with `Unauthorized`.

    Built once per policy snapshot (it precomputes the key index and the JWT keys) and
    shared by all requests; it holds no mutable state.
    """

    __slots__ = ("_by_hash", "_config", "_jwt_keys")

    def __init__(self, config: AuthConfig) -> None:
        self._config = config
        self._by_hash: dict[str, ApiKeyConfig] = {k.hash: k for k in config.keys}
        self._jwt_keys = _verification_keys(config.jwt) if config.jwt is not None else {}

    def __repr__(self) -> str:
        return f"Authenticator({self._config!r})"

    def authenticate(self, headers: Mapping[str, str], now: float) -> Identity:
        """The caller's identity, from headers with lower-cased names.

        When both the API key header and `authorization` are sent, the API key header
        is the credential. `now` is the wall time in unix seconds. Raises `Unauthorized` when the credential
        is missing (unless anonymous callers are allowed), unknown or invalid; its
        message says what is wrong without repeating the credential.
        """
        api_key = headers.get(self._config.api_key_header)
        if api_key is not None:
            return self._api_key(api_key.strip(), via_bearer=False)
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise self._unauthorized("unsupported authorization scheme; use Bearer")
            credential = credential.strip()
            if self._config.jwt is not None and credential.count(".") == 2:
                return self._token(credential, now)
            return self._api_key(credential, via_bearer=True)
        if self._config.allow_anonymous:
            return ANONYMOUS
        raise self._unauthorized("missing credentials", invalid=False)

    @staticmethod
    def authorize(identity: Identity, allowed_tenants: frozenset[str] | None, route: str) -> None:
        """Raise `Forbidden` unless the route's allow list admits the identity's tenant.

        None admits every authenticated caller but not anonymous ones: a route that is
        open to anonymous callers lists "anonymous" explicitly.
        """
        if allowed_tenants is None:
            if identity.method is AuthMethod.ANONYMOUS:
                raise Forbidden(f"route '{route}' requires credentials")
            return
        if identity.tenant not in allowed_tenants:
            raise Forbidden(f"tenant '{identity.tenant}' may not use route '{route}'")

    # --- API keys ----------------------------------------------------------------------------

    def _api_key(self, key: str, *, via_bearer: bool) -> Identity:
        if not key:
            raise self._unauthorized("empty credential")
        if len(key) > MAX_CREDENTIAL_LENGTH:
            raise self._unauthorized("credential too long")
        if not self._by_hash:
            hint = "malformed token" if via_bearer else "API keys are not accepted"
            raise self._unauthorized(hint)
        # A plain dict lookup is safe against timing attacks: what is compared is the
        # hash of the caller's own input, which tells them nothing about stored keys.
        found = self._by_hash.get(hash_key(key))
        if found is None:
            raise self._unauthorized("unknown API key")
        return Identity(found.tenant, found.id, AuthMethod.API_KEY)

    # --- JWTs --------------------------------------------------------------------------------

    def _token(self, token: str, now: float) -> Identity:
        config = self._config.jwt
        assert config is not None  # only called when JWTs are configured
        if len(token) > MAX_CREDENTIAL_LENGTH:
            raise self._unauthorized("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise self._unauthorized("malformed token") from None
        alg = header.get("alg")
        # The key is chosen by the token's algorithm from those configured, and PyJWT is
        # told to accept that algorithm only, so `none` and algorithm confusion fail here.
        if not isinstance(alg, str) or alg not in self._jwt_keys:
            raise self._unauthorized("token algorithm not accepted")
        key = self._jwt_keys[alg]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                options={
                    # Lifetimes are judged below against the injected `now`.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": list(config.required_claims),
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as e:
            raise self._unauthorized(_token_problem(e)) from None
        _check_lifetime(claims, now, config.leeway, self._unauthorized)
        tenant = claims.get(config.tenant_claim)
        if not isinstance(tenant, str) or not tenant.strip():
            raise self._unauthorized(f"token lacks the tenant claim '{config.tenant_claim}'")
        subject = claims.get("sub")
        return Identity(tenant, subject if isinstance(subject, str) else tenant, AuthMethod.JWT)

    # --- errors ------------------------------------------------------------------------------

    def _unauthorized(self, message: str, *, invalid: bool = True) -> Unauthorized:
        # RFC 6750 §3: a request without credentials gets a bare challenge; a bad one says
        # `invalid_token`. API keys ride on Bearer too, so Bearer is the one scheme named.
        challenge = f'Bearer realm="{REALM}"'
        if invalid:
            description = message.replace("\\", "").replace('"', "'")
            challenge += f', error="invalid_token", error_description="{description}"'
        return Unauthorized(message, headers={"WWW-Authenticate": challenge})


def _token_problem(e: jwt.PyJWTError) -> str:
    """What is wrong with a token, in words that never quote the token."""
    if isinstance(e, jwt.InvalidSignatureError):
        return "bad token signature"
    if isinstance(e, jwt.MissingRequiredClaimError):
        return f"token lacks the required claim '{e.claim}'"
    if isinstance(e, jwt.InvalidAudienceError):
        return "token audience not accepted"
    if isinstance(e, jwt.InvalidIssuerError):
        return "token issuer not accepted"
    if isinstance(e, jwt.InvalidAlgorithmError):
        return "token algorithm not accepted"
    if isinstance(e, jwt.DecodeError):
        return "malformed token"
    return "invalid token"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _check_lifetime(
    claims: Mapping[str, Any],
    now: float,
    leeway: float,
    unauthorized: Callable[[str], Unauthorized],
) -> None:
    """PyJWT's `exp`/`nbf`/`iat` rules, judged against the injected `now`."""
    for name in ("exp", "nbf", "iat"):
        if name in claims and _number(claims[name]) is None:
            raise unauthorized(f"token claim '{name}' is not a number")
    exp, nbf, iat = (_number(claims.get(n)) for n in ("exp", "nbf", "iat"))
    if exp is not None and exp <= now - leeway:
        raise unauthorized("token expired")
    if nbf is not None and nbf > now + leeway:
        raise unauthorized("token not yet valid")
    if iat is not None and iat > now + leeway:
        raise unauthorized("token issued in the future")


# --- secrets file ----------------------------------------------------------------------------


def _file_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("secrets", "{message}", {"message": message})


def _key_id(value: str) -> str:
    if not re.fullmatch(KEY_ID_PATTERN, value):
        raise _file_error(
            "must start with a letter or digit and hold only letters, digits and '_.:@-'"
        )
    return value


def _tenant(value: str) -> str:
    if not value.strip():
        raise _file_error("must not be empty")
    return value


def _key_hash(value: str) -> str:
    # Never echo the value: it may be the raw key, pasted where its hash belongs.
    if not re.fullmatch(HASH_PATTERN, value.lower()):
        raise _file_error("must be 'sha256:' and 64 hex digits (from `tailguard hash-key`)")
    return value.lower()


def _jwt_secret(value: str) -> str:
    if len(value.encode("utf-8")) < MIN_HS256_SECRET_BYTES:
        raise _file_error(f"must be at least {MIN_HS256_SECRET_BYTES} bytes")
    return value


KeyId = Annotated[str, AfterValidator(_key_id)]
Tenant = Annotated[str, AfterValidator(_tenant)]
KeyHash = Annotated[str, AfterValidator(_key_hash)]
JwtSecret = Annotated[str, AfterValidator(_jwt_secret)]


class ApiKeyModel(FrozenModel):
    id: KeyId
    tenant: Tenant
    hash: KeyHash = Field(repr=False)


class SecretsFileModel(FrozenModel):
    """A secrets file: API key hashes, and the HS256 secret kept out of the policy."""

    keys: tuple[ApiKeyModel, ...] = ()
    jwt_secret: JwtSecret | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _unique(self) -> SecretsFileModel:
        problems = _duplicate_keys(self.model_dump())
        if problems:
            raise checks_failed(*problems)
        return self


def _duplicate_keys(data: Any) -> list[Problem]:
    """Key ids and hashes used twice; reads plain data, so the loader can report them in
    the same pass as other problems of the file (malformed entries are skipped)."""
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list | tuple):
        return []
    problems: list[Problem] = []
    first: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        for name in ("id", "hash"):
            value = entry.get(name)
            if not isinstance(value, str):
                continue
            if name == "hash":
                value = value.lower()
            seen = first.setdefault((name, value), i)
            if seen != i:
                what = f"id '{value}' is used by" if name == "id" else "same hash as"
                problems.append((("keys", i, name), f"{what} keys[{seen}] too"))
    return problems


def _secrets_checks(data: Any, model: SecretsFileModel | None) -> list[Problem]:
    # A valid model has passed these already; when validation failed, run them on the
    # plain data so they show up in the same pass.
    return _duplicate_keys(data) if model is None else []


SECRETS_LOADER: ModelLoader[SecretsFileModel] = ModelLoader(SecretsFileModel, _secrets_checks)


def load_secrets_file(path: str | Path) -> tuple[tuple[ApiKeyConfig, ...], str | None]:
    """The API keys and the HS256 secret from a YAML secrets file.

    The file reads `{keys: [{id, tenant, hash}], jwt_secret: ...}`, both optional.
    Raises `PolicyError` listing every problem as FILE:LINE:COL (also when the file is
    unreadable); its messages never quote a hash or the secret.
    """
    model = SECRETS_LOADER.load(path)
    keys = tuple(ApiKeyConfig(k.id, k.tenant, k.hash) for k in model.keys)
    return keys, model.jwt_secret


# --- command line ----------------------------------------------------------------------------


def hash_key_main(argv: list[str] | None = None) -> int:
    """`tailguard hash-key [KEY]`: print the hash to put in a policy or secrets file.

    `argv` holds the arguments after the subcommand. The key is read from stdin when
    there is none, which keeps it out of shell history and process lists. Returns the
    exit status (2 when no key was given).
    """
    args = argv or []
    if len(args) > 1:
        print("usage: tailguard hash-key [KEY]  (or the key on stdin)", file=sys.stderr)
        return 2
    key = args[0] if args else sys.stdin.readline().rstrip("\r\n")
    if not key.strip():
        print("hash-key: no key given (pass it as the argument or on stdin)", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0
