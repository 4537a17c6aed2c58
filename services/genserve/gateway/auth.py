"""API keys at the gateway's edge: who may call, how fast, and how many streams at once.

Keys live in a JSON file (a config file, or a Kubernetes secret mounted as one),
stored only as SHA-256 hashes::

    {"keys": [
      {"id": "team-a", "sha256": "<hex sha256 of the key>",
       "rate_per_s": 50, "burst": 100, "max_streams": 8, "priority": "high"},
      {"id": "old-batch-job", "sha256": "...", "revoked": true}
    ]}

``python -m genserve.gateway.auth`` makes a key and prints the line to add.

A call carries its key as ``authorization: Bearer <key>``. The gateway hashes
what it is sent and looks the hash up; no key, an unknown key or a revoked one
is refused with UNAUTHENTICATED (one message for all three: a prober learns
nothing about which keys exist). Health checks and reflection need no key, so
probes and tools still work.

A key's ``priority`` (high, normal or low) is its calls' priority and the
highest they may ask for with ``x-priority`` metadata; the gateway passes the
result on to the family services' queues.

Each key has a token bucket (``rate_per_s`` calls per second, ``burst`` at
once): a call beyond it is refused with RESOURCE_EXHAUSTED carrying a
google.rpc.RetryInfo of when the next token is due. ``max_streams`` caps the
streaming calls a key has open at once. The file is read again when it
changes (checked at most every ``reload_s``), without a restart; a file that
does not parse keeps the keys already loaded, and says why in the log.
Buckets of keys that stay in the file keep their state across a reload.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from genserve.runtime import metrics
from genserve.runtime.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from genserve.runtime.priority import (
    Priority,
    ask_priority,
    call_priority,
    parse_priority,
    priority_cap,
)

logger = logging.getLogger(__name__)

BEARER = "bearer "
MAX_KEY_CHARS = 256
"""Longer credentials are refused before they are hashed."""
MAX_KEYS = 10_000
"""The most keys a file may hold."""
EXEMPT = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)
"""Methods that need no key: probes and tools see the process as it is."""
_REFUSED = "a valid API key is required: send 'authorization: Bearer <key>'"


class KeyFileError(ValueError):
    """The keys file does not say what it must; the message names the entry."""


@dataclass(frozen=True)
class ApiKey:
    """One key as the file lists it: its id, the hash of its secret, and its limits."""

    id: str
    """Shown in logs and metrics (never the key itself)."""
    sha256: str
    """Hex SHA-256 of the key."""
    rate_per_s: float | None = None
    """Calls per second the key's bucket refills with; None: no rate limit."""
    burst: int | None = None
    """Calls the bucket holds (at least 1); None: one second's worth of the rate."""
    max_streams: int | None = None
    """Streaming calls open at once; None: no cap beyond the server's."""
    priority: str = "normal"
    """The key's calls' priority (high, normal or low) and the highest they may ask
    for with ``x-priority``."""
    revoked: bool = False
    """Refused like an unknown key."""

    @classmethod
    def of(cls, raw: object, where: str) -> ApiKey:
        if not isinstance(raw, dict):
            raise KeyFileError(f"{where}: must be an object, got {type(raw).__name__}")
        unknown = set(raw) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise KeyFileError(f"{where}: unknown fields {sorted(unknown)}")
        try:
            key = cls(**raw)
        except TypeError as exc:
            raise KeyFileError(f"{where}: {exc}") from None
        key.check(where)
        return key

    def check(self, where: str) -> None:
        if not isinstance(self.id, str) or not 0 < len(self.id) <= 64:
            raise KeyFileError(f"{where}.id: must be 1 to 64 characters")
        digest = self.sha256
        if not (isinstance(digest, str) and len(digest) == 64 and _is_hex(digest)):
            raise KeyFileError(f"{where}.sha256: must be 64 hex digits (the key's SHA-256)")
        for name in ("rate_per_s", "burst", "max_streams"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise KeyFileError(f"{where}.{name}: must be a positive number, got {value!r}")
        if not isinstance(self.revoked, bool):
            raise KeyFileError(f"{where}.revoked: must be true or false")
        try:
            parse_priority(self.priority if isinstance(self.priority, str) else "?")
        except InvalidArgument as exc:
            raise KeyFileError(f"{where}.priority: {exc.problem}") from None

    @property
    def level(self) -> Priority:
        """The key's priority level."""
        return parse_priority(self.priority)

    @property
    def capacity(self) -> float:
        """The bucket's size."""
        return float(self.burst or max(1.0, self.rate_per_s or 1.0))


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def hash_key(key: str) -> str:
    """The hex SHA-256 a keys file stores for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_keys(text: str) -> dict[str, ApiKey]:
    """The keys of a keys file's text, by hash.

    Raises:
        KeyFileError: naming the entry that is wrong.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise KeyFileError('must be an object with a "keys" list')
    if len(raw["keys"]) > MAX_KEYS:
        raise KeyFileError(f"at most {MAX_KEYS} keys, got {len(raw['keys'])}")
    keys: dict[str, ApiKey] = {}
    ids: set[str] = set()
    for i, entry in enumerate(raw["keys"]):
        key = ApiKey.of(entry, f"keys[{i}]")
        if key.id in ids:
            raise KeyFileError(f"keys[{i}].id: {key.id!r} is listed twice")
        ids.add(key.id)
        keys[key.sha256.lower()] = key
    return keys


@dataclass
class _Bucket:
    """A token bucket: `tokens` as of `at`."""

    tokens: float
    at: float


@dataclass
class _KeyState:
    bucket: _Bucket
    streams: int = 0


@dataclass
class KeyStore:
    """The keys file, read again when it changes, and every key's bucket and open streams.

    Args:
        path: the keys file.
        reload_s: how often, at most, the file's modification time is looked at.
        clock: time.monotonic, or a test's clock.
    """

    path: Path
    reload_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _keys: dict[str, ApiKey] = field(default_factory=dict, init=False)
    _states: dict[str, _KeyState] = field(default_factory=dict, init=False)
    _stamp: tuple[int, int] | None = field(default=None, init=False)
    _checked: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._keys = parse_keys(self.path.read_text())  # a bad file at start is fatal
        self._stamp = self._file_stamp()
        self._checked = self.clock()
        logger.info("loaded %d API keys from %s", len(self._keys), self.path.name)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> None:
        """Read the file again if it changed since it was read (looked at every reload_s)."""
        now = self.clock()
        if now - self._checked < self.reload_s:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            keys = parse_keys(self.path.read_text())
        except (OSError, KeyFileError) as exc:
            logger.error("keys file %s not reloaded, keeping the old keys: %s", self.path.name, exc)
            return
        self._keys = keys
        kept = {k.id for k in keys.values() if not k.revoked}
        self._states = {i: s for i, s in self._states.items() if i in kept}
        logger.info("reloaded %d API keys from %s", len(keys), self.path.name)

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key an `authorization` metadata value presents.

        Raises:
            Unauthenticated: none given, malformed, unknown or revoked.
        """
        self.refresh()
        if not authorization or len(authorization) > len(BEARER) + MAX_KEY_CHARS:
            raise Unauthenticated(_REFUSED)
        if authorization[: len(BEARER)].lower() != BEARER:
            raise Unauthenticated(_REFUSED)
        key = self._keys.get(hash_key(authorization[len(BEARER) :].strip()))
        if key is None or key.revoked:
            raise Unauthenticated(_REFUSED)
        return key

    def _state(self, key: ApiKey) -> _KeyState:
        state = self._states.get(key.id)
        if state is None:
            state = self._states[key.id] = _KeyState(_Bucket(key.capacity, self.clock()))
        return state

    def take(self, key: ApiKey) -> None:
        """Spend one of the key's tokens.

        Raises:
            RateLimited: the bucket is empty; says when the next token is due.
        """
        if key.rate_per_s is None:
            return
        bucket, now = self._state(key).bucket, self.clock()
        bucket.tokens = min(key.capacity, bucket.tokens + (now - bucket.at) * key.rate_per_s)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        raise RateLimited(key, (1.0 - bucket.tokens) / key.rate_per_s)

    @contextlib.contextmanager
    def stream(self, key: ApiKey) -> Iterator[None]:
        """Hold one of the key's stream places while the block runs.

        Raises:
            ResourceExhausted: the key has max_streams open already.
        """
        state = self._state(key)
        if key.max_streams is not None and state.streams >= key.max_streams:
            raise ResourceExhausted(
                f"API key {key.id!r} has {state.streams} streams open, its most; "
                "close one or retry later"
            )
        state.streams += 1
        try:
            yield
        finally:
            state.streams -= 1


class RateLimited(ResourceExhausted):
    """A key's token bucket is empty; carries google.rpc.RetryInfo with the wait."""

    def __init__(self, key: ApiKey, wait_s: float) -> None:
        super().__init__(
            f"API key {key.id!r} is over its rate of {key.rate_per_s:g} calls/s; "
            f"retry in {wait_s:.3f} s"
        )
        self.wait_s = wait_s

    def details(self) -> list:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(1, round(self.wait_s * 1e9)))
        return [error_details_pb2.RetryInfo(retry_delay=delay)]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid key, over their key's rate, or over its stream cap.

    Put it inside the serving interceptor, so its refusals are mapped to status
    codes and counted like any other. Calls are counted per key id.
    """

    def __init__(self, store: KeyStore) -> None:
        self._store = store

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in EXEMPT:
            return handler
        incoming = dict(handler_call_details.invocation_metadata or ())
        authorization = incoming.get("authorization")
        store = self._store

        def admit() -> ApiKey:
            key = store.authenticate(authorization)
            metrics.child(metrics.KEY_REQUESTS, key.id).inc()
            store.take(key)
            # the call asks (x-priority, read by the serving interceptor); its key caps it
            priority_cap.set(key.level)
            ask_priority(call_priority.get())
            return key

        def streaming(behavior):
            """A streaming behavior that holds one of the key's stream places while it runs."""

            async def holding(request_or_requests, context):
                key = admit()
                with store.stream(key):
                    async for response in behavior(request_or_requests, context):
                        yield response

            return holding

        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request, context):
                admit()
                return await behavior(request, context)

            return handler._replace(unary_unary=unary)
        if handler.unary_stream is not None:
            behavior = handler.unary_stream
            if not inspect.isasyncgenfunction(behavior):  # one that writes with context.write

                async def writes(request, context):
                    key = admit()
                    with store.stream(key):
                        await behavior(request, context)

                return handler._replace(unary_stream=writes)
            return handler._replace(unary_stream=streaming(behavior))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=streaming(handler.stream_stream))
        return handler


def new_key_entry(key_id: str) -> tuple[str, dict]:
    """A fresh random key and the keys-file entry that admits it."""
    key = "gsk_" + secrets.token_urlsafe(32)
    return key, {"id": key_id, "sha256": hash_key(key)}


def main(argv: list[str] | None = None) -> None:
    """Print a new key and the entry to add to the keys file."""
    parser = argparse.ArgumentParser(
        prog="python -m genserve.gateway.auth", description="Make an API key for the gateway."
    )
    parser.add_argument("--id", required=True, help="the key's id, shown in logs and metrics")
    args = parser.parse_args(argv)
    key, entry = new_key_entry(args.id)
    print(f"key (give it to the caller; it is not stored): {key}")
    print(f"keys-file entry: {json.dumps(entry)}")


if __name__ == "__main__":
    main()
