"""Real processes on free loopback ports: a tiny trained VAE and the committed one.

One session-scoped deployment: train a tiny VAE for a few steps with the real
exporter (train, export, parity check, write the repository folder), put it in
a temporary model repository beside a copy of the committed vae-fashion, start
a vae family service and a gateway in front of it, wait for health, and always
stop both. Also shared by the tests: starting processes, training tiny models,
scraping metrics, and `Load`, threads repeating seeded calls of one or more
kinds (protocols) that count every outcome.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from genserve.client import Client, GenserveError
from genserve.runtime.supervisor import Supervisor, free_ports, python_module_command
from genserve.v1 import model_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_VAE = ROOT / "models" / "vae-fashion"
TINY = "vae-tiny"


class Started(NamedTuple):
    """One process started for a test: the child, its gRPC target, its /metrics URL."""

    child: object
    target: str
    metrics: str


def start(sup: Supervisor, module: str, *args: str) -> Started:
    """Start `python -m module` on free loopback ports and wait until it is healthy."""
    port, metrics_port = free_ports(2)
    target = f"127.0.0.1:{port}"
    child = sup.start(
        f"{module}-{port}",
        python_module_command(
            module, "--port", str(port), "--metrics-port", str(metrics_port), *args
        ),
        health_target=target,
    )
    sup.wait_healthy(child, timeout_s=60)
    return Started(child, target, f"http://127.0.0.1:{metrics_port}/metrics")


def start_family(sup: Supervisor, models: Path, *args: str) -> Started:
    """A vae family service over `models`, with extra command-line `args`."""
    return start(sup, "genserve.families", "--family", "vae", "--models", str(models), *args)


def wait_for(predicate, timeout_s: float = 15.0) -> bool:
    """Poll `predicate` every 0.1 s until it holds (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def wait_serving(channel: grpc.Channel, timeout_s: float = 120.0) -> None:
    """Watch the process's health until it says SERVING (an event, not a poll)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=deadline - time.monotonic()
            )
            for answer in watch:
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    watch.cancel()
                    return
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                break
            grpc.channel_ready_future(channel).result(timeout=deadline - time.monotonic())
    raise AssertionError("the process never became SERVING")


def status_name(exc: Exception) -> str:
    """The gRPC status code name of a failed call, from genserve's, grpc's or tritonclient's error.

    Anything else is named by its type, so a load test counts it as a failure too.
    """
    if isinstance(exc, GenserveError):
        return exc.code.name
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError
        return code().name
    status = getattr(exc, "status", None)
    if callable(status) and status():  # tritonclient's InferenceServerException
        return str(status()).removeprefix("StatusCode.")
    return type(exc).__name__


@dataclass(frozen=True)
class Caller:
    """One kind of seeded call a `Load` repeats.

    `connect()` opens a client and yields the call, a function that makes one
    call and returns the bytes it got; each caller thread connects once.
    """

    label: str
    """Names the kind in the counts, e.g. "ModelService"."""
    connect: Callable[[], AbstractContextManager[Callable[[], bytes]]]
    """Opens a client; yields the call."""
    expected: bytes
    """What every call must return."""


class Load:
    """Threads repeating seeded calls until the block ends; counts outcomes per kind.

    Args:
        callers: the kinds of call, each made by `threads` threads of its own.
        threads: threads per kind.
    """

    def __init__(self, callers: list[Caller], threads: int = 2) -> None:
        self.codes: dict[str, Counter] = {caller.label: Counter() for caller in callers}
        """Per kind, calls by status code name ("OK" for those that returned)."""
        self.mismatches: Counter = Counter()
        """Per kind, calls that returned other bytes than expected."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(caller,), daemon=True)
            for caller in callers
            for _ in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def calls(self) -> int:
        """Calls made so far, of the kind that made the fewest."""
        with self._lock:
            return min(codes.total() for codes in self.codes.values())

    def progress(self, calls: int = 20) -> bool:
        """Wait until every kind made `calls` more calls (True), or 30 s passed (False)."""
        goal = self.calls() + calls
        return wait_for(lambda: self.calls() >= goal, timeout_s=30)

    def failures(self) -> dict[str, Counter]:
        """Per kind, the calls that did not return OK."""
        with self._lock:
            return {
                label: Counter({code: n for code, n in codes.items() if code != "OK"})
                for label, codes in self.codes.items()
                if set(codes) - {"OK"}
            }

    def _run(self, caller: Caller) -> None:
        with caller.connect() as call:
            while not self._stop.is_set():
                try:
                    same, code = call() == caller.expected, "OK"
                except Exception as exc:  # every failure is counted and asserted on
                    same, code = True, status_name(exc)
                with self._lock:
                    self.codes[caller.label][code] += 1
                    self.mismatches[caller.label] += not same


@contextmanager
def model_service_caller(target: str, model: str, n: int, seed: int) -> Iterator[Callable]:
    """genserve's Client (no retries of its own) and a seeded Generate of `model`'s images."""
    with Client(target, timeout_s=10, retries=0) as client:
        yield lambda: client.generate(model, n, seed=seed).images.tobytes()


@dataclass(frozen=True)
class Deployment:
    """Where the test deployment listens."""

    gateway: str
    service: str
    gateway_metrics: str
    service_metrics: str
    models: Path
    supervisor: Supervisor


def train_tiny_vae(out: Path, name: str = TINY, steps: int = 40) -> Path:
    """Train, export and parity-check a tiny VAE with the real exporter CLI."""
    command = [
        sys.executable, "-m", "genserve.exporters.vae", "--out", str(out), "--name", name,
        "--version", "1", "--epochs", "1", "--max-steps", str(steps), "--seed", "0",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, f"exporter failed:\n{done.stderr[-3000:]}"
    return out / name / "1"


def train_tiny_diffusion(out: Path, name: str, timesteps: int = 50) -> Path:
    """Train (2 batches) and export a tiny DDPM noise predictor with the real exporter CLI.

    Returns its version folder, `out/name/1`. `timesteps` is the schedule's length:
    the most steps a request may ask for.
    """
    command = [
        sys.executable, "-m", "genserve.exporters.diffusion", "--out", str(out),
        "--name", name, "--channels", "8", "--timesteps", str(timesteps),
        "--epochs", "1", "--max-steps", "2", "--batch-size", "16", "--seed", "0",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, f"exporter failed:\n{done.stderr[-3000:]}"
    return out / name / "1"


def diffusion_request(
    model: str, seed: int, steps: int, n: int = 1, **sampler
) -> pb.GenerateRequest:
    """Generate `n` samples of `model` in `steps` steps, class label seed mod 10."""
    return pb.GenerateRequest(
        model_name=model,
        num_samples=n,
        seed=seed,
        class_labels=[seed % 10],
        sampler=pb.SamplerParams(steps=steps, **sampler),
    )


class Served(NamedTuple):
    """A family service and the gateway in front of it."""

    family: Started
    gateway: Started


@contextmanager
def family_behind_gateway(log_dir: Path, family: str, models: Path, *args: str) -> Iterator[Served]:
    """A `family` service over `models` (extra command-line `args`) and a gateway to it.

    Both run until the block ends, which fails if either process died meanwhile.
    """
    with Supervisor(log_dir=log_dir, grace_s=5) as sup:
        service = start(
            sup, "genserve.families", "--family", family, "--models", str(models), *args
        )
        gateway = start(sup, "genserve.gateway", "--backend", service.target)
        yield Served(service, gateway)
        assert not sup.exited(), f"a process died: {sup.exited()}"


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    """A model repository holding only the tiny VAE trained here."""
    repo = tmp_path_factory.mktemp("tiny-models")
    train_tiny_vae(repo)
    return repo


@pytest.fixture(scope="session")
def model_repo(tiny_repo: Path, tmp_path_factory) -> Path:
    """The tiny VAE beside a copy of the committed vae-fashion."""
    repo = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_repo / TINY, repo / TINY)
    shutil.copytree(COMMITTED_VAE, repo / COMMITTED_VAE.name)
    return repo


@pytest.fixture(scope="session")
def deployment(model_repo: Path, tmp_path_factory) -> Iterator[Deployment]:
    logs = tmp_path_factory.mktemp("logs")
    service_port, service_metrics, gateway_port, gateway_metrics = free_ports(4)
    service, gateway = f"127.0.0.1:{service_port}", f"127.0.0.1:{gateway_port}"
    with Supervisor(log_dir=logs, grace_s=10) as sup:
        family = sup.start(
            "family-vae",
            python_module_command(
                "genserve.families", "--family", "vae", "--models", str(model_repo),
                "--port", str(service_port), "--metrics-port", str(service_metrics),
                "--max-queue-delay-ms", "5", "--poll-s", "1",
            ),
            health_target=service,
        )  # fmt: skip
        sup.wait_healthy(family, timeout_s=60)
        gw = sup.start(
            "gateway",
            python_module_command(
                "genserve.gateway", "--backend", service, "--port", str(gateway_port),
                "--metrics-port", str(gateway_metrics), "--refresh-s", "1",
            ),
            health_target=gateway,
        )  # fmt: skip
        sup.wait_healthy(gw, timeout_s=60)
        yield Deployment(
            gateway=gateway,
            service=service,
            gateway_metrics=f"http://127.0.0.1:{gateway_metrics}/metrics",
            service_metrics=f"http://127.0.0.1:{service_metrics}/metrics",
            models=model_repo,
            supervisor=sup,
        )
        assert not sup.exited(), f"a process died during the tests: {sup.exited()}"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One real Prometheus scrape: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of a sample over every series whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and wanted <= set(lab))


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the fuzz suite's calls by status code, when it ran."""
    from .fuzzing import TALLY

    if not TALLY:
        return
    terminalreporter.section("fuzz calls by status code")
    for process, counts in sorted(TALLY.items()):
        shown = ", ".join(f"{code} {n}" for code, n in counts.most_common())
        terminalreporter.write_line(f"{process}: {counts.total()} calls: {shown}")
