"""Call priority: whose waiting work is served first.

Three levels. A call's priority comes from its ``x-priority`` metadata
(``high``, ``normal`` or ``low``; none is normal): the serving interceptor
sets :data:`call_priority` for the handler, and the queues read it when the
call's work is queued. The request batchers (by rows, and by tokens per length
bucket) take a batch's requests from :class:`PriorityQueue` (the oldest of the
highest level first), and the step scheduler admits waiting sequences by the
same levels, so a flood of
low-priority calls delays a high-priority one by at most the batch or step
already running. The gateway sets the metadata from the caller's API key
(a key's priority is also the highest its calls may ask for).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Generic, Protocol, TypeVar

from genserve.runtime.errors import InvalidArgument

PRIORITY_KEY = "x-priority"


class Priority(enum.IntEnum):
    """Who is served first: a lower value first."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


call_priority: ContextVar[Priority] = ContextVar("call_priority", default=Priority.NORMAL)
"""The priority of the call being handled."""
priority_cap: ContextVar[Priority] = ContextVar("priority_cap", default=Priority.HIGH)
"""The highest priority the call may have (its API key's, at the gateway)."""


def ask_priority(asked: Priority) -> Priority:
    """Make `asked`, capped by the call's priority_cap, the call's priority; returns it."""
    granted = max(asked, priority_cap.get())
    call_priority.set(granted)
    return granted


def parse_priority(value: str | None) -> Priority:
    """A metadata value's priority; None or "" is normal.

    Raises:
        InvalidArgument: naming the metadata key and the values it takes.
    """
    if not value:
        return Priority.NORMAL
    try:
        return Priority[value.strip().upper()]
    except KeyError:
        names = ", ".join(p.name.lower() for p in Priority)
        raise InvalidArgument(PRIORITY_KEY, f"must be one of {names}") from None


class _Prioritised(Protocol):
    priority: Priority


T = TypeVar("T", bound=_Prioritised)


class PriorityQueue(Generic[T]):
    """One FIFO per priority level; items leave highest level first, oldest first."""

    def __init__(self) -> None:
        self._levels: dict[Priority, collections.deque[T]] = {
            p: collections.deque() for p in Priority
        }
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[T]:
        for level in self._levels.values():
            yield from level

    def append(self, item: T) -> None:
        self._levels[item.priority].append(item)
        self._count += 1

    def peek(self) -> T | None:
        """The item popleft would return, or None when empty."""
        for level in self._levels.values():
            if level:
                return level[0]
        return None

    def popleft(self) -> T:
        """Take the oldest item of the highest level; IndexError when empty."""
        for level in self._levels.values():
            if level:
                self._count -= 1
                return level.popleft()
        raise IndexError("pop from an empty PriorityQueue")

    def remove(self, item: T) -> None:
        """Take `item` out; ValueError when it is not queued."""
        self._levels[item.priority].remove(item)
        self._count -= 1

    def clear(self) -> None:
        for level in self._levels.values():
            level.clear()
        self._count = 0
