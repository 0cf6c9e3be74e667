"""`tailguard sim`: run one simulated model server until SIGINT or SIGTERM.

    tailguard sim --port 8000 --model classifier --region us-east --latency-ms 5
    tailguard sim --port 0 --control-port 9000 --faults '{"error_rate": 0.1}'

Prints one line, `sim NAME listening on URL ...`, once it accepts connections,
so scripts can wait for it; exits 0 on a signal, 1 if it cannot listen, 2 on
bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.sim.faults import LATENCY_KINDS, Faults
from gateway.sim.server import SimServer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tailguard sim",
        description="Run a simulated model server (KServe v2, OpenAI-style chat, /predict) "
        "with fault injection; its control API is under /_sim/.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--control-port", type=int, help="a separate control listener that survives die")
    p.add_argument(
        "--grpc-port",
        type=int,
        help="also serve inference.GRPCInferenceService here (0 picks a free port)",
    )
    p.add_argument(
        "--decoupled",
        action="append",
        metavar="MODEL",
        help="a served model that streams one response per input element over gRPC",
    )
    p.add_argument("--region", default="local")
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="a model to serve (repeatable; default: classifier)")  # fmt: skip
    p.add_argument("--name", help="x-sim-name of every answer (default: REGION-PORT)")
    p.add_argument("--seed", type=int, help="seed of the fault draws (deterministic run)")
    f = p.add_argument_group("faults (laid over --faults)")
    f.add_argument("--faults", metavar="JSON", help="a whole Faults object as JSON")
    f.add_argument("--latency-kind", choices=LATENCY_KINDS)
    f.add_argument("--latency-ms", type=float, help="base latency (kind defaults to fixed)")
    f.add_argument("--latency-max-ms", type=float,
                   help="upper bound for --latency-kind uniform (and of tail's fast mode)")  # fmt: skip
    f.add_argument("--latency-sigma", type=float, help="spread for --latency-kind lognormal")
    f.add_argument("--tail-rate", type=float, help="share of slow requests for kind tail")
    f.add_argument("--tail-factor", type=float, help="how many times slower they are")
    f.add_argument("--error-rate", type=float)
    f.add_argument("--error-status", type=int)
    f.add_argument("--reset-rate", type=float)
    f.add_argument("--hang-rate", type=float)
    f.add_argument("--truncate-rate", type=float)
    f.add_argument("--stream-delay-ms", type=float)
    f.add_argument("--retry-after", type=int, help="Retry-After seconds on injected errors")
    f.add_argument("--unready", action="append", metavar="MODEL", help="a model that is not ready")
    f.add_argument("--not-ready", action="store_true", help="the whole server is not ready")
    return p


_LATENCY_FLAGS = {
    "latency_kind": "kind",
    "latency_ms": "ms",
    "latency_max_ms": "max_ms",
    "latency_sigma": "sigma",
    "tail_rate": "tail_rate",
    "tail_factor": "tail_factor",
}
_FAULT_FLAGS = (
    "error_rate",
    "error_status",
    "reset_rate",
    "hang_rate",
    "truncate_rate",
    "stream_delay_ms",
    "retry_after",
)


def faults_from_args(args: argparse.Namespace) -> Faults:
    """`--faults` JSON with the individual flags laid over it; raises ValueError."""
    base = Faults()
    if args.faults:
        try:
            data = json.loads(args.faults)
        except ValueError as e:
            raise ValueError(f"--faults is not valid JSON: {e}") from None
        base = Faults.from_dict(data)
    patch: dict[str, Any] = {
        k: getattr(args, k) for k in _FAULT_FLAGS if getattr(args, k) is not None
    }
    latency = {
        v: getattr(args, k) for k, v in _LATENCY_FLAGS.items() if getattr(args, k) is not None
    }
    if latency:
        patch["latency"] = latency
    if args.unready:
        patch["unready_models"] = sorted(set(args.unready) | base.unready_models)
    if args.not_ready:
        patch["ready"] = False
    return base.merge(patch) if patch else base


async def start_sims(specs: Iterable[Mapping[str, Any]]) -> list[SimServer]:
    """Start one SimServer per spec (SimServer's keyword arguments), all or none.

    If one cannot start, the ones already started are stopped and the error is
    raised. The caller stops the returned servers.
    """
    started: list[SimServer] = []
    try:
        for spec in specs:
            sim = SimServer(**spec)
            await sim.start()
            started.append(sim)
    except BaseException:
        for sim in started:
            await sim.stop()
        raise
    return started


async def serve(sim: SimServer) -> int:
    """Run `sim` until SIGINT/SIGTERM; the one printed line says where it listens."""
    try:
        await sim.start()
    except OSError as e:
        print(f"sim: cannot listen on {sim.host}:{sim.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    control = f" control {sim.control_url}" if sim.control_url != sim.url else ""
    if sim.has_grpc:
        control += f" grpc {sim.grpc_address}"
    print(
        f"sim {sim.name} listening on {sim.url}{control} "
        f"region {sim.region} models {','.join(sim.models)}",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await sim.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `tailguard sim` (and `python -m gateway.sim`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        faults = faults_from_args(args)
        sim = SimServer(
            models=args.models or ("classifier",),
            region=args.region,
            name=args.name,
            host=args.host,
            port=args.port,
            control_port=args.control_port,
            seed=args.seed,
            faults=faults,
            grpc_port=args.grpc_port,
            decoupled=args.decoupled or (),
        )
    except ValueError as e:
        try:
            parser.error(str(e))
        except SystemExit as exit_:
            return int(exit_.code or 0)
    except SystemExit as exit_:  # --help, or argparse's own usage errors
        return int(exit_.code or 0)
    return _run(serve(sim))


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it exists
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))
