"""The batching machinery both encoders run on: plans under a token budget, pinned copies, batches
in flight, the fp32 recompute of non-finite rows, and the host thread that prepares batches ahead.

Why here and once: the ESM-2 and DNABERT encoders differ in their maths and in how they lay out a
batch, not in how batches are cut, moved to the device, collected and checked. The rules:
- a bag's sequences are sorted by size, so that a batch holds sequences of similar length (padded
  layouts waste little, packed ones leave only the last batch part-filled);
- host -> device copies go through pinned memory, non-blocking, so they queue behind the batch the
  device is running instead of stalling the host;
- device -> host copies of the pooled rows are non-blocking too; a batch is collected (its event
  waited for) only once later batches have been launched, so the device never waits for the host;
- a batch whose rows are not all finite (fp16/bf16 overflow) is recomputed with fp32 weights, made
  on first need; rows always land at their input index, whatever the order batches ran in.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)


# --------------------------------------------------------------------------- plans

def pack_sizes(sizes: Sequence[int] | np.ndarray, budget: int) -> list[np.ndarray]:
    """Packed layout: index arrays in ascending size order (stable), each summing to at most
    ``budget`` tokens.

    Sorting first leaves only the last batch part-filled. An item larger than the budget gets a batch
    to itself. Loops per batch, not per item (cumulative sums + searchsorted): bags hold thousands."""
    sizes = np.asarray(sizes, dtype=np.int64)
    order = np.argsort(sizes, kind="stable")
    ends = np.concatenate(([0], np.cumsum(sizes[order])))
    batches, start = [], 0
    while start < len(order):
        stop = int(np.searchsorted(ends, ends[start] + budget, side="right")) - 1
        stop = max(stop, start + 1)
        batches.append(order[start:stop])
        start = stop
    return batches


def plan_padded(sizes: Sequence[int] | np.ndarray, fits: Callable[[int, int], bool]) -> list[np.ndarray]:
    """Padded layout: index arrays in ascending size order (stable), a batch closed as soon as
    ``fits(rows, longest)`` says one more row of the next size would not fit.

    A sequence that does not fit on its own gets a batch to itself."""
    sizes = np.asarray(sizes, dtype=np.int64)
    order = np.argsort(sizes, kind="stable")
    batches, start = [], 0
    for i in range(1, len(order)):
        if not fits(i + 1 - start, int(sizes[order[i]])):  # order[i] would be the longest
            batches.append(order[start:i])
            start = i
    return batches + [order[start:]] if len(order) else []


# --------------------------------------------------------------------------- copies

def pin(host: Tensor | np.ndarray) -> Tensor:
    """A host array in page-locked memory (a tensor already pinned is returned as is)."""
    tensor = torch.from_numpy(np.ascontiguousarray(host)) if isinstance(host, np.ndarray) else host
    return tensor.pin_memory()


def to_device(host: Tensor | np.ndarray, device: torch.device) -> Tensor:
    """Host array -> device tensor; on CUDA from pinned memory with a non-blocking copy, so the
    transfer queues behind the running batch. On the CPU the host tensor itself."""
    if device.type != "cuda":
        return torch.from_numpy(np.ascontiguousarray(host)) if isinstance(host, np.ndarray) else host
    return pin(host).to(device, non_blocking=True)


@dataclass
class InFlight:
    """A launched batch whose pooled rows are on their way to host memory."""

    index: np.ndarray           # (B,) input rows, in batch order
    rows: Tensor                # (B, D) fp32 on the host once ``done`` has fired
    finite: Tensor              # all True when every row is finite (host, once ``done`` has fired)
    done: torch.cuda.Event | None


def copy_to_host(index: np.ndarray, rows: Tensor, finite: Tensor,
                 stream: torch.cuda.Stream | None = None) -> InFlight:
    """Start the device -> host copy of a batch's pooled rows and finiteness flag; returns at once.

    With ``stream`` the copy runs on that side stream into freshly pinned buffers, so the next
    batch's compute is not queued behind it; without, it is queued on the current stream. On the
    CPU nothing is copied."""
    if not rows.is_cuda:
        return InFlight(index, rows, finite, None)
    if stream is None:
        rows_host, finite_host = rows.to("cpu", non_blocking=True), finite.to("cpu", non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return InFlight(index, rows_host, finite_host, done)
    stream.wait_stream(torch.cuda.current_stream(rows.device))
    with torch.cuda.stream(stream):
        rows_host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        finite_host = torch.empty(finite.shape, dtype=finite.dtype, pin_memory=True)
        rows_host.copy_(rows, non_blocking=True)
        finite_host.copy_(finite, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
    rows.record_stream(stream)
    finite.record_stream(stream)
    return InFlight(index, rows_host, finite_host, done)


class Harvest:
    """Collects launched batches into ``out`` in launch order, leaving ``ahead`` of them in flight.

    ``recompute(index)`` gives the fp32 rows of a batch that came back non-finite; every such batch
    is counted in ``stats["nonfinite_recomputed_batches"]``."""

    def __init__(self, out: np.ndarray, recompute: Callable[[np.ndarray], np.ndarray],
                 stats: dict[str, int], ahead: int) -> None:
        self.out, self.recompute, self.stats, self.ahead = out, recompute, stats, ahead
        self.pending: deque[InFlight] = deque()

    def add(self, job: InFlight) -> None:
        """One more batch in flight; the oldest ones beyond ``ahead`` are collected (waited for)."""
        self.pending.append(job)
        while len(self.pending) > self.ahead:
            self.collect(self.pending.popleft())

    def drain(self) -> None:
        while self.pending:
            self.collect(self.pending.popleft())

    def collect(self, job: InFlight) -> None:
        if job.done is not None:
            job.done.synchronize()  # this batch only: later ones keep the device busy meanwhile
        if bool(job.finite.all()):
            self.out[job.index] = job.rows.numpy()
        else:
            self.stats["nonfinite_recomputed_batches"] += 1
            self.out[job.index] = self.recompute(job.index)


class Fp32Weights(Generic[M]):
    """The fp32 weights non-finite fp16/bf16 batches are recomputed with, made on first need (such
    batches are rare, and an fp32 copy of a large model is not kept for nothing).

    ``read()`` re-reads them from the model's file, exact; an encoder built from a module without a
    file passes None and gets an fp32 upcast of the running weights instead. In an fp32 run the
    running module is the fp32 one."""

    def __init__(self, running: M, precision: str, device: torch.device,
                 read: Callable[[], M] | None) -> None:
        self._model: M | None = running if precision == "fp32" else None
        self._running, self._device, self._read = running, device, read

    def get(self) -> M:
        if self._model is None:
            if self._read is not None:
                self._model = self._read()
            else:
                self._model = copy.deepcopy(self._running).to(self._device, torch.float32)
        return self._model


# --------------------------------------------------------------------------- host thread

class Prefetch(Generic[T]):
    """Runs a batch generator on a daemon thread, ``depth`` items ahead of the consumer.

    Tokenisers that release the GIL (Rust, multi-threaded) then tokenise and pack the next batches
    while the main thread launches device work. An exception in the generator is raised in the
    consumer."""

    _DONE = object()

    def __init__(self, produce: Iterable[T], depth: int, name: str = "prefetch") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True, name=name)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, produce: Iterable[T]) -> None:
        try:
            for item in produce:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(self._DONE)

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                item = self._queue.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            self._thread.join()
