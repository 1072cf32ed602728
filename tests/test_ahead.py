"""map_ahead: results in input order, at most ``depth`` items taken ahead of the consumer, errors
raised where their result would come."""

from __future__ import annotations

import threading
import time

import pytest

from virnuc_hpc.ahead import map_ahead


def test_results_come_in_input_order_whatever_finishes_first():
    def slow_first(n: int) -> int:
        time.sleep(0.02 * (5 - n))
        return n * n

    assert list(map_ahead(slow_first, range(5), depth=4, threads=4)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("depth, threads", [(1, 1), (2, 1), (4, 2)])
def test_at_most_depth_items_are_taken_ahead(depth: int, threads: int):
    taken: list[int] = []

    def items():
        for n in range(20):
            taken.append(n)
            yield n

    for handed, result in enumerate(map_ahead(lambda n: n, items(), depth=depth, threads=threads)):
        assert result == handed
        assert len(taken) - handed <= depth  # submitted and not handed out


def test_the_work_runs_on_named_helper_threads():
    names = list(map_ahead(lambda _: threading.current_thread().name, range(3), depth=2, thread_name="probe"))
    assert all(name.startswith("probe") for name in names), names


def test_an_error_of_the_work_is_raised_in_order():
    def work(n: int) -> int:
        if n == 2:
            raise ValueError("two")
        return n

    got = []
    with pytest.raises(ValueError, match="two"):
        for result in map_ahead(work, range(5), depth=3):
            got.append(result)
    assert got == [0, 1]
