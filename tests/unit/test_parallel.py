"""Node starts side by side (llmops/parallel.py): capped, every start finishes, failures come back in order."""

from __future__ import annotations

import threading
import time

import pytest

from llmops.parallel import all_or_first_error, side_by_side


def test_starts_overlap_up_to_the_cap_and_every_one_finishes() -> None:
    lock, running, peak, done = threading.Lock(), [0], [0], []

    def start(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        done.append(i)
        return i * 10

    assert side_by_side([lambda i=i: start(i) for i in range(7)], max_workers=3) == [i * 10 for i in range(7)]
    assert peak[0] == 3 and sorted(done) == list(range(7))


def test_the_first_failure_is_raised_after_the_others_finished() -> None:
    finished: list[int] = []

    def ok(i: int) -> int:
        time.sleep(0.1)
        finished.append(i)
        return i

    def bad(msg: str) -> int:
        raise RuntimeError(msg)

    starts = [lambda: ok(1), lambda: bad("first"), lambda: bad("second"), lambda: ok(2)]
    out = side_by_side(starts)
    assert [type(r).__name__ for r in out] == ["int", "RuntimeError", "RuntimeError", "int"]
    finished.clear()
    with pytest.raises(RuntimeError, match="first"):
        all_or_first_error(starts)
    assert sorted(finished) == [1, 2]  # the slow good starts were not abandoned
    assert all_or_first_error([]) == []
