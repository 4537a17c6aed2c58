"""The gRPC edge of a genserve process, apart from the engine (`genserve.runtime`).

`serve` builds and runs the grpc.aio server (ports, TLS, health, reflection,
/metrics, graceful stop); `interceptors` maps errors to status codes and keeps
per-RPC metrics and request ids; `servicer` is a family process's ModelService,
which validates a call, turns protobuf into numpy with `convert` (and `png`),
awaits the engine and turns its answer back. Protobuf types stop here: the
engine's batchers, schedulers and sessions never see them. `logs` sets up the
processes' logging with the request id on every line.
"""
