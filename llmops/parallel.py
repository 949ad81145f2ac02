"""Node starts side by side: a model load and a health check mostly wait, so several overlap well."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# the most node starts at once: scale-out steps, a pool's floor at `stack up` and a promotion's replacements are
# all small; past this, more loads at once on one host only contend for its disk and cores
MAX_PARALLEL_STARTS = 8


def side_by_side(starts: Sequence[Callable[[], T]], max_workers: int = MAX_PARALLEL_STARTS
                 ) -> list[T | BaseException]:
    """Run every start, at most `max_workers` at once; return when all have finished, each one's result or the
    exception it raised, in order (the caller decides which failures to raise: none is lost or left running)."""
    if not starts:
        return []
    out: list[T | BaseException] = []
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(starts)))) as ex:
        futures = [ex.submit(s) for s in starts]
    for f in futures:
        err = f.exception()
        out.append(err if err is not None else f.result())
    return out


def all_or_first_error(starts: Sequence[Callable[[], T]], max_workers: int = MAX_PARALLEL_STARTS) -> list[T]:
    """`side_by_side`, then raise the first failure (after every start finished) or return the results."""
    results = side_by_side(starts, max_workers)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if not isinstance(r, BaseException)]
