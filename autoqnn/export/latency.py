"""LiteRT latency of `.tflite` files on this machine: median milliseconds of one invoke.

Files are timed together, interleaved: each round invokes every file `invokes` times in
turn, so a busy machine slows them alike and their ratios stay meaningful; the median
over all rounds is reported. The key of the machine and runtime (`machine_key`) says
where a measurement holds: a cache of latencies is only valid under the same key.

Example:
    >>> import contextlib, io, tensorflow as tf
    >>> from autoqnn.export.latency import time_files
    >>> inputs = tf.keras.Input((4,))
    >>> model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(inputs))
    >>> with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its artifact
    ...     flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    >>> ms = time_files({"fc": flat}, rounds=2, invokes=5)
    >>> 0 < ms["fc"] < 100
    True
"""

from __future__ import annotations

import os
import platform
import time
from importlib.metadata import version as package_version

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def machine_key(num_threads: int) -> str:
    """`"<cpu model>|<cores> cores|litert <version>|<n> threads"`: where a latency holds."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"{cpu}|{os.cpu_count()} cores|litert {package_version('ai-edge-litert')}|"
            f"{num_threads} threads")


def _interpreter(content: bytes, num_threads: int):
    interpreter = Interpreter(model_content=bytes(content), num_threads=num_threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        dtype = np.dtype(detail["dtype"])
        if dtype.kind == "f":
            value = rng.random(detail["shape"], dtype=np.float32).astype(dtype)
        else:
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max, detail["shape"], endpoint=True,
                                 dtype=dtype)
        interpreter.set_tensor(detail["index"], value)
    return interpreter


def time_files(files: dict, *, num_threads: int = 1, rounds: int = 15, invokes: int = 20,
               warmup: int = 5) -> dict:
    """Median LiteRT latency (ms) of one invoke per file, files interleaved per round.

    Args:
        files: `{name: flatbuffer bytes}` (batch as the file says, random inputs).
        num_threads: LiteRT threads (XNNPACK uses them too).
        rounds: rounds; each invokes every file `invokes` times.
        invokes: invokes per file per round.
        warmup: untimed invokes per file first.

    Returns:
        `{name: median ms}`.

    Raises:
        ValueError: `num_threads`, `rounds` or `invokes` below 1.
    """
    for name, value in (("num_threads", num_threads), ("rounds", rounds),
                        ("invokes", invokes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    interpreters = {name: _interpreter(content, num_threads) for name, content in files.items()}
    for interpreter in interpreters.values():
        for _ in range(warmup):
            interpreter.invoke()
    times = {name: [] for name in files}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, interpreter in interpreters.items():
            for _ in range(invokes):
                start = clock()
                interpreter.invoke()
                times[name].append(clock() - start)
    return {name: float(np.median(values) * 1e3) for name, values in times.items()}
