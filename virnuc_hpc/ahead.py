"""Bounded look-ahead: work on the next items on helper threads while the consumer handles this one.

Used wherever a stream of items (bags being cut, kept bags being verified) needs work that releases
the GIL (hashing, file reads, joining bytes): the producer keeps reading on the consumer's thread,
the work runs on a small thread pool, and results come back in input order. The bound (``depth``
items submitted and not yet handed out) keeps memory flat however long the stream is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_ahead(work: Callable[[T], R], items: Iterable[T], *, depth: int, threads: int = 1,
              thread_name: str = "virnuc-ahead") -> Iterator[R]:
    """``work(item)`` for each item, in input order, run on ``threads`` threads while up to
    ``depth`` items (at least 1) are submitted and not yet handed out.

    ``items`` is consumed on the caller's thread, one item ahead of a full window; an error of
    ``work`` is raised where its result would be handed out. Closing the iterator early waits for
    the work already submitted (the pool shuts down)."""
    depth = max(1, depth)
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix=thread_name) as pool:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
