"""The operators' client of the admin API: `tailguard status`, `tailguard ctl ...`.

Both talk to a running gateway's admin listener over HTTP (standard library only, so the
client runs wherever Python does) and print what the gateway answered. Exit statuses let
scripts tell the two failures apart: 1 when the gateway refused the action (its message
is printed), 2 when it could not be asked at all (unreachable, bad usage).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway.errors import TailguardError

ADMIN_URL_ENV = "TAILGUARD_ADMIN_URL"
ADMIN_TOKEN_ENV = "TAILGUARD_ADMIN_TOKEN"
DEFAULT_ADMIN_URL = "http://127.0.0.1:9090"
DEFAULT_TIMEOUT = 10.0

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 2


class AdminRefused(TailguardError):
    """The gateway answered with an error status; `message` is the gateway's own words."""

    code = "admin_refused"

    def __init__(self, status: int, message: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: Mapping[str, Any] = body or {}


class AdminUnreachable(TailguardError):
    """No answer from the admin URL (connection refused, timeout, not HTTP, bad URL)."""

    code = "admin_unreachable"


@dataclass(frozen=True, slots=True)
class AdminClientConfig:
    """Where the admin API is and how to prove who is asking; the token is never printed."""

    url: str = DEFAULT_ADMIN_URL
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"admin URL must be http(s)://HOST:PORT, got {self.url!r}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout!r}")


class AdminClient:
    """Blocking calls to the admin API; each returns the decoded JSON answer or raises.

    Raises `AdminRefused` for an error status (print its message, exit 1) and
    `AdminUnreachable` when there was no HTTP answer (exit 2).
    """

    def __init__(self, config: AdminClientConfig) -> None:
        self._config = config

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> dict[str, Any]:
        url = self._config.url.rstrip("/") + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"accept": "application/json"}
        data: bytes | None = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["content-type"] = "application/json"
        elif text is not None:
            data = text.encode("utf-8")
            headers["content-type"] = "application/yaml"
        if self._config.token:
            headers["authorization"] = f"Bearer {self._config.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self._config.timeout) as resp:
                return _decode(resp.read())
        except urllib.error.HTTPError as e:
            body = _decode(e.read())
            raise AdminRefused(e.code, error_message(e.code, body), body) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise AdminUnreachable(f"cannot reach the admin API at {url}: {reason}") from None

    # --- the actions -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.call("GET", "/admin/status")

    def drain(self, backend: str, endpoint: str, *, drained: bool) -> dict[str, Any]:
        action = "drain" if drained else "undrain"
        body = {"backend": backend, "endpoint": endpoint}
        return self.call("POST", f"/admin/endpoints/{action}", json_body=body)

    def reset_breaker(self, backend: str, endpoint: str) -> dict[str, Any]:
        body = {"backend": backend, "endpoint": endpoint}
        return self.call("POST", "/admin/breakers/reset", json_body=body)

    def canary(self, route: str, action: str) -> dict[str, Any]:
        path = f"/admin/canary/{urllib.parse.quote(route, safe='')}/{action}"
        return self.call("POST", path)

    def slo(self) -> dict[str, Any]:
        return self.call("GET", "/admin/slo")

    def slo_override(self, route: str, seconds: float | None) -> dict[str, Any]:
        path = f"/admin/slo/{urllib.parse.quote(route, safe='')}/override"
        if seconds is None:
            return self.call("DELETE", path)
        return self.call("POST", path, json_body={"seconds": seconds})

    def switch_route(self, route: str, to: str | None) -> dict[str, Any]:
        path = f"/admin/routes/{urllib.parse.quote(route, safe='')}/switch"
        return self.call("POST", path, json_body={"to": to})

    def apply_policy(self, text: str, *, dry_run: bool, persist: bool) -> dict[str, Any]:
        query = {"dry_run": _flag(dry_run), "persist": _flag(persist)}
        return self.call("POST", "/admin/policy", query=query, text=text)

    def validate_policy(self, text: str) -> dict[str, Any]:
        return self.call("POST", "/admin/policy/validate", text=text)

    def reload(self) -> dict[str, Any]:
        return self.call("POST", "/admin/reload")

    def quality(self) -> dict[str, Any]:
        return self.call("GET", "/admin/quality")

    def quality_capture(
        self, route: str, backend: str | None, duration: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if backend is not None:
            body["backend"] = backend
        if duration is not None:
            body["for"] = duration
        return self.call("POST", f"/admin/quality/{_q(route)}/capture", json_body=body)

    def quality_reference(
        self, method: str, route: str, backend: str | None, profile: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        query = {"backend": backend} if backend is not None else None
        path = f"/admin/quality/{_q(route)}/reference"
        return self.call(method, path, query=query, json_body=profile)


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _decode(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {"text": raw.decode("utf-8", "replace")}
    return data if isinstance(data, dict) else {"value": data}


def error_message(status: int, body: Mapping[str, Any]) -> str:
    """The gateway's words: its error message, or the issues a refused policy has."""
    issues = body.get("issues")
    if isinstance(issues, list) and issues:
        return "\n".join(str(i) for i in issues)
    error = body.get("error")
    if isinstance(error, Mapping) and error.get("message"):
        return f"{error['message']} (HTTP {status})"
    if body.get("text"):
        return f"HTTP {status}: {str(body['text']).strip()[:500]}"
    return f"HTTP {status}"


# --- the status table ----------------------------------------------------------------------


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, a header row, no trailing blanks."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = [
        "  ".join(c.ljust(widths[i]) for i, c in enumerate(line)).rstrip()
        for line in [list(headers), *cells]
    ]
    return "\n".join(lines)


def _split_text(split: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{e.get('backend')} {_cell(e.get('weight'))}%" for e in split) or "-"


def _canary_text(canary: Mapping[str, Any] | None) -> str:
    if not canary:
        return "-"
    weight = canary.get("weight")
    parts = [str(canary.get("backend", "?"))]
    if weight is not None:
        parts.append(f"{_cell(float(weight))}%")
    if canary.get("phase"):
        parts.append(str(canary["phase"]))
    if canary.get("failed_checks"):
        parts.append(f"({canary['failed_checks']} failed checks)")
    last = canary.get("last_verdict")
    if isinstance(last, Mapping) and last.get("verdict"):
        parts.append(f"last {last['verdict']}")
    return " ".join(parts)


def _clock_time(value: object) -> str:
    """A wall-clock time (Unix seconds) as the UTC time of day; '?' when there is none."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return time.strftime("%H:%M:%SZ", time.gmtime(value))
    return "?"


def _endpoint_state(e: Mapping[str, Any]) -> str:
    """One word for the endpoint's part in routing: the most important reason first."""
    if e.get("draining"):
        return "draining"
    if e.get("ejected"):
        return "ejected"
    if e.get("suspect"):
        return "suspect"
    return "serving" if e.get("usable") else "unusable"


def _ms(value: object) -> str:
    return "-" if value is None else f"{float(value):.1f}"  # type: ignore[arg-type]


# state changes `tailguard status` lists (the newest; the admin API keeps more)
RECENT_SHOWN = 10


def render_status(status: Mapping[str, Any]) -> str:
    """The admin API's `/admin/status` answer as the tables `tailguard status` prints."""
    policy = status.get("policy") or {}
    store = status.get("store") or {}
    sha = str(policy.get("sha256") or "")[:12]
    header = (
        f"policy {policy.get('source', '?')} ({sha or '?'})  "
        f"ready {_cell(bool(status.get('ready')))}  region {status.get('region', '?')}  "
        f"store {store.get('kind', '?')}"
        + ("" if store.get("available", True) else " (unavailable: local state)")
    )
    routes = [
        (
            r.get("name"),
            f"all to {r['switched_to']} (switched)"
            if r.get("switched_to")
            else _split_text(r.get("split") or []),
            _canary_text(r.get("canary")),
            ", ".join(r.get("fallback") or []) or "-",
            r.get("timeout_s"),
        )
        for r in status.get("routes") or []
    ]
    endpoints = [
        (
            b.get("name"),
            e.get("url"),
            e.get("grpc") or "-",
            e.get("region"),
            _endpoint_state(e),
            e.get("health"),
            e.get("breaker"),
            e.get("ejected"),
            e.get("in_flight"),
            _ms(e.get("p50_ms")),
            _ms(e.get("p99_ms")),
        )
        for b in status.get("backends") or []
        for e in b.get("endpoints") or []
    ]
    parts = [
        header,
        "",
        render_table(("ROUTE", "SPLIT", "CANARY", "FALLBACK", "TIMEOUT s"), routes)
        if routes
        else "no routes",
        "",
        render_table(
            (
                "BACKEND",
                "ENDPOINT",
                "GRPC",
                "REGION",
                "STATE",
                "HEALTH",
                "BREAKER",
                "EJECTED",
                "IN-FLIGHT",
                "P50 ms",
                "P99 ms",
            ),
            endpoints,
        )
        if endpoints
        else "no endpoints",
    ]
    quality = render_quality(status.get("quality") or {})
    if quality:
        parts += ["", quality]
    slo = status.get("slo")
    if isinstance(slo, Mapping) and slo.get("slos"):
        parts += ["", render_slos(slo)]
    changes = list(status.get("recent_changes") or [])[-RECENT_SHOWN:]
    if changes:
        parts += ["", "recent state changes:"]
        parts += [f"  {_clock_time(c.get('time'))} {c.get('what')}" for c in changes]
    verdicts = [
        (r.get("name"), r["canary"]["last_verdict"])
        for r in status.get("routes") or []
        if isinstance(r.get("canary"), Mapping)
        and isinstance(r["canary"].get("last_verdict"), Mapping)
    ]
    if verdicts:
        parts += ["", "last canary verdicts:"]
        parts += [
            f"  {name}: {v.get('verdict')} at {_clock_time(v.get('time'))}: {v.get('reason')}"
            for name, v in verdicts
        ]
    decisions = status.get("canary_decisions") or []
    if decisions:
        parts += ["", "recent canary decisions:"]
        parts += [f"  {d.get('route')}: {d.get('action')}: {d.get('reason')}" for d in decisions]
    return "\n".join(parts)


def _score(best: Mapping[str, Any], stat: str) -> str:
    entry = best.get(stat)
    if not entry:
        return "-"
    mark = "!" if entry["value"] > entry["threshold"] else ""
    return f"{entry['value']:.3f}{mark}"


def render_quality(quality: Mapping[str, Any]) -> str:
    """Drift per route and backend (the worst score of each statistic) and shadow agreement."""
    drift_rows = []
    shadow_rows = []
    for route, entry in (quality.get("routes") or {}).items():
        for backend, b in (entry.get("backends") or {}).items():
            state = (
                "capturing"
                if b.get("capturing")
                else ("judged" if b.get("reference") else "no reference")
            )
            best = b.get("max") or {}
            drifted = b.get("drifted") or []
            drift_rows.append(
                (route, backend, state, b.get("window_exchanges"), _score(best, "psi"),
                 _score(best, "ks"), _score(best, "js"), ", ".join(drifted[:3]) + (" ..." if len(drifted) > 3 else "") or "-")
            )  # fmt: skip
        sh = entry.get("shadow")
        if sh:
            agreement = sh.get("agreement")
            shadow_rows.append(
                (route, sh.get("backend"), sh.get("pairs"),
                 "-" if agreement is None else f"{agreement * 100:.1f}%",
                 sh.get("mean_score_diff"), sh.get("mean_abs_token_diff"),
                 _ms(sh.get("primary_p99_ms")), _ms(sh.get("shadow_p99_ms")))
            )  # fmt: skip
    parts = []
    if drift_rows:
        parts.append(
            render_table(
                ("ROUTE", "BACKEND", "DRIFT", "WINDOW", "PSI", "KS", "JS", "DRIFTED FEATURES"),
                drift_rows,
            )
        )
    if shadow_rows:
        if parts:
            parts.append("")
        parts.append(
            render_table(
                (
                    "ROUTE",
                    "SHADOW",
                    "PAIRS",
                    "AGREEMENT",
                    "SCORE DIFF",
                    "TOKEN DIFF",
                    "PRIMARY P99 ms",
                    "SHADOW P99 ms",
                ),
                shadow_rows,
            )
        )
    queue = quality.get("queue") or {}
    if parts and queue.get("dropped"):
        parts.append(f"quality queue: {queue['dropped']} sampled answers dropped (worker behind)")
    return "\n".join(parts)


# the burn rate of each window as one character: below 1x the budget lasts the window
_SPARK = ((0.5, "▁"), (1.0, "▂"), (3.0, "▃"), (6.0, "▄"), (14.4, "▅"), (30.0, "▆"), (100.0, "▇"))


def burn_sparkline(windows: Sequence[Mapping[str, Any]]) -> str:
    """One character per window, shortest first: ▁ < 0.5x .. ▅ < 14.4x .. █ >= 100x, · no data."""
    out = []
    for w in windows:
        rate = w.get("burn_rate")
        if rate is None:
            out.append("·")
            continue
        out.append(next((c for limit, c in _SPARK if float(rate) < limit), "█"))
    return "".join(out)


def _burn(rate: object) -> str:
    return "-" if rate is None else f"{float(rate):.1f}x"  # type: ignore[arg-type]


def _slo_state(slo: Mapping[str, Any]) -> str:
    if slo.get("fast_burn"):
        return "FAST BURN (page)"
    severity = slo.get("severity")
    if severity == "page":
        return "burning (page)"
    if severity == "ticket":
        return "burning (ticket)"
    return "ok"


def _route_budget_text(r: Mapping[str, Any]) -> str | None:
    acting = []
    if r.get("freeze_canary"):
        acting.append("canary frozen")
    if r.get("rollback_canary"):
        acting.append("canary rolled back")
    if r.get("shed_priority") is not None:
        acting.append(f"shedding priority <= {r['shed_priority']}")
    if r.get("overridden"):
        acting.append("overridden by an operator")
    if not acting and not r.get("burning"):
        return None
    return f"  {r.get('route')}: {', '.join(acting) or 'burning'}: {r.get('reason')}"


def render_slos(state: Mapping[str, Any]) -> str:
    """The SLO part of `tailguard status`: budgets, burn rates, and what the policy does."""
    slos = state.get("slos") or []
    if not slos:
        return "no SLOs"
    rows = []
    for s in slos:
        windows = s.get("windows") or []
        by_name = {str(w.get("window")): w for w in windows}
        remaining = s.get("budget_remaining")
        rows.append(
            (
                s.get("name"),
                ",".join(s.get("routes") or []),
                f"{s.get('kind')} {float(s.get('objective') or 0) * 100:g}%",
                "-" if remaining is None else f"{float(remaining) * 100:.1f}%",
                _burn((by_name.get("5m") or {}).get("burn_rate")),
                _burn((by_name.get("1h") or {}).get("burn_rate")),
                _burn((by_name.get("6h") or {}).get("burn_rate")),
                _burn((by_name.get("3d") or {}).get("burn_rate")),
                burn_sparkline(windows),
                _slo_state(s),
            )
        )
    table = render_table(
        ("SLO", "ROUTES", "OBJECTIVE", "BUDGET LEFT", "BURN 5m", "1h", "6h", "3d",
         "5m..3d", "STATE"),
        rows,
    )  # fmt: skip
    lines = [table]
    acting = [t for r in state.get("routes") or [] if (t := _route_budget_text(r)) is not None]
    if acting:
        lines += ["", "error-budget policy:", *acting]
    return "\n".join(lines)


def render_reload(result: Mapping[str, Any]) -> str:
    """A reload, apply or validation answer in a line or two."""
    sha = str(result.get("sha256") or "")[:12]
    changes = ", ".join(result.get("changes") or []) or "no changes"
    if result.get("dry_run"):
        return f"policy {sha} is valid ({changes}); nothing applied (dry run)"
    if result.get("applied"):
        return f"policy {sha} applied: {changes}"
    return f"policy {sha} not applied"


# --- the commands --------------------------------------------------------------------------


def add_client_options(p: argparse.ArgumentParser, *, repeat: bool = False) -> None:
    """--admin, --token, --timeout; `repeat` adds them again to an action's own parser.

    Repeated options default to SUPPRESS so that an action's parser leaves the values given
    before the action alone: both `ctl --admin URL reload` and `ctl reload --admin URL` work.
    """
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if repeat else {}
    p.add_argument(
        "--admin",
        metavar="URL",
        help=f"admin API URL (default ${ADMIN_URL_ENV} or {DEFAULT_ADMIN_URL})",
        **({"default": None} | kw),
    )
    p.add_argument(
        "--token",
        help=f"admin token (default ${ADMIN_TOKEN_ENV}; never logged)",
        **({"default": None} | kw),
    )
    p.add_argument(
        "--timeout", type=float, help="seconds per call", **({"default": DEFAULT_TIMEOUT} | kw)
    )


def add_status_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="print a running gateway's routes, backends and endpoints")
    add_client_options(p)
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")


def add_ctl_parser(sub: Any) -> None:
    p = sub.add_parser("ctl", help="act on a running gateway through its admin API")
    add_client_options(p)
    acts = p.add_subparsers(dest="action", required=True)
    for name, what in (("drain", "stop new traffic to"), ("undrain", "send traffic again to")):
        d = _action(acts, name, f"{what} one endpoint (in-flight requests finish)")
        d.add_argument("endpoint", help="the endpoint URL as in the policy")
        d.add_argument("--backend", help="the backend (needed only if several list the URL)")
    c = _action(acts, "canary", "promote, pause, resume or roll back a route's canary")
    c.add_argument("route")
    c.add_argument("verb", choices=("promote", "pause", "resume", "rollback"))
    rt = acts.add_parser("route", help="blue/green: switch a route to one backend and back")
    rts = rt.add_subparsers(dest="route_action", required=True)
    sw = _action(
        rts, "switch", "send all of ROUTE's traffic to one backend (every replica follows)"
    )
    sw.add_argument("route")
    to = sw.add_mutually_exclusive_group(required=True)
    to.add_argument("--to", metavar="BACKEND", help="the backend to send everything to")
    to.add_argument("--back", action="store_true", help="return the route to its policy split")
    pol = acts.add_parser("policy", help="apply or validate a policy file").add_subparsers(
        dest="policy_action", required=True
    )
    apply = _action(pol, "apply", "validate and swap in FILE (the gateway keeps it)")
    apply.add_argument("file")
    apply.add_argument("--dry-run", action="store_true", help="validate and diff only")
    apply.add_argument(
        "--no-persist", action="store_true", help="do not write it over the gateway's policy file"
    )
    val = _action(pol, "validate", "have the gateway check FILE; nothing changes")
    val.add_argument("file")
    _action(acts, "reload", "re-read the gateway's own policy file")
    slo = acts.add_parser("slo", help="SLOs and the error-budget policy").add_subparsers(
        dest="slo_action", required=True
    )
    _action(slo, "show", "print every SLO's budget and burn rates")
    ov = _action(slo, "override", "suspend the error-budget policy on ROUTE for a while")
    ov.add_argument("route")
    ov.add_argument(
        "--until", required=True, metavar="DURATION", help="how long, like 30m, 1h or 1d"
    )
    clear = _action(slo, "clear", "end an override now: the policy applies again")
    clear.add_argument("route")
    br = acts.add_parser("breaker", help="circuit breaker actions").add_subparsers(
        dest="breaker_action", required=True
    )
    reset = _action(br, "reset", "close one endpoint's breaker")
    reset.add_argument("endpoint")
    reset.add_argument("--backend", help="the backend (needed only if several list the URL)")
    qa = acts.add_parser("quality", help="drift references and scores").add_subparsers(
        dest="quality_action", required=True
    )
    cap = _action(qa, "capture", "take ROUTE's drift reference from live traffic")
    cap.add_argument("route")
    cap.add_argument("--backend", help="one backend of the route (default: each of them)")
    cap.add_argument(
        "--for", dest="duration", metavar="DURATION",
        help="record the next DURATION (like 1h) as the reference; default: the current window",
    )  # fmt: skip
    show = _action(qa, "show", "print drift scores (all routes, or ROUTE)")
    show.add_argument("route", nargs="?")
    exp = _action(qa, "export", "write ROUTE's reference of BACKEND to a file")
    exp.add_argument("route")
    exp.add_argument("--backend", required=True)
    exp.add_argument("-o", "--output", required=True, metavar="FILE")
    load = _action(qa, "load", "make FILE (an exported reference) ROUTE's reference of BACKEND")
    load.add_argument("route")
    load.add_argument("file")
    load.add_argument("--backend", required=True)
    clear = _action(qa, "clear", "forget ROUTE's references (one backend, or all)")
    clear.add_argument("route")
    clear.add_argument("--backend")


def _action(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    add_client_options(p, repeat=True)
    return p


class UsageError(TailguardError):
    """The command line cannot be carried out as given (exit 2)."""

    code = "usage"


def client_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> AdminClient:
    url = args.admin or env.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL
    token = args.token or env.get(ADMIN_TOKEN_ENV) or None
    try:
        return AdminClient(AdminClientConfig(url, token, args.timeout))
    except ValueError as e:
        raise UsageError(str(e)) from None


def status_main(
    args: argparse.Namespace, *, env: Mapping[str, str] | None = None, out: TextIO | None = None
) -> int:
    """`tailguard status`; returns the exit status."""
    out = out or sys.stdout
    return _guarded(lambda: _status(client_from_args(args, _env(env)), args, out))


def _status(client: AdminClient, args: argparse.Namespace, out: TextIO) -> int:
    status = client.status()
    out.write((json.dumps(status, indent=2) if args.json else render_status(status)) + "\n")
    return EXIT_OK


def ctl_main(
    args: argparse.Namespace, *, env: Mapping[str, str] | None = None, out: TextIO | None = None
) -> int:
    """`tailguard ctl ...`; returns the exit status."""
    out = out or sys.stdout
    return _guarded(lambda: _ctl(client_from_args(args, _env(env)), args, out))


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _guarded(run: Any) -> int:
    try:
        code: int = run()
    except AdminRefused as e:
        print(f"refused: {e.message}", file=sys.stderr)
        return EXIT_REFUSED
    except (AdminUnreachable, UsageError) as e:
        print(e.message, file=sys.stderr)
        return EXIT_UNREACHABLE
    return code


def _ctl(client: AdminClient, args: argparse.Namespace, out: TextIO) -> int:
    action = args.action
    if action in ("drain", "undrain"):
        backend = args.backend or _backend_of(client, args.endpoint)
        r = client.drain(backend, args.endpoint, drained=action == "drain")
        state = "draining" if r.get("draining") else "serving"
        out.write(f"{r.get('endpoint')} of backend {r.get('backend')}: {state}\n")
    elif action == "canary":
        d = client.canary(args.route, args.verb)
        out.write(f"canary of {d.get('route')}: {d.get('action')}: {d.get('reason')}\n")
    elif action == "route":
        r = client.switch_route(args.route, None if args.back else args.to)
        where = f"backend {r.get('to')}" if r.get("to") else "its policy split"
        out.write(f"route {r.get('route')} now sends all traffic to {where}\n")
    elif action == "policy":
        text = _read_policy(args.file)
        if args.policy_action == "validate":
            r = client.validate_policy(text)
            out.write(f"{args.file}: ok ({render_reload(r)})\n")
        else:
            r = client.apply_policy(text, dry_run=args.dry_run, persist=not args.no_persist)
            out.write(render_reload(r) + "\n")
    elif action == "reload":
        out.write(render_reload(client.reload()) + "\n")
    elif action == "slo":
        if args.slo_action == "show":
            out.write(render_slos(client.slo()) + "\n")
        else:
            seconds = _window(args.until) if args.slo_action == "override" else None
            r = client.slo_override(args.route, seconds)
            until = r.get("override_until")
            state = "overridden until " + _when(until) if until else "enforced"
            out.write(f"error-budget policy of route {r.get('route')}: {state}\n")
    elif action == "breaker":
        backend = args.backend or _backend_of(client, args.endpoint)
        r = client.reset_breaker(backend, args.endpoint)
        out.write(f"breaker of {r.get('endpoint')} ({r.get('backend')}): {r.get('breaker')}\n")
    elif action == "quality":
        _quality(client, args, out)
    else:  # pragma: no cover - argparse allows only the actions above
        raise UsageError(f"unknown action {action!r}")
    return EXIT_OK


def _quality(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    what = args.quality_action
    if what == "capture":
        r = client.quality_capture(args.route, args.backend, args.duration)
        for backend, v in (r.get("backends") or {}).items():
            if "capturing_for_s" in v:
                text = f"recording the next {_cell(float(v['capturing_for_s']))} s"
            elif "skipped" in v:
                text = f"skipped: {v['skipped']}"
            else:
                text = f"reference taken from {v.get('exchanges')} sampled answers"
            out.write(f"{args.route}/{backend}: {text}\n")
    elif what == "show":
        state = client.quality()
        for route, entry in (state.get("routes") or {}).items():
            if args.route and route != args.route:
                continue
            q = entry.get("quality") or {}
            for backend, b in (q.get("backends") or {}).items():
                rows = [
                    (s["feature"], s["stat"], "-" if s["value"] is None else f"{s['value']:.4f}",
                     s["threshold"], s["reference_n"], s["current_n"],
                     "DRIFT" if s["drifted"] else ("-" if s["value"] is None else "ok"))
                    for s in b.get("scores") or []
                ]  # fmt: skip
                out.write(f"{route}/{backend}:\n")
                if rows:
                    out.write(render_table(("FEATURE", "STAT", "SCORE", "THRESHOLD", "REF N", "CUR N", ""), rows) + "\n")  # fmt: skip
                elif b.get("reference"):
                    out.write("  reference in place, not scored yet (scores come every second)\n")
                else:
                    out.write("  no reference yet (tailguard ctl quality capture)\n")
    elif what == "export":
        profile = client.quality_reference("GET", args.route, args.backend)
        try:
            Path(args.output).write_text(json.dumps(profile), encoding="utf-8")
        except OSError as e:
            raise UsageError(f"{args.output}: cannot write: {e.strerror or e}") from None
        out.write(f"{args.route}/{args.backend}: reference written to {args.output}\n")
    elif what == "load":
        try:
            profile = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except OSError as e:
            raise UsageError(f"{args.file}: cannot read: {e.strerror or e}") from None
        except ValueError as e:
            raise UsageError(f"{args.file}: not JSON: {e}") from None
        r = client.quality_reference("PUT", args.route, args.backend, profile)
        out.write(f"{args.route}/{args.backend}: reference loaded ({r.get('exchanges')} answers)\n")
    else:
        r = client.quality_reference("DELETE", args.route, args.backend)
        out.write(f"{args.route}: references cleared for {', '.join(r.get('cleared') or [])}\n")


def _window(text: str) -> float:
    from pydantic_core import PydanticCustomError

    from gateway.policy.units import parse_window

    try:
        return parse_window(text)
    except PydanticCustomError as e:
        raise UsageError(f"--until {text!r}: {e.message()}") from None


def _when(wall: object) -> str:
    import time

    seconds = float(wall)  # type: ignore[arg-type]
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))


def _read_policy(name: str) -> str:
    try:
        return Path(name).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{name}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{name}:1:1: not UTF-8 text") from None


def _backend_of(client: AdminClient, endpoint: str) -> str:
    """The one backend listing `endpoint`; operators name only the URL in the common case."""
    url = endpoint.rstrip("/")
    names = [
        str(b.get("name"))
        for b in client.status().get("backends") or []
        if any(str(e.get("url", "")).rstrip("/") == url for e in b.get("endpoints") or [])
    ]
    if not names:
        raise AdminRefused(404, f"no backend has the endpoint {endpoint}")
    if len(names) > 1:
        raise UsageError(f"{endpoint} belongs to backends {', '.join(names)}: give --backend")
    return names[0]


def hash_key_command(argv: Sequence[str]) -> int:
    """`tailguard hash-key [KEY]`: the stored form of an API key or admin token."""
    from gateway.auth import hash_key_main

    return hash_key_main(list(argv))


__all__ = [
    "AdminClient",
    "AdminClientConfig",
    "AdminRefused",
    "AdminUnreachable",
    "UsageError",
    "add_ctl_parser",
    "add_status_parser",
    "burn_sparkline",
    "ctl_main",
    "error_message",
    "hash_key_command",
    "render_reload",
    "render_slos",
    "render_status",
    "render_table",
    "status_main",
]
