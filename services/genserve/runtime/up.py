"""`genserve-up`: run every family with a model in the repository, plus the gateway.

One family service per family found in `models/*/*/config.json` (or several
replicas of it, `--replicas FAMILY=N`), on consecutive loopback ports 50061 and
up (metrics 9101 and up), and the gateway in front of them on 127.0.0.1:50051
(metrics 9100), with every replica as a backend. It waits until all are SERVING, prints what runs
where, then waits; Ctrl-C or SIGTERM stops everything gracefully and exits 0.
If any process exits on its own, the rest are stopped and it exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from genserve.runtime.supervisor import (
    LOOPBACK,
    ProcessError,
    Supervisor,
    port_is_free,
    python_module_command,
)

logger = logging.getLogger(__name__)

_POLL_S = 0.5
_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")
MAX_REPLICAS = 16
"""The most replicas `--replicas` may ask for one family."""


@dataclass(frozen=True)
class ProcessPlan:
    """One process `genserve-up` starts."""

    name: str
    """Short name for messages and the log file, e.g. "family vae"."""
    argv: list[str]
    """The full command line."""
    host: str
    """The host its gRPC server binds."""
    port: int
    """Its gRPC port."""
    metrics_port: int
    """Its Prometheus metrics port."""
    models: list[str] = field(default_factory=list)
    """The models it serves; empty for the gateway (it routes to all)."""

    @property
    def address(self) -> str:
        """host:port as a client on this machine dials it."""
        host = LOOPBACK if self.host in _WILDCARD_HOSTS else self.host
        return f"{host}:{self.port}"


def discover_families(models_dir: Path) -> dict[str, list[str]]:
    """Map each family to the model names of that family under `models_dir`.

    Reads the "family" field of every `models_dir/<model>/<version>/config.json`.
    A config that cannot be read is skipped with a warning.
    """
    families: dict[str, set[str]] = {}
    for config_path in sorted(models_dir.glob("*/*/config.json")):
        try:
            family = json.loads(config_path.read_text(encoding="utf-8"))["family"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("skipping %s: %s", config_path, exc)
            continue
        families.setdefault(str(family), set()).add(config_path.parent.parent.name)
    return {family: sorted(names) for family, names in sorted(families.items())}


class ReplicasError(ValueError):
    """A `--replicas` value that cannot be used; the message says why."""


def parse_replicas(value: str) -> tuple[str, int]:
    """One `--replicas` value, "FAMILY=N", as (family, N) with 1 <= N <= MAX_REPLICAS."""
    family, sep, count = value.partition("=")
    family = family.strip()
    if not sep or not family:
        raise ReplicasError(f"--replicas {value!r}: expected FAMILY=N, e.g. vae=2")
    try:
        replicas = int(count)
    except ValueError:
        raise ReplicasError(f"--replicas {value!r}: N must be a whole number") from None
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ReplicasError(f"--replicas {value!r}: N must be 1..{MAX_REPLICAS}, got {replicas}")
    return family, replicas


def replica_counts(
    requested: Sequence[tuple[str, int]], families: dict[str, list[str]]
) -> dict[str, int]:
    """How many replicas each family runs: 1 unless `requested` says otherwise.

    Raises:
        ReplicasError: a requested family has no model in the repository.
    """
    counts = dict.fromkeys(families, 1)
    for family, replicas in requested:
        if family not in families:
            known = ", ".join(families) or "none"
            raise ReplicasError(
                f"--replicas {family}={replicas}: no {family!r} model in the repository "
                f"(families there: {known})"
            )
        counts[family] = replicas
    return counts


def plan_processes(
    families: dict[str, list[str]],
    *,
    models_dir: Path,
    host: str,
    gateway_port: int,
    first_family_port: int,
    metrics_port: int,
    replicas: dict[str, int] | None = None,
) -> list[ProcessPlan]:
    """The family services (on loopback), then the gateway in front of them on `host`.

    Each family runs `replicas[family]` replicas (default 1), on consecutive
    ports; every replica is a backend of the gateway.
    """
    replicas = replicas or {}
    plans = []
    for family, models in families.items():
        count = replicas.get(family, 1)
        for replica in range(1, count + 1):
            index = len(plans)
            port, family_metrics = first_family_port + index, metrics_port + 1 + index
            argv = python_module_command(
                "genserve.families",
                *("--family", family, "--models", str(models_dir)),
                *("--host", LOOPBACK, "--port", str(port), "--metrics-port", str(family_metrics)),
            )
            name = f"family {family}" if count == 1 else f"family {family} {replica}/{count}"
            plans.append(ProcessPlan(name, argv, LOOPBACK, port, family_metrics, models))
    backends = [arg for plan in plans for arg in ("--backend", plan.address)]
    gateway_argv = python_module_command(
        "genserve.gateway",
        *("--host", host, "--port", str(gateway_port), "--metrics-port", str(metrics_port)),
        *backends,
    )
    plans.append(ProcessPlan("gateway", gateway_argv, host, gateway_port, metrics_port))
    return plans


def busy_ports(plans: Sequence[ProcessPlan]) -> list[str]:
    """The host:port pairs the plans need that something else already holds."""
    busy = []
    for plan in plans:
        bind_host = LOOPBACK if plan.host in _WILDCARD_HOSTS else plan.host
        if not port_is_free(plan.port, bind_host):
            busy.append(f"{plan.address} ({plan.name})")
        if not port_is_free(plan.metrics_port, LOOPBACK):
            busy.append(f"{LOOPBACK}:{plan.metrics_port} ({plan.name} metrics)")
    return busy


def format_summary(plans: Sequence[ProcessPlan], models_dir: Path) -> str:
    """The table printed once everything is SERVING."""
    gateway = plans[-1]
    rows = [("process", "grpc", "metrics", "models")]
    for plan in plans:
        metrics = f"http://{LOOPBACK}:{plan.metrics_port}/metrics"
        rows.append((plan.name, plan.address, metrics, ", ".join(plan.models) or "(all)"))
    widths = [max(len(row[col]) for row in rows) for col in range(3)]
    lines = [f"genserve is up, serving {models_dir}/", ""]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        lines.append("  " + "  ".join([*cells, row[3]]))
    lines += [
        "",
        f"Gateway: {gateway.address}",
        f"  export GENSERVE_ADDR={gateway.address}",
        "  genserve models",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _wait_for_exit(supervisor: Supervisor) -> int:
    """Block until a child exits (returns 1) or Ctrl-C/SIGTERM (returns 0)."""
    try:
        while True:
            exited = supervisor.exited()
            if exited:
                for child in exited:
                    logger.error("%s exited (%s); stopping the rest", child.name, child.returncode)
                return 1
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        logger.info("stopping (grace %g s per process)", supervisor.grace_s)
        return 0


def run(args: argparse.Namespace) -> int:
    """Start the planned processes, wait for health, print the summary, then wait."""
    models_dir = Path(args.models)
    families = discover_families(models_dir)
    if not families:
        logger.error("no models under %s/ (expected <model>/<version>/config.json)", models_dir)
        return 2
    try:
        replicas = replica_counts(args.replicas, families)
    except ReplicasError as exc:
        logger.error("%s", exc)
        return 2
    plans = plan_processes(
        families,
        models_dir=models_dir,
        host=args.host,
        gateway_port=args.gateway_port,
        first_family_port=args.family_port,
        metrics_port=args.metrics_port,
        replicas=replicas,
    )
    busy = busy_ports(plans)
    if busy:
        logger.error("ports already in use: %s (is genserve-up running?)", ", ".join(busy))
        return 2
    log_dir = Path(args.log_dir) if args.log_dir else None
    with Supervisor(log_dir=log_dir, grace_s=args.grace_s) as supervisor:
        try:
            for plan in plans[:-1]:
                supervisor.start(plan.name, plan.argv, health_target=plan.address)
            supervisor.wait_all_healthy(args.startup_timeout_s)
            gateway = plans[-1]
            supervisor.start(gateway.name, gateway.argv, health_target=gateway.address)
            supervisor.wait_all_healthy(args.startup_timeout_s)
        except ProcessError as exc:
            logger.error("%s", exc)
            return 1
        except KeyboardInterrupt:
            logger.info("interrupted while starting; stopping")
            return 0
        print(format_summary(plans, models_dir), flush=True)
        return _wait_for_exit(supervisor)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="genserve-up", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="model repository (default: models)")
    parser.add_argument("--host", default=LOOPBACK, help="gateway bind host (default: 127.0.0.1)")
    parser.add_argument("--gateway-port", type=int, default=50051, help="default: 50051")
    parser.add_argument("--family-port", type=int, default=50061, help="first family port")
    parser.add_argument(
        "--metrics-port", type=int, default=9100, help="gateway metrics; families use the next ones"
    )
    parser.add_argument(
        "--replicas",
        action="append",
        default=[],
        type=_replicas_arg,
        metavar="FAMILY=N",
        help=f"run N replicas (1..{MAX_REPLICAS}) of FAMILY's service, each on its own port, "
        "all behind the gateway; repeatable (default: 1 each)",
    )
    parser.add_argument("--startup-timeout-s", type=float, default=120.0)
    parser.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM grace per process")
    parser.add_argument("--log-dir", help="write each process's output to DIR/<name>.log")
    return parser.parse_args(argv)


def _replicas_arg(value: str) -> tuple[str, int]:
    """`parse_replicas` for argparse, which reports an ArgumentTypeError as a usage error."""
    try:
        return parse_replicas(value)
    except ReplicasError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `genserve-up`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s genserve-up: %(message)s")
    # Ctrl-C and SIGTERM both raise KeyboardInterrupt, which stops everything
    # gracefully; SIGINT is set too, as a shell ignores it in background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:
        logger.warning("interrupted again while stopping; killed what was left")
        return 130


if __name__ == "__main__":
    sys.exit(main())
