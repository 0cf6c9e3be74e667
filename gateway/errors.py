"""The one exception tree of the gateway.

Library exceptions (aiohttp, redis, yaml) are translated into these at the
edge that calls the library, so the rest of the code and every client sees
one vocabulary. Each error that can reach a client carries its HTTP status and
a stable machine-readable `code` used in the JSON error body.
"""

from __future__ import annotations

from dataclasses import dataclass


class TailguardError(Exception):
    """Base of every error the gateway raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = headers or {}


# --- policy ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in a policy or rules file, located to the YAML node that caused it."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(TailguardError):
    """A policy file could not be accepted; `issues` lists every problem found in one pass."""

    code = "invalid_policy"
    status = 400

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid policy")


class StartupRefused(TailguardError):
    """The gateway will not serve as configured (an unsafe setting or environment)."""

    code = "startup_refused"


# --- client's fault (4xx) -------------------------------------------------------------------


class ClientError(TailguardError):
    """The request itself is wrong; nothing is counted against any backend."""

    status = 400
    code = "bad_request"


class ContractViolation(ClientError):
    """The request's inputs break the model's own metadata (a route with `contract:`)."""

    code = "contract_violation"


class RequestTimeout(ClientError):
    """The client did not deliver its request in time."""

    status = 408
    code = "request_timeout"


class RouteNotFound(ClientError):
    status = 404
    code = "route_not_found"


class BodyTooLarge(ClientError):
    status = 413
    code = "body_too_large"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class Forbidden(ClientError):
    status = 403
    code = "forbidden"


class HeadersTooLarge(ClientError):
    status = 431
    code = "headers_too_large"


class VersionNotSupported(ClientError):
    """Another HTTP version than 1.0 or 1.1: the client's doing, whatever the status class."""

    status = 505
    code = "http_version_not_supported"


class CodingNotImplemented(ClientError):
    """A transfer coding the gateway does not undo (RFC 9112 section 6.1)."""

    status = 501
    code = "transfer_coding_not_implemented"


class RateLimited(ClientError):
    status = 429
    code = "rate_limited"


# --- the gateway could not get an answer (5xx) ---------------------------------------------


class UpstreamUnavailable(TailguardError):
    """No attempt could produce an acceptable answer."""

    status = 502
    code = "upstream_failed"


class NoHealthyEndpoint(UpstreamUnavailable):
    """Every endpoint of the chosen backend is ejected, open, draining or unhealthy."""

    status = 503
    code = "no_healthy_endpoint"


class Shed(TailguardError):
    """Admission refused the request to protect the ones already admitted."""

    status = 503
    code = "overloaded"


class BudgetShed(Shed):
    """Refused while the route's SLO burns its error budget fast: low priorities go first.

    Not counted against the SLO itself: it is the policy protecting the budget.
    """

    code = "budget_shed"


class DeadlineExceeded(TailguardError):
    """The route's overall timeout ran out before an answer arrived."""

    status = 504
    code = "deadline_exceeded"


class StoreUnavailable(TailguardError):
    """The shared state store did not answer in time or at all.

    Never reaches a client: every caller falls back to local state (or to what the policy
    says for rate limits) and counts the miss.
    """

    status = 503
    code = "state_store_unavailable"


# --- attempt-level failure, raised by upstream transports --------------------------------


class AttemptFailed(TailguardError):
    """One attempt against one endpoint failed; `outcome` says how (see resilience.outcome)."""

    status = 502
    code = "upstream_failed"

    def __init__(self, outcome: object, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.retry_after = retry_after
