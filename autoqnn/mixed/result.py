"""`SearchResult`: what every `autoqnn.search` strategy returns.

Example:
    >>> from autoqnn.mixed.result import PolicyRow, SearchResult
    >>> rows = [PolicyRow("conv", "uniform", 8, 8, 100, 100.0),
    ...         PolicyRow("fc", "uniform", 2, 8, 900, 225.0)]
    >>> result = SearchResult(None, rows, [], "sensitivity", 0.1)
    >>> result.average_weight_bits, result.weight_bytes
    (2.6, 325.0)
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass
class PolicyRow:
    """One searched layer of the chosen policy.

    Attributes:
        layer: the layer's path.
        scheme: its weight scheme.
        weight_bits: its weight bits.
        activation_bits: bits of its output activations (None: float).
        params: its quantized weight parameters.
        bytes: those parameters' storage at `weight_bits`.
    """

    layer: str
    scheme: str
    weight_bits: int
    activation_bits: int | None
    params: int
    bytes: float


@dataclasses.dataclass
class SearchResult:
    """The outcome of a search.

    Attributes:
        model: the quantized Keras model of the chosen policy (saves as
            `.keras`, exports with `export_tflite` / `export_packed`).
        policy: one `PolicyRow` per searched layer.
        history: per step records (a strategy's epochs, probes, ...).
        strategy: the strategy name.
        seconds: wall time of the search.
        size_bytes: the model's size as `autoqnn.quantization_report` counts it.
        memory_bytes: the largest quantized activation tensor (batch 1, bytes).
        budget: the budget(s) asked for.
        sensitivity: the `SensitivityTable` (strategies that measure one).
    """

    model: object
    policy: list
    history: list
    strategy: str
    seconds: float
    size_bytes: float = 0.0
    memory_bytes: float = 0.0
    budget: dict = dataclasses.field(default_factory=dict)
    sensitivity: object = None

    @property
    def average_weight_bits(self) -> float:
        """Parameter-weighted average weight bits of the searched layers."""
        total = sum(r.params for r in self.policy)
        return sum(r.params * r.weight_bits for r in self.policy) / total if total else 0.0

    @property
    def weight_bytes(self) -> float:
        return float(sum(r.bytes for r in self.policy))

    def bits(self) -> dict:
        """`{layer path: weight bits}`."""
        return {r.layer: r.weight_bits for r in self.policy}

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "seconds": self.seconds,
            "average_weight_bits": self.average_weight_bits,
            "size_bytes": self.size_bytes,
            "memory_bytes": self.memory_bytes,
            "budget": dict(self.budget),
            "policy": [dataclasses.asdict(r) for r in self.policy],
            "history": list(self.history),
            "sensitivity": None if self.sensitivity is None else self.sensitivity.to_dict(),
        }

    def plot(self, path=None):
        """Bar chart of the weight bits per layer (bar width: share of parameters).

        Args:
            path: an image file to write (None: only return the figure).

        Returns:
            The matplotlib `Figure`.

        Raises:
            ImportError: matplotlib is missing (`pip install autoqnn[bench]`).
        """
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError("SearchResult.plot needs matplotlib: pip install "
                              "'autoqnn[bench]' (or pip install matplotlib)") from err
        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(self.policy) + 2), 3.2))
        names = [r.layer for r in self.policy]
        schemes = sorted({r.scheme for r in self.policy})
        colours = {s: f"C{i}" for i, s in enumerate(schemes)}
        ax.bar(range(len(names)), [r.weight_bits for r in self.policy],
               color=[colours[r.scheme] for r in self.policy])
        for i, r in enumerate(self.policy):
            ax.text(i, r.weight_bits + 0.1, str(r.weight_bits), ha="center", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("weight bits")
        ax.set_title(f"{self.strategy}: {self.average_weight_bits:.2f} average bits, "
                     f"{self.size_bytes / 1024:.1f} KiB", fontsize=9)
        for s in schemes:
            ax.bar([], [], color=colours[s], label=s)
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig


def search_result(final, history, strategy, start, memory, budget, table,
                  activation_bits) -> SearchResult:
    """The `SearchResult` of a searched model (its report gives the policy rows), also
    attached to the model as `final.autoqnn_search`.

    Args:
        final: the searched, quantized model (with `autoqnn_report`).
        history: the strategy's step records.
        strategy: the strategy name.
        start: `time.perf_counter()` at the search's start.
        memory: the largest quantized activation tensor (bytes).
        budget: the `autoqnn.mixed.budget.Budget`.
        table: the `SensitivityTable` measured, or None.
        activation_bits: the searched layers' activation bits.
    """
    report = final.autoqnn_report
    rows = [PolicyRow(r.name, r.scheme, r.weight_bits, activation_bits, r.quantized_params,
                      r.quantized_params * r.weight_bits / 8)
            for r in report if r.status == "quantized"]
    result = SearchResult(final, rows, history, strategy, time.perf_counter() - start,
                          report.size_bytes, memory, budget.to_dict(), table)
    final.autoqnn_search = result
    return result
