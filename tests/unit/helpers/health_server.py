"""A tiny child process for the supervisor tests: a grpc.health.v1 server.

    python health_server.py PORT [--delay-s S] [--exit-code N] [--ignore-sigterm]

Waits `delay-s`, then serves health on 127.0.0.1:PORT and reports SERVING.
With --exit-code it prints a message and exits instead of serving. On SIGTERM
it prints "stopping" and exits 0, unless --ignore-sigterm.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int)
    parser.add_argument("--ignore-sigterm", action="store_true")
    args = parser.parse_args()
    stop = threading.Event()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("starting", flush=True)
    if stop.wait(args.delay_s):
        print("stopping", flush=True)
        return 0
    if args.exit_code is not None:
        print("fatal: model repository is empty", flush=True)
        return args.exit_code
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print("serving", flush=True)
    while not stop.wait(0.05):
        pass
    print("stopping", flush=True)
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
