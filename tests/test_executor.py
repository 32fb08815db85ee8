"""Executors: order kept, errors become failed outcomes, thread pools run in parallel."""

import concurrent.futures
import threading
import time

import pytest

from autoqnn.executor import FuturesExecutor, SerialExecutor, ThreadExecutor, get_executor


def test_serial_and_errors():
    outcomes = SerialExecutor().map(lambda x: 10 / x, [5, 0, 2])
    assert [o.value for o in outcomes] == [2.0, None, 5.0]
    assert outcomes[1].error.startswith("ZeroDivisionError")


def test_threads_run_concurrently():
    barrier = threading.Barrier(2, timeout=5)

    def evaluate(x):
        barrier.wait()  # deadlocks (timeout error) unless two run at once
        return x

    executor = ThreadExecutor(2)
    try:
        assert [o.value for o in executor.map(evaluate, [1, 2])] == [1, 2]
    finally:
        executor.close()


def test_wrapping_a_pool():
    pool = concurrent.futures.ThreadPoolExecutor(3)
    executor = get_executor(pool)
    assert isinstance(executor, FuturesExecutor) and executor.max_workers == 3
    start = time.perf_counter()
    executor.map(time.sleep, [0.2, 0.2, 0.2])
    assert time.perf_counter() - start < 0.55
    executor.close()


def test_get_executor_validation():
    assert isinstance(get_executor(None), SerialExecutor)
    assert isinstance(get_executor(1), SerialExecutor)
    with pytest.raises(ValueError, match="executor must be"):
        get_executor("fast")
    with pytest.raises(ValueError, match="max_workers must be a positive int, got 0"):
        ThreadExecutor(0)
