"""Every Prometheus metric a genserve process exports, in one module.

Names carry units; labels are bounded: `model` is a loaded model's name (or
"unknown"), `graph` a graph of that model, `method` an RPC name, `code` a gRPC
status name. Latencies are histograms so percentiles aggregate across replicas.
"""

from __future__ import annotations

import functools
import logging

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from genserve.runtime.metrics_http import MetricsServer, MetricsServerLimits, start_metrics_server

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@functools.lru_cache(maxsize=8192)
def child(metric: MetricWrapperBase, *values: str):
    """`metric.labels(*values)`, kept: code on every call's path asks for the same few
    label sets, and `labels` checks and looks them up anew each time (about 4 us)."""
    return metric.labels(*values)


REQUESTS = Counter(
    "genserve_requests_total",
    "RPCs finished, by method, model and gRPC status code.",
    ["method", "model", "code"],
)
REQUEST_DURATION = Histogram(
    "genserve_request_duration_seconds",
    "Time from receiving an RPC to sending its last response.",
    ["method", "model"],
    buckets=_LATENCY_BUCKETS_S,
)
KEY_REQUESTS = Counter(
    "genserve_key_requests_total",
    "RPCs admitted with an API key, by the key's id (never the key).",
    ["key"],
)
IN_FLIGHT = Gauge(
    "genserve_in_flight_requests",
    "RPCs being handled right now.",
    ["method"],
)
QUEUE_DURATION = Histogram(
    "genserve_queue_duration_seconds",
    "Time a request waited in a batcher queue before its batch ran.",
    ["model", "graph"],
    buckets=_LATENCY_BUCKETS_S,
)
SESSION_RUN_DURATION = Histogram(
    "genserve_session_run_duration_seconds",
    "Time of one ONNX Runtime session.run over a batch.",
    ["model", "graph"],
    buckets=_LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "genserve_batch_size",
    "Rows in one batched session.run.",
    ["model", "graph"],
    buckets=_BATCH_BUCKETS,
)
BATCH_REQUESTS = Histogram(
    "genserve_batch_requests",
    "Requests merged into one batched session.run.",
    ["model", "graph"],
    buckets=_BATCH_BUCKETS,
)
BATCH_TOKENS = Histogram(
    "genserve_batch_tokens",
    "Tokens in one batched session.run of a text graph: real, or padded (rows x length).",
    ["model", "graph", "kind"],
    buckets=(16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
)
QUEUE_DEPTH = Gauge(
    "genserve_queue_depth",
    "Requests waiting in a batcher queue.",
    ["model", "graph"],
)
QUEUE_DROPPED = Counter(
    "genserve_queue_dropped_total",
    "Queued requests dropped before running, by reason (deadline, cancelled, full).",
    ["model", "graph", "reason"],
)
STEP_DURATION = Histogram(
    "genserve_step_duration_seconds",
    "Time of one batched step of an iterative sampler (one session call or a few).",
    ["model", "sampler"],
    buckets=_LATENCY_BUCKETS_S,
)
STEP_BATCH_SIZE = Histogram(
    "genserve_step_batch_size",
    "Sequences in one batched step of an iterative sampler.",
    ["model", "sampler"],
    buckets=_BATCH_BUCKETS,
)
SEQUENCES_WAITING = Gauge(
    "genserve_sequences_waiting",
    "Sequences of an iterative sampler waiting for a running slot.",
    ["model", "sampler"],
)
SEQUENCES_RUNNING = Gauge(
    "genserve_sequences_running",
    "Sequences of an iterative sampler holding a running slot.",
    ["model", "sampler"],
)
TIME_TO_FIRST_STEP = Histogram(
    "genserve_time_to_first_step_seconds",
    "Time from a sequence's arrival to the end of its first step (its first event).",
    ["model", "sampler"],
    buckets=_LATENCY_BUCKETS_S,
)
STEPS_PER_SEQUENCE = Histogram(
    "genserve_steps_per_sequence",
    "Steps a finished sequence took part in.",
    ["model", "sampler"],
    buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
TOKENS_GENERATED = Counter(
    "genserve_tokens_generated_total",
    "Tokens the text families generated (prompt tokens not counted).",
    ["model"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "genserve_time_to_first_token_seconds",
    "Time from a text sample's arrival to its first generated token (prompt prefilled).",
    ["model"],
    buckets=_LATENCY_BUCKETS_S,
)
INTER_TOKEN_LATENCY = Histogram(
    "genserve_inter_token_latency_seconds",
    "Time between a text sample's consecutive generated tokens.",
    ["model"],
    buckets=_LATENCY_BUCKETS_S,
)
TEXTS_FINISHED = Counter(
    "genserve_texts_finished_total",
    "Text samples that ended, by finish reason (stop, length, cancelled).",
    ["model", "reason"],
)
SAMPLES_GENERATED = Counter(
    "genserve_samples_generated_total",
    "Samples (images or texts) returned by Generate and GenerateStream.",
    ["model"],
)
MODEL_LOAD_DURATION = Histogram(
    "genserve_model_load_duration_seconds",
    "Time to load a model version (all its ONNX sessions).",
    ["model"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
MODEL_LOADED = Gauge(
    "genserve_model_loaded",
    "1 for each model this process serves, labelled with its version.",
    ["model", "version"],
)
BACKEND_UP = Gauge(
    "genserve_gateway_backend_up",
    "1 while the gateway routes calls to a backend: a check passed and no ejection since.",
    ["backend"],
)
BACKEND_REQUESTS = Counter(
    "genserve_gateway_backend_requests_total",
    "Calls the gateway forwarded, by backend and status code.",
    ["backend", "code"],
)
RELAY_CALLS_PER_MESSAGE = Histogram(
    "genserve_relay_calls_per_message",
    "Calls carried by one Relay stream message, by direction: requests the gateway sent"
    " (sent) or answers a family service returned (answered).",
    ["direction"],
    buckets=_BATCH_BUCKETS,
)
BACKEND_EJECTIONS = Counter(
    "genserve_gateway_backend_ejections_total",
    "Times the gateway took a backend out of routing, by reason: failed health checks"
    " (check) or failed forwarded calls in a row (call).",
    ["backend", "reason"],
)

MODEL_LOAD_FAILURES = Counter(
    "genserve_model_load_failures_total",
    "Loads of a model version that were refused; it is retried once its files change.",
    ["model"],
)


def serve_metrics(
    port: int,
    host: str = "127.0.0.1",
    *,
    timeout_s: float = MetricsServerLimits.timeout_s,
    max_connections: int = MetricsServerLimits.max_connections,
) -> MetricsServer:
    """Serve /metrics over HTTP on host:port from daemon threads; returns the server.

    Args:
        port: the port; 0 picks a free one (see the returned server's `port`).
        host: the address to bind.
        timeout_s: socket timeout per connection; a half-sent request is closed after it.
        max_connections: connections served at once; one more is answered 503.
    """
    limits = MetricsServerLimits(timeout_s=timeout_s, max_connections=max_connections)
    server = start_metrics_server(port, host, limits)
    logger.info(
        "metrics on http://%s:%d/metrics (timeout %.1fs, at most %d connections)",
        host,
        server.port,
        timeout_s,
        max_connections,
    )
    return server
