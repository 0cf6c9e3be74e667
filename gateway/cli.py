"""The `tailguard` command: run | validate | schema | rules | sim | demo | status | ctl | hash-key | version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from gateway import __version__


def _parse_hostport(value: str) -> tuple[str, int]:
    """HOST:PORT the same way the policy reads it (`:8080` means every interface)."""
    from pydantic_core import PydanticCustomError

    from gateway.policy.units import parse_hostport

    try:
        return parse_hostport(value)
    except PydanticCustomError as e:
        raise argparse.ArgumentTypeError(f"{value!r}: {e.message()}") from None


def _workers_default() -> str:
    """$TAILGUARD_WORKERS (a container sets it: exec-form commands expand no variables).

    A worker inherits the supervisor's environment and must never supervise in turn: the
    supervisor marks it with TAILGUARD_WORKER, and it serves alone.
    """
    if os.environ.get("TAILGUARD_WORKER") is not None:
        return "1"
    return os.environ.get("TAILGUARD_WORKERS") or "1"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tailguard", description="Resilience gateway for model backends."
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve traffic with a policy file")
    run.add_argument("--policy", "-p", required=True, help="policy YAML file")
    run.add_argument("--listen", type=_parse_hostport, help="override gateway.listen (HOST:PORT)")
    run.add_argument("--admin-listen", type=_parse_hostport, help="override gateway.admin_listen")
    run.add_argument(
        "--grpc-listen",
        type=_parse_hostport,
        help="serve inference.GRPCInferenceService here (overrides gateway.grpc_listen)",
    )
    run.add_argument("--log-level", default="info")
    run.add_argument("--audit-log", help="append audit entries (JSON lines) to this file")
    run.add_argument(
        "--no-watch", action="store_true", help="do not reload when the policy file changes"
    )
    run.add_argument(
        "--workers",
        type=int,
        default=_workers_default(),
        help="gateway processes sharing the data port (SO_REUSEPORT); one admin API merges "
        "them (default $TAILGUARD_WORKERS or 1)",
    )
    run.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    val = sub.add_parser(
        "validate",
        help="check policy, fallback rule and load-test scenario files; exit 1 if any is invalid",
    )
    val.add_argument("files", nargs="+")

    sub.add_parser("schema", help="print the policy JSON Schema (for editors)")

    rules = sub.add_parser(
        "rules", help="write Prometheus recording rules and burn-rate alerts for the policy's SLOs"
    )
    rules.add_argument("policy", help="policy YAML file")
    rules.add_argument("--out", "-o", help="write here instead of standard output")
    rules.add_argument(
        "--format",
        choices=("prometheus", "kubernetes"),
        default="prometheus",
        help="a rules file (default), or a PrometheusRule resource for the prometheus-operator",
    )
    rules.add_argument(
        "--runbook-base",
        default="docs/runbooks",
        help="where runbook_url points: BASE/<alert>.md (default docs/runbooks)",
    )
    rules.add_argument("--name", default="tailguard-slos", help="the PrometheusRule's name")
    rules.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="for tests only: multiply every window (0.01 makes the 1h window 36s)",
    )

    sim = sub.add_parser("sim", help="run a simulated model server", add_help=False)
    sim.add_argument("args", nargs=argparse.REMAINDER)

    demo = sub.add_parser("demo", help="simulated backends in two regions + gateway + live summary")
    demo.add_argument("--duration", type=float, default=0.0, help="seconds (0 = until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=50.0, help="requests per second")
    demo.add_argument("--no-faults", action="store_true", help="skip the region-failure act")

    from gateway.ctl import add_ctl_parser, add_status_parser

    add_status_parser(sub)
    add_ctl_parser(sub)
    hk = sub.add_parser("hash-key", help="print the stored form (sha256) of an API key or token")
    hk.add_argument("key", nargs="?", help="the key (default: read from stdin)")

    from gateway.loadtest.cli import add_parser as add_loadtest

    add_loadtest(sub)

    sub.add_parser("version", help="print the version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["sim"]:
        from gateway.sim.main import main as sim_main

        return sim_main(args_list[1:])
    args = build_parser().parse_args(args_list)
    if args.command == "version":
        print(f"tailguard {__version__}")
        return 0
    if args.command == "validate":
        return _validate(args.files)
    if args.command == "hash-key":
        from gateway.ctl import hash_key_command

        return hash_key_command([args.key] if args.key is not None else [])
    if args.command in ("status", "ctl"):
        from gateway.ctl import ctl_main, status_main

        return status_main(args) if args.command == "status" else ctl_main(args)
    if args.command == "rules":
        return _rules(args)
    if args.command == "schema":
        from gateway.policy.schema import policy_json_schema

        print(json.dumps(policy_json_schema(), indent=2))
        return 0
    if args.command == "run":
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        if args.workers > 1 and not args.reuse_port:
            return _run_loop(_supervise(args))
        return _run_loop(
            _serve(
                args.policy,
                args.listen,
                args.admin_listen,
                audit_log=args.audit_log,
                watch=not args.no_watch,
                reuse_port=args.reuse_port,
                grpc_listen=args.grpc_listen,
            )
        )
    if args.command == "loadtest":
        from gateway.loadtest.cli import main as loadtest_main

        return loadtest_main(args)
    if args.command == "demo":
        from gateway.demo import run_demo

        return _run_loop(run_demo(args.duration, args.rate, faults=not args.no_faults))
    return 2  # pragma: no cover - argparse rejects unknown commands


def _validate(files: Sequence[str]) -> int:
    """Policies are compiled with the rule files they name; rule files are checked alone."""
    from pathlib import Path

    from gateway.app import compile_text
    from gateway.errors import PolicyError
    from gateway.fallback.rules import load_rules, looks_like_rules

    bad = 0
    notes: tuple[str, ...] = ()
    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8")
            if looks_like_rules(text):
                load_rules(f)
            elif _looks_like_scenario(text):
                from gateway.loadtest.runner import check_policy_template
                from gateway.loadtest.scenario import load_scenario_text

                scenario = load_scenario_text(text, f)
                templates = [scenario.policy] + [a.policy for a in scenario.timeline]
                for name in templates:
                    if name is not None:
                        check_policy_template(scenario, scenario.resolve(f, name))
            else:
                notes = compile_text(text, f).notes
        except PolicyError as e:
            bad += 1
            for issue in e.issues:
                print(issue, file=sys.stderr)
        except OSError as e:
            bad += 1
            print(f"{f}: cannot read: {e.strerror or e}", file=sys.stderr)
        except UnicodeDecodeError:
            bad += 1
            print(f"{f}:1:1: not UTF-8 text", file=sys.stderr)
        else:
            print(f"{f}: ok")
            for note in notes:
                print(f"{f}: note: {note}")
            notes = ()
    return 1 if bad else 0


def _rules(args: argparse.Namespace) -> int:
    """`tailguard rules`: the policy's SLOs as Prometheus rules (file or PrometheusRule)."""
    from pathlib import Path

    from gateway.app import compile_file
    from gateway.errors import PolicyError
    from gateway.quality.rules import drift_alert_rules
    from gateway.slo.rules import kubernetes_rules, prometheus_rules, rules_yaml

    try:
        snapshot = compile_file(args.policy)
    except (PolicyError, OSError) as e:
        return _refused(args.policy, e)
    drift = drift_alert_rules(snapshot.routes)
    if not snapshot.slos and not drift:
        print(
            f"{args.policy}: the policy has no slos and no quality sections: nothing to write",
            file=sys.stderr,
        )
        return 1
    if not args.time_scale > 0:
        print("--time-scale must be more than 0", file=sys.stderr)
        return 2
    kw = {"time_scale": args.time_scale, "runbook_base": args.runbook_base}
    doc = (
        kubernetes_rules(snapshot.slos, name=args.name, **kw)
        if args.format == "kubernetes"
        else prometheus_rules(snapshot.slos, **kw)
    )
    if drift:
        quality: dict[str, Any] = {"name": "tailguard-quality", "rules": drift}
        _groups(doc).append(quality)
    header = f"# Generated by `tailguard rules` from {args.policy}; do not edit by hand.\n"
    if args.time_scale != 1.0:
        header += f"# Windows scaled by {args.time_scale:g} for a test: not for production.\n"
    text = header + rules_yaml(doc)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"{args.out}: {sum(len(g['rules']) for g in _groups(doc))} rules", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _groups(doc: dict[str, object]) -> list[dict[str, list[object]]]:
    spec = doc.get("spec", doc)
    groups = spec.get("groups", []) if isinstance(spec, dict) else []
    return groups if isinstance(groups, list) else []


async def _supervise(args: argparse.Namespace) -> int:
    """`run --workers N`: check the policy once, then supervise N worker processes."""
    import os
    from pathlib import Path

    from gateway.app import compile_file, compile_text
    from gateway.errors import PolicyError
    from gateway.workers import Supervisor

    try:
        snapshot = compile_file(args.policy)
    except (PolicyError, OSError) as e:
        return _refused(args.policy, e)
    settings = snapshot.settings
    listen = args.listen or settings.listen
    admin = args.admin_listen or settings.admin_listen
    if listen[1] == 0:
        print("--workers needs a fixed data port (not 0)", file=sys.stderr)
        return 2
    if _admin_exposed(admin, snapshot.admin_tokens, from_flag=args.admin_listen is not None):
        return 2
    extra = ["--log-level", args.log_level]
    if args.audit_log:
        extra += ["--audit-log", args.audit_log]
    if args.no_watch:
        extra.append("--no-watch")
    if args.grpc_listen:
        host, port = args.grpc_listen
        extra += ["--grpc-listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    base = Path(args.policy).parent

    def read_tokens(text: str) -> Mapping[str, str]:
        return compile_text(text, args.policy, base_dir=base).admin_tokens

    return await Supervisor(
        args.policy,
        args.workers,
        listen,
        admin,
        extra,
        tokens=snapshot.admin_tokens,
        read_tokens=read_tokens,
        admin_tls=settings.admin_tls,
        environ=os.environ,
        watch=not args.no_watch,
    ).run()


def _admin_exposed(admin: tuple[str, int], tokens: Mapping[str, str], *, from_flag: bool) -> bool:
    """Say so (and return True: exit 2) when the admin API would listen off loopback with no
    admin token configured, where only a token could keep callers out."""
    import os

    from gateway.admin.server import AdminCredentials, exposure_problem

    problem = exposure_problem(
        admin,
        tokens,
        AdminCredentials.from_environ(os.environ),
        source="--admin-listen" if from_flag else "gateway.admin_listen",
    )
    if problem is None:
        return False
    print(f"tailguard: refusing to start: {problem}", file=sys.stderr)
    return True


def _refused(policy: str, e: Exception) -> int:
    """Say why a policy cannot be served (every issue, or why it cannot be read); exit 1."""
    from gateway.errors import PolicyError

    if isinstance(e, PolicyError):
        for issue in e.issues:
            print(issue, file=sys.stderr)
    else:
        print(f"{policy}: cannot read: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
    return 1


def _looks_like_scenario(text: str) -> bool:
    """A load-test scenario names its traffic and has no routes of its own."""
    import re

    def top(key: str) -> bool:
        return re.search(rf"^{key}[ \t]*:", text, re.MULTILINE) is not None

    return top("traffic") and not top("routes")


def _run_loop(coro: object) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


async def _serve(
    policy: str,
    listen: tuple[str, int] | None,
    admin: tuple[str, int] | None,
    *,
    audit_log: str | None = None,
    watch: bool = True,
    reuse_port: bool = False,
    grpc_listen: tuple[str, int] | None = None,
) -> int:
    from gateway.app import Gateway, tune_gc
    from gateway.errors import PolicyError, StartupRefused

    try:
        gw = Gateway(
            policy,
            listen=listen,
            admin_listen=admin,
            audit_log=audit_log,
            watch=watch,
            reuse_port=reuse_port,
            grpc_listen=grpc_listen,
        )
    except (PolicyError, OSError) as e:
        return _refused(policy, e)
    admin_at = admin or gw.snapshot.settings.admin_listen
    if _admin_exposed(admin_at, gw.snapshot.admin_tokens, from_flag=admin is not None):
        await gw.stop()
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[object]] = set()

    def on_hup() -> None:
        task = asyncio.ensure_future(gw.reload(actor="SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        where = await gw.start()
    except OSError as e:
        print(f"cannot listen: {e}", file=sys.stderr)
        await gw.stop()
        return 1
    except StartupRefused as e:
        print(f"tailguard: {e.message}", file=sys.stderr)
        await gw.stop()
        return 2
    grpc_note = f" grpc {where.grpc_address}" if where.grpc_port is not None else ""
    print(f"tailguard listening on {where.url} (admin {where.admin_url}){grpc_note}", flush=True)
    tune_gc()
    await stop.wait()
    logging.getLogger("tailguard").info("stopping: draining in-flight requests")
    with contextlib.suppress(Exception):
        await gw.stop()
    return 0
