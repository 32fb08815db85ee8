"""Executors run trial evaluations: serially, in parallel through `concurrent.futures`,
or on a Ray cluster (`RayExecutor`, `executor="ray"`).

An executor maps an evaluation function over a batch of items and returns one
`Outcome` per item, in order. An evaluation that raises is caught and
returned as a failed outcome (the error message kept), so a search goes on.

`RayExecutor` runs each evaluation in a Ray actor: a worker process with its
own TensorFlow. The evaluation function (with the model it holds: Keras
models pickle as `.keras` bytes) is put in Ray's object store once per
function and deserialised once per worker, so a worker keeps whatever the
function caches (a quantized model built on its first call). A worker that
dies becomes a failed `Outcome` and is replaced. Ray is optional:
`pip install autoqnn[distributed]`.

Example:
    >>> from autoqnn.executor import SerialExecutor, ThreadExecutor
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

RAY_INSTALL_HINT = "pip install autoqnn[distributed] (or pip install ray)"


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


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"executor='ray' needs Ray: {RAY_INSTALL_HINT}") from err
    return ray


class _Worker:
    """The body of a Ray actor: holds one evaluation function, evaluates items with it."""

    def __init__(self, threads: int | None):
        if threads:
            import tensorflow as tf

            try:  # only possible before this process ran a TensorFlow op
                tf.config.threading.set_intra_op_parallelism_threads(int(threads))
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass
        self.fn = None

    def set_fn(self, fn):
        self.fn = fn  # Ray resolved the object reference: deserialised once, here
        return True

    def run(self, item):
        return run_one(self.fn, item)


class RayExecutor(Executor):
    """Runs evaluations as Ray actor calls, one worker process (own TensorFlow) per slot.

    Args:
        address: an existing Ray cluster (`"auto"`, `"ray://host:10001"`);
            None starts or reuses a local Ray instance (`ray.init()`).
        num_workers: actors (evaluations at once); default: the cluster's
            CPUs divided by `cpus_per_worker`.
        cpus_per_worker: CPUs each actor reserves; also its TensorFlow
            intra-op threads.

    `fn` passed to `map` must pickle with cloudpickle (closures over numpy
    arrays and Keras models do). It is shipped once (`ray.put`) and kept by
    every worker until `map` is called with another function. `close()`
    ends the actors, and Ray itself if this executor started it.

    Raises:
        ImportError: Ray is not installed.
        ValueError: bad `num_workers` / `cpus_per_worker`.
    """

    def __init__(self, address: str | None = None, num_workers: int | None = None,
                 cpus_per_worker: int = 1):
        for name, value in (("num_workers", num_workers), ("cpus_per_worker", cpus_per_worker)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        ray = _import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs = {"address": address, "log_to_driver": False}
            if address is None:
                kwargs.update(include_dashboard=False,
                              num_cpus=None if num_workers is None
                              else num_workers * cpus_per_worker)
            ray.init(**kwargs)
            self._started = True
        if num_workers is None:
            num_workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_worker)
        self.max_workers = num_workers
        self.cpus_per_worker = cpus_per_worker
        self._actor_class = ray.remote(num_cpus=cpus_per_worker, max_restarts=0)(_Worker)
        self._actors = [self._new_actor() for _ in range(num_workers)]
        self._fn = self._fn_ref = None
        self._has_fn = [False] * num_workers

    def _new_actor(self):
        return self._actor_class.remote(self.cpus_per_worker)

    def _ship(self, fn):
        if fn is not self._fn:
            try:
                self._fn_ref = self._ray.put(fn)
            except Exception as err:  # noqa: BLE001 - any pickling failure
                raise ValueError(f"executor='ray' ships the evaluation to its workers, so it "
                                 f"must pickle (cloudpickle); {type(fn).__name__} does not: "
                                 f"{err}") from err
            self._fn = fn
            self._has_fn = [False] * len(self._actors)

    def map(self, fn, items):
        ray = self._ray
        items = list(items)
        self._ship(fn)
        outcomes = [None] * len(items)
        free = list(range(min(len(self._actors), len(items))))
        self._give_fn(free)
        pending = {}  # object ref -> (item index, actor slot, start time)
        queue = list(range(len(items)))
        while queue or pending:
            while queue and free:
                slot, index = free.pop(0), queue.pop(0)
                self._give_fn([slot])
                pending[self._actors[slot].run.remote(items[index])] = (
                    index, slot, time.perf_counter())
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index, slot, start = pending.pop(ref)
                try:
                    outcomes[index] = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker died
                    last = str(err).strip().splitlines()
                    message = f"{type(err).__name__}: {last[0] if last else ''}"
                    outcomes[index] = Outcome(None, message, time.perf_counter() - start)
                    self._replace(slot)
                free.append(slot)
        return outcomes

    def _give_fn(self, slots):
        """Hands the shipped function to the actors in `slots` that lack it, and waits:
        a function that cannot be rebuilt in a worker is a setup error, not a trial's."""
        slots = [s for s in slots if not self._has_fn[s]]
        refs = [self._actors[s].set_fn.remote(self._fn_ref) for s in slots]
        try:
            self._ray.get(refs)
        except self._ray.exceptions.RayError as err:
            raise RuntimeError(f"the evaluation function could not be loaded in a Ray worker "
                               f"(is autoqnn installed on every node?): {err}") from err
        for s in slots:
            self._has_fn[s] = True

    def _replace(self, slot):
        try:
            self._ray.kill(self._actors[slot])
        except Exception:  # noqa: BLE001 - already gone
            pass
        self._actors[slot] = self._new_actor()
        self._has_fn[slot] = False

    def close(self):
        for actor in self._actors:
            try:
                self._ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors = []
        self._fn = self._fn_ref = None
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


def get_executor(executor) -> Executor:
    """None -> `SerialExecutor`; an int n -> `ThreadExecutor(n)`; "ray" -> `RayExecutor()`
    (a local Ray instance); executors as they are; a `concurrent.futures.Executor` is
    wrapped in a `FuturesExecutor`."""
    if executor is None:
        return SerialExecutor()
    if executor == "ray":
        return RayExecutor()
    if isinstance(executor, Executor):
        return executor
    if isinstance(executor, concurrent.futures.Executor):
        return FuturesExecutor(executor)
    if isinstance(executor, int) and not isinstance(executor, bool):
        return SerialExecutor() if executor == 1 else ThreadExecutor(executor)
    raise ValueError(
        f"executor must be None, an int, 'ray', an autoqnn Executor or a "
        f"concurrent.futures.Executor, "
        f"got {executor!r}"
    )
