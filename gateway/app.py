"""The composition root: the only place that makes and wires the gateway's parts.

Registries, stores and metrics are objects made here and passed in; nothing in
the gateway is global. `Gateway` owns the running snapshot (swapped by
reference), the listeners, the control loops and the order of shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import os
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from opentelemetry.sdk.trace import SpanProcessor

from gateway import __version__
from gateway.auth import ApiKeyConfig, AuthConfig, Authenticator, JwtConfig, load_secrets_file
from gateway.clock import Clock, MonotonicClock
from gateway.control.canary import CanaryController
from gateway.control.health import HealthChecker
from gateway.control.peers import PeerNotifier
from gateway.control.reloader import FileWatcher, ReloadResult
from gateway.control.slo import SloController
from gateway.control.switch import RouteSwitches
from gateway.errors import PolicyError, PolicyIssue, RouteNotFound, StartupRefused
from gateway.fallback.rules import RuleSet, load_rules
from gateway.policy.compile import GatewaySettings, Snapshot, StateSettings, compile_policy
from gateway.policy.load import YamlDocument, load_policy_text, read_yaml
from gateway.policy.model import PolicyModel
from gateway.proxy.admission import AdmissionGates
from gateway.proxy.attempts import AttemptRunner
from gateway.proxy.budgetshed import BudgetShedStage
from gateway.proxy.contract import ContractStage, ModelContracts
from gateway.proxy.exchange import Exchange
from gateway.proxy.fallback import FallbackStage, ResponseCaches
from gateway.proxy.grpc_edge import GrpcEdge, server_options
from gateway.proxy.guards import AuthenticateStage, AuthorizeStage
from gateway.proxy.h1_server import H1Listener
from gateway.proxy.listener import GuardedAppRunner, GuardedServer, parser_problem
from gateway.proxy.pipeline import (
    AdmitStage,
    Answer,
    AttemptStage,
    BodyStage,
    ExchangeReporter,
    Handler,
    ObserveStage,
    RouteStage,
    Stage,
    compose,
)
from gateway.proxy.ratelimit import RateLimitStage
from gateway.proxy.server import ProxyServer
from gateway.proxy.transports import Transports
from gateway.quality.monitor import QualityMonitor
from gateway.resilience.breaker import BreakerState
from gateway.state.memory import MemoryStore
from gateway.state.store import StateStore
from gateway.telemetry.access import AccessLog
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.catalog import BREAKER_STATE_VALUE, Metrics
from gateway.telemetry.changes import StateChanges
from gateway.telemetry.explain import Explanations
from gateway.telemetry.runtime import GcPauseProbe, LoopLagProbe
from gateway.telemetry.tracing import Tracing

log = logging.getLogger("tailguard")
# state changes as structured events, when the access log is not their stream
events_log = logging.getLogger("tailguard.events")

REGION_ENV = "TAILGUARD_REGION"


@dataclass(frozen=True, slots=True)
class Serving:
    """A snapshot and the request path composed for it, swapped in together by one reference."""

    snapshot: Snapshot
    handler: Handler


@dataclass(frozen=True, slots=True)
class Listening:
    """Where a started gateway actually listens (port 0 in the policy picks a free port)."""

    host: str
    port: int
    admin_host: str
    admin_port: int
    scheme: str = "http"
    admin_scheme: str = "http"
    grpc_port: int | None = None  # the gRPC listener's, when the policy asks for one

    @property
    def grpc_address(self) -> str:
        """`host:port` of the gRPC listener, as a gRPC client dials it."""
        if self.grpc_port is None:
            raise RuntimeError("the gateway has no gRPC listener (gateway.grpc_listen)")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"{self.admin_scheme}://{self.admin_host}:{self.admin_port}"


def compile_file(
    path: str | Path, *, previous: Snapshot | None = None, gateway: Gateway | None = None
) -> Snapshot:
    """Load, validate and compile a policy file; raises `PolicyError` with every issue."""
    text = Path(path).read_text(encoding="utf-8")
    return compile_text(text, str(path), previous=previous, gateway=gateway)


def compile_text(
    text: str,
    source: str,
    *,
    previous: Snapshot | None = None,
    gateway: Gateway | None = None,
    base_dir: Path | None = None,
) -> Snapshot:
    """Validate and compile policy text; rule files are read relative to `base_dir`.

    Raises `PolicyError` with every issue of the policy and of the rule files it names.
    """
    return _build(text, source, previous=previous, gateway=gateway, base_dir=base_dir)[1]


def _build(
    text: str,
    source: str,
    *,
    previous: Snapshot | None = None,
    gateway: Gateway | None = None,
    base_dir: Path | None = None,
) -> tuple[PolicyModel, Snapshot]:
    model = load_policy_text(text, source)
    base = base_dir or Path(source).parent
    rules = load_rule_files(model, text, source, base)
    auth = load_auth(model, text, source, base)
    snapshot = compile_policy(
        model,
        source=source,
        text=text,
        region=os.environ.get(REGION_ENV) or None,
        previous=previous,
        on_breaker_transition=gateway.on_breaker_transition if gateway else None,
        rules=rules,
        auth=auth,
    )
    return model, snapshot


def policy_changes(old: PolicyModel, new: PolicyModel) -> tuple[str, ...]:
    """A summary of what differs, by section, backend and route name (for humans and audit)."""
    out: list[str] = []
    for section in ("gateway", "state"):
        if getattr(old, section) != getattr(new, section):
            out.append(f"{section} changed")
    for kind, before, after in (
        ("backend", dict(old.backends.items()), dict(new.backends.items())),
        ("route", {r.name: r for r in old.routes}, {r.name: r for r in new.routes}),
        ("slo", dict(old.slos.items()), dict(new.slos.items())),
    ):
        out.extend(f"{kind} {n} added" for n in after if n not in before)
        out.extend(f"{kind} {n} removed" for n in before if n not in after)
        out.extend(f"{kind} {n} changed" for n in after if n in before and after[n] != before[n])
    if [r.name for r in old.routes if r.name in {x.name for x in new.routes}] != [
        r.name for r in new.routes if r.name in {x.name for x in old.routes}
    ]:
        out.append("route order changed")
    return tuple(out)


def load_rule_files(
    model: PolicyModel, text: str, source: str, base_dir: Path
) -> dict[str, RuleSet]:
    """Every rules file the policy names, loaded once; all their issues in one PolicyError."""
    loaded: dict[str, RuleSet] = {}
    issues: list[PolicyIssue] = []
    for i, route in enumerate(model.routes):
        for k, step in enumerate(route.fallback):
            name = step.rules
            if name is None or name in loaded:
                continue
            path = Path(name) if Path(name).is_absolute() else base_dir / name
            try:
                loaded[name] = load_rules(path)
            except PolicyError as e:
                issues.extend(e.issues)
            except OSError as e:
                doc, _ = read_yaml(text, source)
                loc = ("routes", i, "fallback", k, "rules")
                message = f"cannot read rules file {path}: {e.strerror or e}"
                issues.append(
                    doc.issue(loc, message) if doc else PolicyIssue(source, 1, 1, "", message)
                )
    if issues:
        raise PolicyError(issues)
    return loaded


def load_auth(model: PolicyModel, text: str, source: str, base_dir: Path) -> Authenticator | None:
    """The authenticator the policy's `auth:` section describes, secrets read from their files.

    Secrets come from a secrets file or the environment, never from the policy text itself,
    and never appear in an error message.
    """
    a = model.auth
    if a is None:
        return None
    doc: YamlDocument | None = None

    def issue(loc: tuple[str | int, ...], message: str) -> PolicyError:
        nonlocal doc
        if doc is None:
            doc, _ = read_yaml(text, source)
        where = doc.issue(loc, message) if doc else PolicyIssue(source, 1, 1, "", message)
        return PolicyError([where])

    keys = [ApiKeyConfig(k.id, k.tenant, k.hash) for k in a.keys]
    jwt_secret = None
    if a.secrets_file is not None:
        path = _resolve(a.secrets_file, base_dir)
        try:
            file_keys, jwt_secret = load_secrets_file(path)
        except OSError as e:
            raise issue(
                ("auth", "secrets_file"), f"cannot read {path}: {e.strerror or e}"
            ) from None
        keys.extend(file_keys)
    jwt_config = None
    if a.jwt is not None:
        j = a.jwt
        secret = None
        if j.secret_env is not None:
            secret = os.environ.get(j.secret_env) or jwt_secret
            if secret is None:
                raise issue(
                    ("auth", "jwt", "secret_env"), f"environment variable {j.secret_env} is not set"
                )
        public_key = None
        if j.public_key_file is not None:
            path = _resolve(j.public_key_file, base_dir)
            try:
                public_key = path.read_text(encoding="utf-8")
            except OSError as e:
                raise issue(
                    ("auth", "jwt", "public_key_file"), f"cannot read {path}: {e.strerror or e}"
                ) from None
        try:
            jwt_config = JwtConfig(
                algorithms=tuple(j.algorithms),
                secret=secret,
                public_key=public_key,
                issuer=j.issuer,
                audience=j.audience,
                tenant_claim=j.tenant_claim,
                leeway=j.leeway,
            )
        except ValueError as e:
            raise issue(("auth", "jwt"), str(e)) from None
    try:
        config = AuthConfig(
            api_key_header=a.api_key_header,
            keys=tuple(keys),
            jwt=jwt_config,
            allow_anonymous=a.allow_anonymous,
        )
    except ValueError as e:
        raise issue(("auth",), str(e)) from None
    return Authenticator(config)


def _resolve(name: str, base_dir: Path) -> Path:
    return Path(name) if Path(name).is_absolute() else base_dir / name


def make_store(
    settings: StateSettings,
    clock: Clock,
    metrics: Metrics,
    on_change: Callable[[bool, str], None] | None = None,
) -> StateStore:
    """The state store the policy asks for (chosen at start; changing it needs a restart).

    `on_change(up, why)` hears when a shared store goes away and comes back.
    """
    if settings.store == "redis" and settings.url:
        from gateway.state.redis import RedisStore

        return RedisStore(
            settings.url,
            clock=clock,
            metrics=metrics,
            timeout=settings.timeout,
            retry_after=settings.retry_after,
            prefix=settings.key_prefix,
            on_change=on_change,
        )
    return MemoryStore(clock)


class Gateway:
    """A running gateway: data listener, admin listener, control loops, current snapshot."""

    def __init__(
        self,
        policy_path: str | Path,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        listen: tuple[str, int] | None = None,
        admin_listen: tuple[str, int] | None = None,
        audit_log: str | Path | None = None,
        watch: bool = False,
        reuse_port: bool = False,
        span_processor: SpanProcessor | None = None,
        grpc_listen: tuple[str, int] | None = None,
        listener: str | None = None,
    ) -> None:
        self.policy_path = Path(policy_path)
        # the data listener's kind when the caller overrides the policy's (tests run both)
        self._listener_override = listener
        self._grpc_override = grpc_listen
        self._reuse_port = reuse_port
        self.clock = clock or MonotonicClock()
        self.rng = rng or random.Random()
        self.metrics = Metrics()
        # recent state changes for the status page: breakers, health, ejections, drains,
        # canary steps, reloads (made first: compiling the policy may move a breaker)
        self.changes = StateChanges(self.clock)
        self.changes.sink = self._state_event
        self._listen_override = listen
        self._admin_override = admin_listen
        self.audit = AuditLog(audit_log, self.clock)
        text = self.policy_path.read_text(encoding="utf-8")
        self.model, snapshot = _build(text, str(self.policy_path), gateway=self)
        self._serving = Serving(snapshot, _never)
        self.policy_text = text  # what runs, which the file may no longer say
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self.watcher = (
            FileWatcher(self.watched_files, lambda: self.reload(actor="file-watch"))
            if watch
            else None
        )
        self.transports = Transports()
        self.runner = AttemptRunner(
            self.transports,
            self.metrics,
            self.clock,
            self.rng,
            lambda: self.snapshot.settings.deadline_header,
        )
        self.gates = AdmissionGates(self.clock, self.metrics)
        self.local_store = MemoryStore(self.clock)
        self.store = make_store(
            self.snapshot.settings.state, self.clock, self.metrics, self._store_changed
        )
        self.peers = PeerNotifier(self.store, lambda: self.snapshot, self.metrics, self.clock)
        self.runner.on_ejection = lambda b, e: self.peers.notify(b, e, "ejected")
        self.runner.changes = self.changes
        self.caches = ResponseCaches(self.store, self.metrics, self.clock)
        self.canary = CanaryController(
            lambda: self.snapshot, self.metrics, self.clock, self.audit, self.store,
            self.peers.replica,
        )  # fmt: skip
        self.canary.changes = self.changes
        self.canary.sync(self.snapshot)
        self.switches = RouteSwitches(
            lambda: self.snapshot, self.metrics, self.clock, self.audit, self.store,
            self.peers.replica,
        )  # fmt: skip
        self.switches.sync(self.snapshot)
        self.quality = QualityMonitor(
            lambda: self.snapshot, self.metrics, self.clock, self.rng, self.store,
            self.transports, self.audit, self.peers.replica, self.canary,
            queue=snapshot.settings.quality_queue,
        )  # fmt: skip
        self.quality.sync(snapshot)
        self.slo = SloController(
            lambda: self.snapshot, self.metrics, self.clock, self.audit, self.store, self.canary,
            self.peers.replica,
        )  # fmt: skip
        self.slo.sync(snapshot)
        self._observe = ObserveStage()
        self._reporter = ExchangeReporter(
            self.metrics, self.clock, self.canary, self.slo, quality=self.quality.tap
        )
        self.explanations = Explanations()
        self._reporter.explanations = self.explanations
        self.loop_lag = LoopLagProbe(self.metrics)
        self.gc_pauses = GcPauseProbe(self.metrics)
        self.access_log: AccessLog | None = None
        # tracing is set up once, from the policy the gateway starts with (a restart changes it)
        self.tracing: Tracing | None = None
        tracing = snapshot.settings.telemetry.tracing
        if tracing is not None and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true":
            self.tracing = Tracing(tracing, processor=span_processor)
            self._reporter.tracer = self.tracing
        self._authenticate = AuthenticateStage(self.metrics, self.clock)
        self._authorize = AuthorizeStage(self.metrics)
        self._body = BodyStage()
        self._rate_limit = RateLimitStage(self.store, self.local_store, self.metrics, self.clock)
        self._budget_shed = BudgetShedStage(self.slo.shed_level, self.metrics)
        self.contracts = ModelContracts(self.transports, self.clock)
        self._contract = ContractStage(self.contracts, self.metrics)
        self._fallback = FallbackStage(self.runner, self.caches, self.metrics, self.clock)
        self._admit = AdmitStage(self.gates, self.clock)
        self._attempt = AttemptStage(self.runner, self.clock)
        self._adopt(snapshot)
        self.proxy = ProxyServer(lambda: self._serving, self._reporter, self.clock)
        self.grpc_edge = GrpcEdge(lambda: self._serving, self._reporter, self.clock)
        self._grpc_server: grpc.aio.Server | None = None
        self.health = HealthChecker(
            lambda: self.snapshot, self.transports, self.metrics, self.clock, self.rng,
            changes=self.changes,
        )  # fmt: skip
        self.ready = False
        self.listening: Listening | None = None
        self._runners: list[web.BaseRunner] = []
        self._h1_listener: H1Listener | None = None
        self._data_server: GuardedServer | None = None
        self._publish_policy()

    # --- policy ----------------------------------------------------------------------------

    def _assemble(self, snapshot: Snapshot) -> Serving:
        """Compose the request path of a snapshot before it serves: only the stages it uses.

        One ordered list for the whole house (observe, authenticate, route, authorize, rate
        limit, body, contract, fallback, admit, attempt); a stage a route does not need is left out of
        that route's chain rather than asked on every request. The composition lives beside
        the snapshot, never on it: a compiled snapshot is not changed after compile.
        """
        global_limit = snapshot.settings.max_concurrency is not None
        chains: dict[str, Handler] = {}
        shedding = self.slo.shedding_routes(snapshot)
        for route in snapshot.routes:
            stages: list[Stage] = []
            if snapshot.auth is not None:
                stages.append(self._authorize)  # every route of a policy with auth
            if route.rate_limit is not None:
                stages.append(self._rate_limit)
            if route.name in shedding:
                stages.append(self._budget_shed)
            stages.append(self._body)
            if route.contract is not None:
                stages.append(self._contract)
            if route.cache is not None or route.fallback is not None:
                stages.append(self._fallback)
            if global_limit or route.admission is not None:
                stages.append(self._admit)
            stages.append(self._attempt)
            chains[route.name] = compose(stages, _never)
        outer: list[Stage] = [self._observe]
        if snapshot.auth is not None:
            outer.append(self._authenticate)
        outer.append(RouteStage(self.rng, chains, self.explanations))
        return Serving(snapshot, compose(outer, _never))

    @property
    def snapshot(self) -> Snapshot:
        """The running policy (requests take it once, at their start)."""
        return self._serving.snapshot

    def _adopt(self, snapshot: Snapshot) -> None:
        self._serving = self._assemble(snapshot)
        telemetry = snapshot.settings.telemetry
        self._reporter.tenants.set_limit(telemetry.max_label_values)
        self._reporter.models.set_limit(telemetry.max_label_values)
        self._reporter.model_metrics = telemetry.model_metrics
        if self.access_log is not None and telemetry.access_log is not None:
            self.access_log.set_sample(telemetry.access_log.sample)

    def _state_event(self, entry: dict[str, object]) -> None:
        """A state change as a structured event: the access log's stream when it is on."""
        access = getattr(self, "access_log", None)
        if access is not None:
            access.event(entry)
        elif events_log.isEnabledFor(logging.INFO):
            events_log.info("%s", json.dumps({"event": "state_change", **entry}, default=str))

    def _store_changed(self, up: bool, why: str) -> None:
        self.changes.record(
            "store",
            f"state store {'is back: shared state resumes' if up else f'unavailable ({why})'}",
            state="up" if up else "down",
        )

    def on_breaker_transition(
        self, backend: str, endpoint: str, old: BreakerState, new: BreakerState
    ) -> None:
        url = endpoint.split("/", 1)[1] if "/" in endpoint else endpoint
        self.metrics.breaker_transitions.labels(
            backend, url, old.name.lower(), new.name.lower()
        ).inc()
        self.metrics.breaker_state.labels(backend, url).set(BREAKER_STATE_VALUE[new.name.lower()])
        log.warning("breaker of %s (%s): %s -> %s", url, backend, old.name, new.name)
        if hasattr(self, "changes"):
            self.changes.record(
                "breaker",
                f"breaker of {url} ({backend}): {old.name.lower()} -> {new.name.lower()}",
                backend=backend,
                endpoint=url,
                state=new.name.lower(),
            )
        if new is BreakerState.OPEN and hasattr(self, "peers"):
            self.peers.notify(backend, endpoint, "breaker-open")

    async def reload(
        self,
        text: str | None = None,
        *,
        actor: str,
        dry_run: bool = False,
        persist: bool = False,
    ) -> ReloadResult:
        """Validate a policy and, unless `dry_run`, swap it in; the running one stays on failure.

        `text` None re-reads the policy file. `persist` writes an accepted text over the policy
        file first (atomically), so that the file and what runs agree after an API apply.
        Requests in flight finish on the snapshot they started with.
        """
        async with self._reload_lock:
            result = self._reload(text, actor=actor, dry_run=dry_run, persist=persist)
            if result.applied and self.watcher is not None:
                self.watcher.mark_seen()
            return result

    def _drop_unused_pools(self, snapshot: Snapshot) -> None:
        """Close the connection pools of endpoints the new policy no longer names."""
        task = asyncio.ensure_future(self.transports.retain(snapshot.endpoint_states()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def drain(self, backend: str, url: str, *, drained: bool, actor: str) -> None:
        """Stop (or resume) sending new requests to one endpoint; in-flight ones finish.

        Drain is runtime state: it survives reloads that keep the endpoint, like a breaker.
        """
        b = self.snapshot.backends.get(backend)
        state = next((s for s in b.states if s.spec.url == url.rstrip("/")), None) if b else None
        if state is None:
            raise RouteNotFound(f"backend '{backend}' has no endpoint {url}")
        self.audit.record(
            "endpoint-drain" if drained else "endpoint-undrain",
            actor,
            backend=backend,
            endpoint=url,
        )
        state.admin_drain = drained
        self.changes.record(
            "drain",
            f"{'drain' if drained else 'undrain'} {url} ({backend}) by {actor}",
            backend=backend,
            endpoint=url,
        )
        log.warning("%s %s of backend %s", "draining" if drained else "undraining", url, backend)

    def watched_files(self) -> list[Path]:
        """The policy file and every rules file it names."""
        base = self.policy_path.parent
        rules = {
            step.rules for r in self.model.routes for step in r.fallback if step.rules is not None
        }
        return [self.policy_path, *(Path(r) if Path(r).is_absolute() else base / r for r in rules)]

    def _reload(
        self, text: str | None, *, actor: str, dry_run: bool, persist: bool
    ) -> ReloadResult:
        source = str(self.policy_path)
        old = self.snapshot
        try:
            if text is None:
                text = self.policy_path.read_text(encoding="utf-8")
            model, snapshot = _build(
                text,
                source,
                previous=None if dry_run else old,
                gateway=self,
                base_dir=self.policy_path.parent,
            )
        except (PolicyError, OSError) as e:
            issues = (
                tuple(str(i) for i in e.issues)
                if isinstance(e, PolicyError)
                else (f"{source}: cannot read: {e.strerror or e}",)
            )
            sha = hashlib.sha256(text.encode()).hexdigest() if text is not None else ""
            result = ReloadResult(False, dry_run, sha, old.sha256, (), issues)
            if not dry_run:
                self.metrics.reloads.labels("rejected").inc()
                self.audit.record(
                    "policy-rejected", actor, sha256=sha, serving=old.sha256, issues=list(issues)
                )
                log.warning("policy from %s rejected; still serving %s", actor, old.sha256[:12])
            return result
        changes = policy_changes(self.model, model)
        result = ReloadResult(not dry_run, dry_run, snapshot.sha256, old.sha256, changes, ())
        if dry_run:
            return result
        if persist:
            _write_atomically(self.policy_path, text)
        if model.state != self.model.state:
            log.warning("state store settings changed: they take effect at the next restart")
        self.canary.sync(snapshot)
        self.slo.sync(snapshot)
        self.quality.sync(snapshot)
        self.switches.sync(snapshot)
        self.contracts.forget()  # a reload may point a backend at another model server
        self._adopt(snapshot)
        self.model = model
        self.policy_text = text
        self.health.sync()
        self._drop_unused_pools(snapshot)
        self._publish_policy()
        self.metrics.reloads.labels("applied").inc()
        self.audit.record(
            "policy-applied",
            actor,
            sha256=snapshot.sha256,
            previous=old.sha256,
            changes=list(changes),
        )
        log.info("policy %s applied by %s: %s", snapshot.sha256[:12], actor, ", ".join(changes))
        self.changes.record("policy", f"policy {snapshot.sha256[:12]} applied by {actor}")
        for note in snapshot.notes:
            log.warning("policy note: %s", note)
        return result

    def _publish_policy(self) -> None:
        self.metrics.policy_info.info(
            {"source": self.snapshot.source, "sha256": self.snapshot.sha256, "version": __version__}
        )
        # endpoints that left the policy leave the metric too
        self.metrics.endpoint_info.clear()
        for name, backend in self.snapshot.backends.items():
            for state in backend.states:
                self.metrics.endpoint_info.labels(name, state.spec.url, state.spec.region).set(1)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Listening:
        """Bind both listeners and start the control loops; returns the bound addresses."""
        problem = parser_problem()
        if problem is not None:
            log.critical("%s", problem)
            raise StartupRefused(problem)
        settings = self.snapshot.settings
        host, port = self._listen_override or settings.listen
        ahost, aport = self._admin_override or settings.admin_listen
        # listener limits and kind are read at start; changing them takes a restart
        tls = self._tls_context(settings.tls)
        port = await self._start_data_listener(settings, host, port, tls)

        from gateway.admin.server import build_admin_app

        admin_runner = GuardedAppRunner(
            build_admin_app(self), limits=settings.limits, access_log=None
        )
        await admin_runner.setup()
        admin_site = web.TCPSite(
            admin_runner, ahost, aport, ssl_context=self._tls_context(settings.admin_tls)
        )
        await admin_site.start()
        self._runners.append(admin_runner)

        access = settings.telemetry.access_log
        if access is not None:
            # the destination is opened once; a reload changes only the sampling rate
            self.access_log = AccessLog(access, self.policy_path.parent, self.rng)
            self._reporter.access = self.access_log
        self.loop_lag.start()
        self.gc_pauses.install()
        grpc_port = await self._start_grpc(settings)

        self.peers.attach()
        await self.store.start()
        if self.watcher is not None:
            self.watcher.start()
        self.canary.start()
        self.slo.start()
        self.quality.start()
        self.switches.start()
        self.health.sync()
        self.listening = Listening(
            host,
            port,
            ahost,
            _bound_port(admin_site),
            "https" if tls is not None else "http",
            "https" if settings.admin_tls is not None else "http",
            grpc_port,
        )
        self.ready = True
        log.info(
            "tailguard %s serving %s on %s (admin %s)",
            __version__,
            self.snapshot.source,
            self.listening.url,
            self.listening.admin_url,
        )
        return self.listening

    async def _start_data_listener(
        self, settings: GatewaySettings, host: str, port: int, tls: ssl.SSLContext | None
    ) -> int:
        """Bind the data port with the server the policy names; returns the bound port."""
        if (self._listener_override or settings.listener) == "httptools":
            listener = H1Listener(self.proxy, settings.limits)
            bound = await listener.start(
                host, port, tls=tls, reuse_port=self._reuse_port, backlog=1024
            )
            self._h1_listener = listener
            return bound
        server = GuardedServer(
            self.proxy.handle,
            limits=settings.limits,
            handler_cancellation=True,
            access_log=None,
            # content codings pass through byte for byte; the gateway decodes only to look
            auto_decompress=False,
        )
        self._data_server = server
        data_runner = web.ServerRunner(
            server, access_log=None, shutdown_timeout=settings.drain_timeout
        )
        await data_runner.setup()
        site = web.TCPSite(
            data_runner,
            host,
            port,
            backlog=1024,
            ssl_context=tls,
            reuse_port=self._reuse_port or None,
        )
        await site.start()
        self._runners.append(data_runner)
        return _bound_port(site)

    def unsent_bytes(self) -> int:
        """Answer bytes the data listener holds that its clients have not taken yet.

        Flow control keeps this near one transport write buffer per connection, however
        slowly a client reads a long stream.
        """
        if self._h1_listener is not None:
            return self._h1_listener.unsent_bytes()
        server = self._data_server
        if server is None:
            return 0
        return sum(
            h.transport.get_write_buffer_size()
            for h in server.connections
            if h.transport is not None
        )

    async def _start_grpc(self, settings: GatewaySettings) -> int | None:
        """The gRPC listener, in this event loop beside the HTTP ones; None when not asked for.

        Takes the data listener's TLS certificate when there is one. Changing `grpc_listen`
        takes effect at the next restart, like the other listeners.
        """
        where = self._grpc_override or settings.grpc_listen
        if where is None:
            return None
        host, port = where
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if self._reuse_port else 0),
                *server_options(settings.grpc),
            ]
        )
        server.add_generic_rpc_handlers((self.grpc_edge.handler,))
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if settings.tls is not None:
            base = self.policy_path.parent
            cert = _resolve(settings.tls[0], base).read_bytes()
            key = _resolve(settings.tls[1], base).read_bytes()
            bound = server.add_secure_port(target, grpc.ssl_server_credentials([(key, cert)]))
        else:
            bound = server.add_insecure_port(target)
        if not bound:
            raise OSError(f"cannot listen for gRPC on {target}")
        await server.start()
        self._grpc_server = server
        return int(bound)

    def _tls_context(self, paths: tuple[str, str] | None) -> ssl.SSLContext | None:
        """A server TLS context (TLS 1.2+) from certificate and key paths, relative to the policy."""
        if paths is None:
            return None
        base = self.policy_path.parent
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(_resolve(paths[0], base), _resolve(paths[1], base))
        return ctx

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded by drain_timeout), close pools."""
        self.ready = False
        if self.watcher is not None:
            await self.watcher.close()
        await self.health.close()
        await self.canary.close()
        if self._grpc_server is not None:
            # stop accepting; calls in flight get the drain timeout to finish
            await self._grpc_server.stop(self.snapshot.settings.drain_timeout)
            self._grpc_server = None
        await self.slo.close()
        await self.quality.close()
        await self.switches.close()
        if self._h1_listener is not None:
            await self._h1_listener.stop(self.snapshot.settings.drain_timeout)
            self._h1_listener = None
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.transports.close()
        await self.caches.close()
        await self.peers.close()
        await self.store.close()
        await self.loop_lag.close()
        if self.tracing is not None:
            self._reporter.tracer = None
            await self.tracing.shutdown()
        self.gc_pauses.remove()
        if self.access_log is not None:
            self._reporter.access = None
            self.access_log.close()
        self.audit.close()

    def is_ready(self) -> bool:
        """Ready once started with a policy that has at least one usable endpoint."""
        if not self.ready:
            return False
        now = self.clock.now()
        return any(any(b.availability(now)) for b in self.snapshot.backends.values())


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound socket only through the asyncio server
    assert server is not None
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return port


async def _never(ex: Exchange) -> Answer:  # pragma: no cover - the last stage always answers
    raise RuntimeError("the innermost stage must answer")


def tune_gc() -> None:
    """Call once a process has started serving.

    Objects made at start-up live for the whole run, so freezing them keeps the cyclic GC from
    rescanning them, and fewer gen-0 collections cut CPU per request (measured: p99 roughly
    halved under concurrency). Not for test processes that build many gateways.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
