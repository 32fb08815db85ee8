"""A deployment target for the search: `target="litert"`, the `.tflite` file LiteRT runs.

Without a target the search counts weight bits as the quantization report does (a 3-bit
layer costs 3 bits). A phone runs the `.tflite` file, which stores each weight in a
tensor type LiteRT has for its op (`autoqnn.export.storage`: int2 only for
FULLY_CONNECTED, int4 for CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED, int8
otherwise). With `target="litert"`:

* candidates are limited to what LiteRT stores at the layer's own width: the bits of
  each candidate are put through the exporter's own rule (`plan_weights`, storage
  "narrow") and, per container, only the largest bits stay (a 3-bit convolution is
  stored int4, so 4 bits cost the same bytes and time and are more accurate);
* `size_budget_bytes` counts the bytes of the exported file: the file of the start
  model (every layer at its largest candidate) is written once, and a policy's file
  is that size less, per layer, the bytes its weights save in a narrower container;
* `latency_budget_ms` is LiteRT latency of the file on this machine: the start file
  is timed, and each layer's change of container is timed on a one-layer file
  (`autoqnn.mixed.latency_table`), so the search sees that int4 convolutions are
  smaller but run on LiteRT's reference kernels, slower than XNNPACK's int8;
* the searched model is exported and checked (bytes, and latency when budgeted)
  before it is returned; a miss tightens the budget by the error and solves again
  (`autoqnn.mixed.target_search`).

The name is the runtime's ("litert"): the file format and its kernels decide the bytes
and the speed; the machine the latency is timed on is recorded with it.

Example:
    >>> from autoqnn.mixed.target import check_target
    >>> check_target("litert").num_threads
    1
    >>> check_target("tflm")
    Traceback (most recent call last):
    ...
    ValueError: target must be None, 'litert' or a LiteRTTarget, got 'tflm'
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from pathlib import Path

from autoqnn.export.lowering import plan_weights
from autoqnn.export.storage import kernel
from autoqnn.export.tflite import export_tflite
from autoqnn.finalize import set_bits
from autoqnn.mixed.table import layer_candidates

TARGETS = ("litert",)


def default_cache_dir() -> str:
    """$AUTOQNN_CACHE, else ~/.cache/autoqnn (where measured latencies are kept)."""
    return os.environ.get("AUTOQNN_CACHE") or str(Path.home() / ".cache" / "autoqnn")


@dataclasses.dataclass(frozen=True)
class LiteRTTarget:
    """The LiteRT target's settings (`target="litert"` is `LiteRTTarget()`).

    Attributes:
        num_threads: LiteRT threads the latency is measured (and meant) at.
        rounds, invokes: latency timing, median over `rounds` x `invokes` invokes
            per file, files interleaved per round (`autoqnn.export.latency`).
        checks: times the searched file is exported and checked against the budget
            (a miss tightens the budget by the error and solves again).
        cache_dir: where per-layer latencies are cached, keyed by machine, LiteRT
            version, threads, layer configuration and input shape (None: no cache).
    """

    num_threads: int = 1
    rounds: int = 15
    invokes: int = 20
    checks: int = 3
    cache_dir: str | None = dataclasses.field(default_factory=default_cache_dir)

    name = "litert"

    def __post_init__(self):
        for field in ("num_threads", "rounds", "invokes", "checks"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LiteRTTarget.{field} must be a positive int, got {value!r}")

    def to_dict(self) -> dict:
        """The settings (the search's checkpoint key); the cache folder is left out."""
        return {"name": self.name, "num_threads": self.num_threads, "rounds": self.rounds,
                "invokes": self.invokes, "checks": self.checks}


def check_target(target):
    """`None`, or the `LiteRTTarget` of `target` ("litert" or a `LiteRTTarget`)."""
    if target is None or isinstance(target, LiteRTTarget):
        return target
    if isinstance(target, str) and target in TARGETS:
        return LiteRTTarget()
    raise ValueError(f"target must be None, 'litert' or a LiteRTTarget, got {target!r}")


@dataclasses.dataclass(frozen=True)
class StoredCandidate:
    """How one layer is stored in the file at one candidate bit width.

    Attributes:
        bits: the layer's bits.
        container: the tensor type's bits (2, 4 or 8).
        bytes: its quantized weights' bytes in that container.
        kernel: the LiteRT kernel that runs it.
    """

    bits: int
    container: int
    bytes: int
    kernel: str


def weight_bytes(count: int, container: int) -> int:
    """Bytes of `count` integers in a `container`-bit tensor of the file: packed (int4 two
    to a byte, int2 four), padded to a multiple of 4 bytes as the flatbuffer's buffers
    are (measured: a 2,275-weight Dense layer takes 2,276 / 1,140 / 572 bytes at
    int8 / int4 / int2)."""
    return 4 * math.ceil(math.ceil(count * container / 8) / 4)


def stored_candidates(qmodel, layers, candidate_bits) -> dict:
    """`{path: {bits: StoredCandidate}}`: the candidates LiteRT stores at their own width.

    Each candidate is set on the layer (in place) and planned by the exporter; per
    container, only the largest bits stay. The layers are left at their largest
    candidate.

    Args:
        qmodel: the quantized start model.
        layers: `(path, layer)` of the searched layers.
        candidate_bits: the search's candidate bits.

    Raises:
        ValueError: a layer with no candidate its scheme accepts.
    """
    out = {}
    for path, layer in layers:
        bits_list = layer_candidates(layer, candidate_bits)
        if not bits_list:
            raise ValueError(f"candidate_bits {tuple(candidate_bits)} are all outside the bit "
                             f"range of layer {path!r}'s scheme")
        by_container = {}
        for bits in bits_list:
            set_bits(qmodel, {path: bits}, update_report=False)
            plans = plan_weights(path, layer, storage="narrow", inexact="requantize")
            container = max(p.container_bits for p in plans)
            size = sum(weight_bytes(p.values.size, p.container_bits) for p in plans)
            by_container[container] = StoredCandidate(bits, container, size,
                                                      kernel(plans[0].op, container))
        set_bits(qmodel, {path: bits_list[-1]}, update_report=False)
        out[path] = {c.bits: c for c in by_container.values()}
    return out


def tflite_file(qmodel) -> bytes:
    """The `.tflite` bytes `export_tflite(qmodel, path)` writes (storage "narrow")."""
    with tempfile.TemporaryDirectory(prefix="autoqnn_target_") as folder:
        path = Path(folder) / "model.tflite"
        export_tflite(qmodel, path)
        return path.read_bytes()
