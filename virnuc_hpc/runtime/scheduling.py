"""Streaming bags to the workers: cut from the input, checked against a resume's kept bags,
submitted a few per worker ahead, and reconciled when kept bags have other numerics.

Why a module of its own: the input is never held whole. Bags are cut, submitted and written as
they go, with bounded look-ahead everywhere (kept bags' checksums, bags in flight), so memory stays
flat whatever the input size; the rules for that live here, apart from what each bag computes.
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, as_completed

from virnuc_hpc.ahead import map_ahead
from virnuc_hpc.config import RunConfig
from virnuc_hpc.errors import BagsFailedError
from virnuc_hpc.outputs import store
from virnuc_hpc.reads.bags import Bag, BagRef
from virnuc_hpc.runtime.progress import Progress
from virnuc_hpc.runtime.summary import Milestones
from virnuc_hpc.runtime.threads import available_cpus
from virnuc_hpc.runtime.worker import BagReport, BagRules, run_bag
from virnuc_hpc.runtime.workers import Workers
from virnuc_hpc.timing import StageTimer

log = logging.getLogger("virnuc_hpc")

#: Kept bags whose checksums are read at once on a resume (hashlib and file reads release the GIL).
RESUME_HASH_THREADS = max(1, min(4, available_cpus()))


@dataclass
class BagStream:
    """The run's bags in input order, each one counted as cut; on a resume (``check`` given) a bag
    kept from the earlier run is recorded in ``reused`` (index -> numerics) and not yielded."""
    bags: Iterable[Bag]
    progress: Progress
    check: Callable[[Bag], str | None] | None = None
    threads: int = RESUME_HASH_THREADS
    refs: list[BagRef] = field(default_factory=list)     # every bag cut, computed or kept
    reused: dict[int, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Bag]:
        checked = (checked_ahead(self.bags, self.check, self.threads) if self.check is not None
                   else ((b, None) for b in self.bags))
        for bag, kept in checked:
            self.refs.append(bag.ref)
            self.progress.bag_cut()
            if kept is None:
                yield bag
            else:
                self.reused[bag.index] = kept
                self.progress.bag_reused()
        self.progress.all_cut()


@dataclass
class BagRunner:
    """Computes bags on the run's workers; the first bag makes them ready (``Workers.ready``)."""
    workers: Workers
    outdir: Path
    attrs: dict[str, Any]         # NetCDF attributes of every bag
    rules: BagRules
    hasher: Executor              # where the int8 check's sample is translated
    clock: Milestones
    progress: Progress | None = None

    def compute(self, pending: Iterator[Bag]) -> list[BagReport]:
        first = next(pending, None)
        if first is None:
            return []
        self.rules = self.workers.ready(first, self.rules, self.hasher, self.clock)
        return schedule(self.workers.client, itertools.chain([first], pending), self.outdir, self.attrs,
                        self.rules, self.workers.config, clock=self.clock, timer=self.workers.timer,
                        progress=self.progress)


def checked_ahead(bags: Iterable[Bag], check: Callable[[Bag], str | None],
                  threads: int = RESUME_HASH_THREADS) -> Iterator[tuple[Bag, str | None]]:
    """Each bag, in order, with ``check(bag)``, the checks run in a thread pool a few bags ahead:
    a resume reads every kept bag back to verify its checksum, gigabytes on a big run, which one
    thread would read one file after the other. The look-ahead (2 per thread) bounds the bags
    held at once."""
    return map_ahead(lambda bag: (bag, check(bag)), bags, depth=2 * threads, threads=threads,
                     thread_name="virnuc-bag-sha256")


def schedule(client: Client, todo: Iterator[Bag], outdir: Path, attrs: dict[str, Any], rules: BagRules,
             config: RunConfig, *, clock: Milestones | None = None, timer: StageTimer | None = None,
             progress: Progress | None = None) -> list[BagReport]:
    """Submit bags as they are cut from the input, with bounded look-ahead (a few per worker).

    Dynamic scheduling: a worker that finishes gets the next bag, so faster or joining workers take
    more. A bag whose worker dies is recomputed elsewhere by Dask. Dask blames every bag that was on
    a dying worker, so a bag given up on (KilledWorker) is a suspect, not a culprit: suspects are
    rerun one at a time at the end, where a death can only be their own, and only a bag that then
    kills its worker again is reported with its records. A bag with invalid input stops the run:
    its error is raised here and every other bag is cancelled.
    """
    from distributed import KilledWorker
    from tqdm.auto import tqdm

    reports: list[BagReport] = []
    suspects: list[Bag] = []
    failed: list[BagRef] = []
    held: dict[str, Bag] = {}  # bags in flight, kept until done in case one must be rerun alone

    def in_flight_limit() -> int:
        workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        return workers * config.bags_in_flight_per_worker

    def submit(bag: Bag, attempt: str = "") -> Any:
        key = f"{bag.name}-{bag.digest[:12]}{attempt}"
        held[key] = bag
        light, text = bag.for_transfer()
        with warnings.catch_warnings():  # a bag carries megabytes of reads by design
            warnings.filterwarnings("ignore", message=".*large graph.*", category=UserWarning)
            return client.submit(run_bag, light, text, str(outdir), attrs, rules, pure=False, key=key)

    clock = clock or Milestones()
    timer = timer or StageTimer()
    futures = as_completed([submit(bag) for bag in itertools.islice(todo, in_flight_limit())], loop=client.loop)
    clock.mark("first_bag_submitted")
    t0, tokens = time.perf_counter(), 0
    try:
        # disable=None: tqdm shows the bar only on a terminal (no carriage-return noise in log files)
        with timer("embed_classify"), tqdm(unit="read", disable=True if not config.progress else None,
                                           dynamic_ncols=True, desc="embedding") as bar:
            for future in futures:
                bag = held.pop(future.key)
                try:
                    report = future.result()
                except KilledWorker:
                    suspects.append(bag)
                    log.warning("%s was on two workers that died; it is retried alone at the end", bag.name)
                else:
                    clock.mark("first_bag_done", once=True)
                    reports.append(report)
                    tokens += report.protein_tokens
                    if progress is not None:
                        progress.bag_done(report.frames, report.protein_tokens)
                    bar.update(report.records)
                    bar.set_postfix_str(f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f} ESM tok/s")
                limit = in_flight_limit()  # one scheduler query per finished bag
                while futures.count() < limit:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    futures.add(submit(nxt))
            for bag in suspects:  # alone on the cluster: a worker death now is this bag's own doing
                key = f"{bag.name}-{bag.digest[:12]}-alone"
                try:
                    report = submit(bag, attempt="-alone").result()
                except KilledWorker:
                    failed.append(bag.ref)
                    log.error("%s killed its worker again when run alone; giving up on it", bag.name)
                else:
                    reports.append(report)
                    bar.update(report.records)
                held.pop(key, None)
    except BaseException:
        client.cancel(list(futures.futures))  # e.g. invalid input in one bag: stop the others
        raise
    if failed:
        _write_failed(outdir, failed)
    return reports


def _write_failed(outdir: Path, failed: list[BagRef]) -> None:
    """failed_bags.tsv, the records of the bags given up on, and the error that stops the run."""
    rows = [(r.name, r.sample, r.path, r.first_record, r.first_record + r.n_records - 1) for r in failed]
    store.write_text_atomic(outdir / store.FAILED_BAGS, store.format_columns(
        ("bag", "sample", "file", "first_record", "last_record"), list(zip(*rows))))
    raise BagsFailedError(f"{len(failed)} bag(s) ({', '.join(r.name for r in failed)}) kept killing "
                          f"their worker, also when run alone; their records are listed in "
                          f"{outdir / store.FAILED_BAGS}. The other bags are kept: rerun to retry.")


def stale_bags(reused: dict[int, str], reports: list[BagReport]) -> set[int]:
    """Kept bags whose numerics differ from those of the bags computed now: mixing them would
    give outputs equal to no uninterrupted run. With nothing computed now, the kept bags must
    agree among themselves (the most common numerics win)."""
    if not reused:
        return set()
    current = {r.numerics for r in reports}
    if not current:
        counts = Counter(reused.values())
        if len(counts) <= 1:
            return set()
        current = {counts.most_common(1)[0][0]}
    return {index for index, value in reused.items() if value not in current}
