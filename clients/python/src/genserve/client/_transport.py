"""Call plumbing shared by the sync and asyncio clients: address, channel
options, metadata, deadlines and the retry policy.

Only UNAVAILABLE is retried, and only for calls that are safe to repeat: the
read-only and deterministic calls always, Generate and Complete only when the
request carries a seed (then a repeat gives the same samples).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from genserve.client.errors import DeadlineExceededError, GenserveError

Metadata = Mapping[str, str] | Sequence[tuple[str, str]]

REQUEST_ID_KEY = "x-request-id"
DEFAULT_ADDR = "localhost:50051"
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def resolve_address(addr: str | None) -> str:
    """The server address: `addr`, else $GENSERVE_ADDR, else localhost:50051."""
    return addr or os.environ.get("GENSERVE_ADDR") or DEFAULT_ADDR


def channel_options(extra: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """Default channel options (64 MiB messages, for image batches) plus `extra`."""
    return [
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        *(extra or ()),
    ]


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries a call that failed with UNAVAILABLE.

    Attributes:
        max_attempts: Attempts in all, the first included; 1 disables retries.
        initial_backoff_s: The wait before the second attempt.
        max_backoff_s: The longest wait between two attempts.
        multiplier: The factor by which the wait grows after each attempt.
        jitter: The fraction of each wait drawn at random, to spread out
            clients that failed together.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff times must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    @classmethod
    def of(cls, retries: int | RetryPolicy) -> RetryPolicy:
        """A policy from a `retries=` argument: a policy, or a count of retries.

        Raises:
            ValueError: the count is negative.
        """
        if isinstance(retries, RetryPolicy):
            return retries
        if retries < 0:
            raise ValueError(f"retries must not be negative, got {retries}")
        return cls(max_attempts=retries + 1)

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based)."""
        base = self.initial_backoff_s * self.multiplier ** (attempt - 1)
        base = min(base, self.max_backoff_s)
        return base * (1 - self.jitter * random.random())


class Attempts:
    """The state of one logical call across its attempts: deadline, metadata, backoff.

    Args:
        policy: The client's retry policy.
        safe: Whether the call may be repeated.
        timeout_s: The deadline for the whole call, retries included; None for none.
        metadata: The call's metadata; an `x-request-id` is added when missing.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        safe: bool,
        timeout_s: float | None,
        metadata: list[tuple[str, str]],
    ) -> None:
        self._policy = policy
        self._safe = safe
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.metadata = with_request_id(metadata)
        self.request_id = dict(self.metadata)[REQUEST_ID_KEY]
        self.attempt = 0

    def start(self) -> float | None:
        """Begin the next attempt.

        Returns:
            The time left for it in seconds, or None when there is no deadline.

        Raises:
            DeadlineExceededError: the deadline has already passed.
        """
        self.attempt += 1
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError(
                "deadline exceeded before the call could be retried", request_id=self.request_id
            )
        return left

    def backoff_s(self, error: GenserveError) -> float | None:
        """The wait before the next attempt, or None when the error is final."""
        if not self._safe or error.code != grpc.StatusCode.UNAVAILABLE:
            return None
        if self.attempt >= self._policy.max_attempts:
            return None
        wait = self._policy.backoff_s(self.attempt)
        if error.retry_delay_s is not None:
            wait = max(wait, min(error.retry_delay_s, self._policy.max_backoff_s))
        if self._deadline is not None and time.monotonic() + wait >= self._deadline:
            return None
        return wait


def merge_metadata(*parts: Metadata | None) -> list[tuple[str, str]]:
    """Join metadata; a later part's key replaces an earlier one's (keys lowercased)."""
    merged: dict[str, str] = {}
    for part in parts:
        if not part:
            continue
        items: Iterable[tuple[str, str]] = part.items() if isinstance(part, Mapping) else part
        for key, value in items:
            merged[key.lower()] = value
    return list(merged.items())


def with_request_id(metadata: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The metadata with a fresh `x-request-id` unless it already has one."""
    if any(key == REQUEST_ID_KEY for key, _ in metadata):
        return metadata
    return [*metadata, (REQUEST_ID_KEY, uuid.uuid4().hex)]
