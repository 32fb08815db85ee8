"""Pictures: the per-layer policy, accuracy against bytes, and a tuner's best-so-far curve.

Each function writes a PNG (or returns the matplotlib `Figure`) and needs matplotlib,
an optional extra (`pip install "autoqnn[notebooks]"`); without it they raise an
`ImportError` that says so. The command line calls them as `autoqnn plot policy|pareto|tuner`.

Example:
    >>> import keras, autoqnn
    >>> from autoqnn.plots import policy_rows
    >>> inputs = keras.Input((8,))
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="head")(inputs))
    >>> qmodel = autoqnn.quantize(model, weight_bits=4, activation_bits=None, verbose=0)
    >>> [(r["layer"], r["weight_bits"], r["params"]) for r in policy_rows(qmodel)]
    [('head', 4, 32)]
"""

from __future__ import annotations

import json
from pathlib import Path

from autoqnn.report import quantization_report
from autoqnn.tune.tuner import read_history


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("autoqnn's plots need matplotlib: pip install 'autoqnn[notebooks]' "
                          "(or pip install matplotlib)") from err
    return plt


def _finish(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        _pyplot().close(fig)
    return fig


def policy_rows(qmodel) -> list:
    """One dict per quantized weighted layer: layer, scheme, weight_bits, params.

    Args:
        qmodel: a quantized Keras model (from `autoqnn.quantize`, a search, or a loaded
            `.keras` file).

    Raises:
        ValueError: the model has no quantized weighted layer.
    """
    rows = [{"layer": r.name, "scheme": r.scheme, "weight_bits": int(r.weight_bits),
             "params": int(r.quantized_params)}
            for r in quantization_report(qmodel) if r.status == "quantized"]
    if not rows:
        raise ValueError(f"model {qmodel.name!r} has no quantized weighted layer: quantize it "
                         "first (autoqnn.quantize / `autoqnn quantize`)")
    return rows


def _sensitivities(sensitivity, rows) -> list | None:
    """Each row's distortion when lowered to its chosen bits (None where not measured)."""
    if sensitivity is None:
        return None
    values = sensitivity.get("values", {}) if isinstance(sensitivity, dict) else {}
    out = [values.get(r["layer"], {}).get(str(r["weight_bits"])) for r in rows]
    return out if any(v is not None for v in out) else None


def plot_policy(qmodel, path=None, *, budget=None, sensitivity=None, title=None):
    """Per-layer weight bits (colour: scheme), each layer's share of the parameters and,
    when given, its measured sensitivity; a dashed line at the budget (or the average).

    Args:
        qmodel: a quantized model (see `policy_rows`).
        path: a PNG to write (None: only return the figure).
        budget: average weight bits to draw as the budget line (default: the
            parameter-weighted average of the policy, drawn as "average").
        sensitivity: a `SensitivityTable.to_dict()` (e.g. the `"sensitivity"` entry of
            `autoqnn search --json`), to add each layer's distortion at its bits.
        title: the figure title.

    Returns:
        The matplotlib `Figure`.
    """
    plt = _pyplot()
    rows = policy_rows(qmodel)
    total = sum(r["params"] for r in rows) or 1
    average = sum(r["params"] * r["weight_bits"] for r in rows) / total
    sens = _sensitivities(sensitivity, rows)
    panels = 3 if sens else 2
    width = max(5.0, 0.45 * len(rows) + 2.5)
    fig, axes = plt.subplots(panels, 1, figsize=(width, 2.0 + 1.6 * panels), sharex=True,
                             gridspec_kw={"height_ratios": [2] + [1] * (panels - 1)})
    schemes = sorted({r["scheme"] for r in rows})
    colours = {s: f"C{i}" for i, s in enumerate(schemes)}
    xs = range(len(rows))
    ax = axes[0]
    bits = [r["weight_bits"] for r in rows]
    ax.bar(xs, bits, color=[colours[r["scheme"]] for r in rows])
    for i, b in enumerate(bits):
        ax.annotate(str(b), (i, b), xytext=(0, 2), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylim(0, max(bits) * 1.25 + 0.5)  # room above the tallest bar for its label
    line = average if budget is None else float(budget)
    ax.axhline(line, color="k", linestyle="--", linewidth=1,
               label=f"{'average' if budget is None else 'budget'} {line:.2f} bits")
    for s in schemes:
        ax.bar([], [], color=colours[s], label=s)
    ax.set_ylabel("weight bits")
    # outside the axes: the legend never covers a bar or a label
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title or f"{qmodel.name}: {average:.2f} average weight bits", fontsize=9)
    share = [100 * r["params"] / total for r in rows]
    axes[1].bar(xs, share, color="0.6")
    axes[1].set_ylabel("% of params")
    if sens:
        axes[2].bar(xs, [v or 0.0 for v in sens], color="C3")
        axes[2].set_ylabel("distortion\nat its bits")
    axes[-1].set_xticks(list(xs), [r["layer"] for r in rows], rotation=60, ha="right",
                        fontsize=7)
    fig.tight_layout()
    return _finish(fig, path)


def pareto_points(results: dict) -> list:
    """(label, bytes, accuracy %) points from a results JSON.

    Reads every list of row dicts in the file (at any depth) whose rows carry an accuracy
    (`accuracy` as a fraction or `top1` in percent) and a size (`size_bytes` or `bytes`);
    the label is the row's `method` (or `variant`), prefixed by the model's key.

    Example:
        >>> pareto_points({"models": {"cnn": {"rows": [
        ...     {"method": "W4", "top1": 90.0, "size_bytes": 1000}]}}})
        [('cnn W4', 1000.0, 90.0)]
    """
    points = []

    def visit(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{prefix} {key}".strip() if key not in _CONTAINERS else prefix)
        elif isinstance(node, list):
            for row in node:
                if not isinstance(row, dict):
                    visit(row, prefix)
                    continue
                accuracy = row.get("top1")
                if accuracy is None and row.get("accuracy") is not None:
                    accuracy = 100 * float(row["accuracy"])
                size = row.get("size_bytes", row.get("bytes"))
                label = row.get("method", row.get("variant"))
                if accuracy is not None and size is not None and label is not None:
                    points.append((f"{prefix} {label}".strip(), float(size), float(accuracy)))
                else:
                    visit(row, prefix)

    visit(results, "")
    return points


_CONTAINERS = {"models", "rows", "runs", "uniform", "search", "settings", "float_plus",
               "export", "row", "results", "budgets"}


def plot_pareto(results, path=None, *, title=None, select=None):
    """Accuracy against bytes, one point per method, the Pareto front drawn as a line.

    Args:
        results: a results dict or the path of a results JSON (see `pareto_points`).
        path: a PNG to write (None: only return the figure).
        title: the figure title.
        select: keep only the points whose label starts with this (e.g. a model's name).

    Raises:
        ValueError: the file holds no row with an accuracy and a size (that `select` keeps).
    """
    name = None
    if not isinstance(results, dict):
        name = str(results)
        results = json.loads(Path(results).read_text())
    points = [p for p in pareto_points(results) if select is None or p[0].startswith(select)]
    if not points:
        raise ValueError(f"results {name or '(dict)'}: no rows with an accuracy (accuracy or "
                         f"top1) and a size (size_bytes or bytes)"
                         + ("" if select is None else f" whose label starts with {select!r}"))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, size, accuracy) in enumerate(points):
        ax.scatter(size / 1024, accuracy, color=f"C{i % 10}", label=label, s=25)
    front, best = [], -1.0
    for _label, size, accuracy in sorted(points, key=lambda p: (p[1], -p[2])):
        if accuracy > best:
            front.append((size / 1024, accuracy))
            best = accuracy
    ax.plot(*zip(*front), color="k", linewidth=1, alpha=0.5, label="Pareto front")
    sizes = [p[1] for p in points]
    if max(sizes) > 10 * min(sizes):
        ax.set_xscale("log")
    ax.set_xlabel("size, KiB")
    ax.set_ylabel("top-1 accuracy %")
    ax.set_title(title or f"{select + ': ' if select else ''}accuracy vs size"
                 f"{f' ({Path(name).name})' if name else ''}", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _finish(fig, path)


def best_so_far(accuracies) -> list:
    """The running maximum of a list of accuracies (None, a failed trial, is skipped).

    Example:
        >>> best_so_far([0.5, None, 0.7, 0.6])
        [0.5, 0.5, 0.7, 0.7]
    """
    out, best = [], None
    for value in accuracies:
        if value is not None and (best is None or value > best):
            best = value
        out.append(best)
    return out


def plot_tuner(histories, path=None, *, title=None):
    """Best-so-far validation accuracy against trials, one line per sampler.

    Args:
        histories: a `tune_ptq` history file (JSON lines), a list of them, or a dict
            {label: list of accuracies} (e.g. several `TuneResult`s' trials).
        path: a PNG to write (None: only return the figure).
        title: the figure title.

    Raises:
        ValueError: no trial in the histories.
    """
    curves = {}
    if isinstance(histories, dict):
        curves = {k: list(v) for k, v in histories.items()}
    else:
        files = [histories] if isinstance(histories, (str, Path)) else list(histories)
        for file in files:
            for trial in read_history(file):
                label = trial.sampler or Path(file).stem
                curves.setdefault(label, []).append(trial.accuracy)
    if not any(v is not None for c in curves.values() for v in c):
        raise ValueError(f"histories {histories!r}: no successful trial to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, accuracies in curves.items():
        curve = best_so_far(accuracies)
        ax.step(range(1, len(curve) + 1), [None if v is None else 100 * v for v in curve],
                where="post", label=label)
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation accuracy so far, %")
    ax.set_title(title or "PTQ tuner: best so far", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _finish(fig, path)
