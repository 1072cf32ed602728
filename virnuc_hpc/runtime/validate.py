"""``virnuc-hpc validate``: every problem of the inputs, the blocks checked on a local Dask cluster.

The rules are ``reads.validation``'s; this module only decides where the blocks are checked: a
local cluster of one process per core, so a sample of 100M reads is checked at the speed of the
machine with bounded client memory, or the calling process for small inputs (no cluster start).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from functools import partial

from virnuc_hpc.errors import Problem
from virnuc_hpc.reads.reading import Block
from virnuc_hpc.reads.samples import Sample
from virnuc_hpc.reads.validation import (VALIDATE_BLOCK_RECORDS, BlockResult, check_block, check_blocks,
                                         find_problems)

SMALL_INPUT_BYTES = 32 << 20  # below this, validate in the calling process (no cluster start)


def validate_samples(samples: list[Sample], *, workers: int | None = None, parallel: bool | None = None,
                     block_records: int = VALIDATE_BLOCK_RECORDS) -> list[Problem]:
    """Every problem of every input, in input order, without raising. ``parallel``: a local Dask
    cluster of ``workers`` processes (None: when the inputs are not small)."""
    if parallel is None:
        parallel = input_bytes(samples) >= SMALL_INPUT_BYTES
    check = partial(check_on_cluster, workers=workers) if parallel else check_blocks
    return find_problems(samples, check=check, block_records=block_records)


def input_bytes(samples: list[Sample]) -> int:
    """The size on disk of the inputs that are files (the others are reported as problems)."""
    return sum(os.path.getsize(f.path) for s in samples for f in s.files if os.path.isfile(f.path))


def check_on_cluster(blocks: Iterable[Block], spool: str, *, workers: int | None = None) -> list[BlockResult]:
    """The BlockChecker of a local Dask cluster of ``workers`` processes (default one per core), with
    a bounded number of blocks in flight (two per process): the client never holds the whole input."""
    from distributed import Client, LocalCluster, as_completed

    n = workers or os.cpu_count() or 1
    with LocalCluster(n_workers=n, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      processes=True) as cluster, Client(cluster, set_as_default=False) as client:
        results: dict[int, BlockResult] = {}
        source = enumerate(blocks)
        futures = {}
        first = []
        for number, block in itertools.islice(source, 2 * n):
            fut = client.submit(check_block, block, number, spool, pure=False)
            futures[fut.key] = (number, block.file.path)
            first.append(fut)
        pending = as_completed(first, loop=client.loop)
        for fut in pending:
            number, path = futures.pop(fut.key)
            found, ids = fut.result()
            results[number] = (path, found, ids)
            for number2, block in itertools.islice(source, 1):
                nxt = client.submit(check_block, block, number2, spool, pure=False)
                futures[nxt.key] = (number2, block.file.path)
                pending.add(nxt)
        return [results[i] for i in sorted(results)]
