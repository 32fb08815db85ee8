"""Executors run trial evaluations: serially, or in parallel through `concurrent.futures`.

An executor maps an evaluation function over a batch of items and returns one
`Outcome` per item, in order. An evaluation that raises is caught and
returned as a failed outcome (the error message kept), so a search goes on.

Example:
    >>> from autoqnn.search.executor import SerialExecutor, ThreadExecutor
    >>> def evaluate(x):
    ...     return 1.0 / x
    >>> [o.value for o in SerialExecutor().map(evaluate, [1, 2])]
    [1.0, 0.5]
    >>> outcome = ThreadExecutor(2).map(evaluate, [4, 0])[1]
    >>> outcome.value is None, outcome.error.startswith("ZeroDivisionError")
    (True, True)
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import time
import traceback


@dataclasses.dataclass
class Outcome:
    """The result of one evaluation: a value, or the error that stopped it."""

    value: float | None
    error: str | None
    seconds: float


def run_one(fn, item) -> Outcome:
    """Calls `fn(item)`; exceptions become a failed `Outcome`."""
    start = time.perf_counter()
    try:
        value = fn(item)
    except Exception as err:  # noqa: BLE001 - every failure is a failed trial
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        return Outcome(None, last, time.perf_counter() - start)
    return Outcome(value, None, time.perf_counter() - start)


class Executor(abc.ABC):
    """Interface: `map(fn, items) -> list[Outcome]` (same order as items).

    Attributes:
        max_workers: how many evaluations can run at once (the tuner asks
            for this many configurations per round).
    """

    max_workers = 1

    @abc.abstractmethod
    def map(self, fn, items) -> list[Outcome]:
        """Evaluates `fn` on every item; failures become failed `Outcome`s."""

    def close(self):  # noqa: B027 - optional hook, deliberately not abstract
        """Releases workers (no-op by default)."""


class SerialExecutor(Executor):
    """Runs evaluations one after the other in this thread."""

    def map(self, fn, items):
        return [run_one(fn, item) for item in items]


class FuturesExecutor(Executor):
    """Runs evaluations on a `concurrent.futures.Executor` (thread or process pool).

    Args:
        pool: the pool; with a process pool, `fn` and the items must pickle.
        max_workers: evaluations per round (default: the pool's workers, else 1).
    """

    def __init__(self, pool: concurrent.futures.Executor, max_workers: int | None = None):
        self.pool = pool
        self.max_workers = int(max_workers or getattr(pool, "_max_workers", 1) or 1)

    def map(self, fn, items):
        futures = [self.pool.submit(run_one, fn, item) for item in items]
        return [f.result() for f in futures]

    def close(self):
        self.pool.shutdown(wait=True)


class ThreadExecutor(FuturesExecutor):
    """A `FuturesExecutor` on its own thread pool (`fn` must be thread-safe).

    Args:
        max_workers: number of threads, >= 1.
    """

    def __init__(self, max_workers: int = 2):
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
        super().__init__(concurrent.futures.ThreadPoolExecutor(max_workers), max_workers)


def get_executor(executor) -> Executor:
    """None -> `SerialExecutor`; an int n -> `ThreadExecutor(n)`; executors as they are;
    a `concurrent.futures.Executor` is wrapped in a `FuturesExecutor`."""
    if executor is None:
        return SerialExecutor()
    if isinstance(executor, Executor):
        return executor
    if isinstance(executor, concurrent.futures.Executor):
        return FuturesExecutor(executor)
    if isinstance(executor, int) and not isinstance(executor, bool):
        return SerialExecutor() if executor == 1 else ThreadExecutor(executor)
    raise ValueError(
        f"executor must be None, an int, an autoqnn Executor or a concurrent.futures.Executor, "
        f"got {executor!r}"
    )
