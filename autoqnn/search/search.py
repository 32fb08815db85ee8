"""`autoqnn.search`: automatic per-layer precision under a budget.

Strategy "sensitivity" (retrain-free mixed precision, no labels): quantize
the model with every searchable layer at its largest candidate bits, measure
each layer's sensitivity to each candidate on calibration images
(`autoqnn.search.sensitivity`, in-place bit changes), pick the policy with the
least total sensitivity that meets the budget exactly
(`autoqnn.search.budget`, an integer program solved by HiGHS), then quantize
the model at that policy with the full PTQ recipe (calibration, weight
clipping, bias correction as `ptq` says).

Layers named in `config` keep their settings (pinned, outside the search) but
count in the budget; the first and last layers are not special-cased.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(32, activation="relu", name="a")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="b")(x))
    >>> data = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    >>> result = autoqnn.search(model, calibration_data=data, weight_bits_budget=3.0,
    ...                         verbose=0)
    >>> result.average_weight_bits <= 3.0
    True
    >>> sorted(result.bits())
    ['a', 'b']
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.ptq.config import PTQConfig
from autoqnn.search.budget import fixed_bytes, solve_policy
from autoqnn.search.result import PolicyRow, SearchResult
from autoqnn.search.sensitivity import METRICS, SensitivityTable, measure_sensitivity
from autoqnn.walk import iter_layers

STRATEGIES = ("sensitivity", "dnas", "qpl", "dnas+qpl", "rl")
"""Strategies `search` runs: retrain-free sensitivity mixed precision, the
differentiable ones (`autoqnn.search.dnas_qpl`) and HAQ-style reinforcement
learning (`autoqnn.search.rl`)."""
DEFAULT_CANDIDATE_BITS = (2, 3, 4, 8)
DEFAULT_ACTIVATION_CANDIDATES = (8, 6, 4, 2)


def _inputs_of(data):
    if isinstance(data, tuple) and len(data) in (2, 3):
        return data[0]
    return data


def _check_bits_list(name, bits):
    if isinstance(bits, (int, np.integer)) or not hasattr(bits, "__iter__"):
        raise ValueError(f"{name} must be a sequence of ints, got {bits!r}")
    bits = tuple(bits)
    if not bits or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1
                       for b in bits):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {bits!r}")
    return tuple(sorted({int(b) for b in bits}))


def _pinned_paths(model, config) -> set:
    """Paths of the weighted layers a user's `config` selects (kept out of the search)."""
    from autoqnn.config import QuantizationConfig

    if not config:
        return set()
    qc = QuantizationConfig(overrides=config)
    return {path for path, layer in iter_layers(model)
            if layer.weights and qc.matching_selectors(layer.name, type(layer), path)}


def pinned_paths(model, config, ptq=None) -> set:
    """The layers outside the search: those `config` selects and `ptq.keep_layers`."""
    pinned = _pinned_paths(model, config)
    if ptq is not None and ptq.keep_layers:
        from autoqnn.ptq.apply import select_layers

        pinned |= set(select_layers(model, ptq.keep_layers))
    return pinned


def build_quantized(model, data, weight_overrides, *, config, ptq, scheme, bits,
                    activation_bits, granularity, num_samples):
    """The PTQ path of the search: `quantize` calibrated on `data`, every searched layer
    at `bits` unless `weight_overrides` says otherwise, the user's `config` on top."""
    from autoqnn.api import quantize

    overrides = {**weight_overrides, **(config or {})}
    if ptq is not None:
        return quantize(model, calibration_data=data, config=overrides,
                        ptq=ptq.replace(weight_bits=bits))
    return quantize(model, scheme=scheme, weight_bits=bits, activation_bits=activation_bits,
                    granularity=granularity, calibration_data=data, config=overrides,
                    calibration_samples=num_samples)


def _memory(model) -> dict:
    """`{activation quantizer path: (elements per sample, bits)}`."""
    out = {}
    for path, layer in iter_layers(model):
        if isinstance(layer, ActivationQuantizer) and layer.built:
            shape = layer.input.shape[1:] if len(layer._inbound_nodes) == 1 else None
            if shape is None or None in shape:
                continue
            out[path] = (int(np.prod(shape)), layer.quantizer.scheme.bits)
    return out


def search(model, train_data=None, val_data=None, *, strategy: str = "sensitivity",
           calibration_data=None, weight_bits_budget: float | None = None,
           size_budget_bytes: float | None = None, memory_budget_bytes: float | None = None,
           candidate_bits=DEFAULT_CANDIDATE_BITS, activation_bits: int | None = 8,
           candidate_activation_bits=DEFAULT_ACTIVATION_CANDIDATES, scheme: str = "uniform",
           granularity: str = "per_channel", ptq: PTQConfig | dict | None = None,
           config: dict | None = None, metric: str = "kl", num_samples: int | None = 512,
           checkpoint_dir=None, seed: int = 0, verbose: int = 1, candidates=None,
           epochs: int = 3, finetune_epochs: int = 3, loss=None, batch_size: int = 128,
           learning_rate: float = 1e-3, precision_weight: float = 1.0, episodes: int = 30,
           rl_finetune_steps: int = 0, rl_config=None, executor=None,
           scheme_scope: str = "layer", qpl_start: str = "sensitivity",
           arch_update: str | None = None) -> SearchResult:
    """Searches per-layer weight bits (and, for a memory budget, activation bits).

    Args:
        model: the trained float Keras model (not changed).
        train_data: training data as `fit` takes it; its inputs calibrate when
            `calibration_data` is not given (the labels are not used here).
        val_data: unused by "sensitivity" (accepted for the other strategies);
            "rl" rewards its top-1 accuracy (default: the last 10 % of a
            labelled `train_data`).
        strategy: "sensitivity" (retrain-free), the differentiable "dnas"
            (a scheme per layer), "qpl" (learned bits per layer) and
            "dnas+qpl" (both), which train on `train_data` / `val_data`, or
            "rl" (a DDPG agent picks each layer's bits over `episodes`
            retrain-free episodes, `autoqnn.search.rl`).
        calibration_data: inputs (no labels needed), e.g. a few hundred images.
        weight_bits_budget: parameter-weighted average weight bits to stay under.
        size_budget_bytes: model size (as the report counts it) to stay under.
        memory_budget_bytes: largest quantized activation tensor (batch 1) to
            stay under; activation bits per quantizer are lowered through
            `candidate_activation_bits` until it holds.
        candidate_bits: weight bits a layer may take (those its scheme accepts).
        activation_bits: activation bits (None: float activations).
        candidate_activation_bits: activation bits tried for the memory budget.
        scheme, granularity: the weight scheme of the searched layers.
        ptq: a `PTQConfig` (calibration, clipping, bias correction); its bits
            are set by the search.
        config: per-layer overrides (`quantize`'s); the layers they select are
            pinned: kept as configured, out of the search, in the budget.
        metric: "kl" (classifier logits) or "mse" (other outputs).
        num_samples: calibration images used for the sensitivities.
        checkpoint_dir: keep the sensitivity table there; a search with the
            same model, data size and settings reuses it ("rl": the agent,
            replay buffer, random state and history after every episode; a
            longer run resumes a shorter one).
        seed: seeds the differentiable and "rl" strategies ("sensitivity" is
            deterministic).
        verbose: 1 shows progress (probes, epochs).
        candidates: DNAS candidate schemes (default
            `autoqnn.search.differentiable.DEFAULT_CANDIDATES`).
        epochs, finetune_epochs: search epochs and QAT epochs of the derived
            model (differentiable strategies; "rl" fine-tunes its final model
            for `finetune_epochs` when `train_data` has labels).
        loss: task loss (default: the model's, else sparse categorical CE).
        batch_size, learning_rate: training settings.
        precision_weight: lambda of the precision loss.
        episodes: "rl" episodes (default 30, the first 10 random warm-up:
            `rl_config={"warmup_episodes": ...}`).
        rl_finetune_steps: "rl": distillation steps on `train_data` before
            each episode's accuracy (0: retrain-free, the default).
        rl_config: "rl" agent and reward settings, an `RLConfig` or a dict
            (HAQ's defaults).
        executor: "rl" only: evaluate episodes in batches on an `Executor`,
            e.g. "ray" (`pip install autoqnn[distributed]`); None: serially.
        scheme_scope: "dnas" / "dnas+qpl": "layer" (a scheme per layer) or "model"
            (one scheme for the whole model, chosen by the parameter-weighted mixture
            probabilities; `autoqnn.search.differentiable.unify_scheme`).
        qpl_start: "qpl" / "dnas+qpl": where the trainable bits start, "sensitivity"
            (the retrain-free policy at the budget, judged with 8-bit activations) or
            "budget" (every layer at the budget's bits, the projection's start).
        arch_update: differentiable strategies: "bilevel" (architecture steps on
            `val_data` batches, alternating with weight steps on `train_data`) or
            "joint" (one step on `train_data` for both: about half the time of an
            epoch, `autoqnn.search.differentiable`); None: "bilevel".

    Returns:
        A `SearchResult` (`result.model` is quantized and calibrated).

    Raises:
        ValueError: unknown strategy or metric, no budget, a budget no policy
            meets (the message states the achievable minimum), no data, bad bits.
    """
    from autoqnn.rewrite.qag import check_model

    start = time.perf_counter()
    check_model(model)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if weight_bits_budget is None and size_budget_bytes is None and memory_budget_bytes is None:
        raise ValueError("give a budget: weight_bits_budget=, size_budget_bytes= or "
                         "memory_budget_bytes=")
    for name, value in (("weight_bits_budget", weight_bits_budget),
                        ("size_budget_bytes", size_budget_bytes),
                        ("memory_budget_bytes", memory_budget_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not np.isfinite(value) or value <= 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    candidate_bits = _check_bits_list("candidate_bits", candidate_bits)
    candidate_activation_bits = _check_bits_list("candidate_activation_bits",
                                                 candidate_activation_bits)
    from autoqnn.schemes import get_scheme

    scheme_cls = type(get_scheme(scheme))
    outside = [b for b in candidate_bits if not scheme_cls.min_bits <= b <= scheme_cls.max_bits]
    if outside:
        raise ValueError(f"candidate_bits {candidate_bits} include {tuple(outside)}, outside the "
                         f"range [{scheme_cls.min_bits}, {scheme_cls.max_bits}] of scheme "
                         f"{scheme!r}")
    if scheme_scope not in ("layer", "model"):
        raise ValueError(f"scheme_scope must be 'layer' or 'model', got {scheme_scope!r}")
    if qpl_start not in ("sensitivity", "budget"):
        raise ValueError(f"qpl_start must be 'sensitivity' or 'budget', got {qpl_start!r}")
    if arch_update not in (None, "bilevel", "joint"):
        raise ValueError(f"arch_update must be None, 'bilevel' or 'joint', got {arch_update!r}")
    if executor is not None and strategy != "rl":
        raise ValueError(f"executor= is used by strategy='rl' only, got strategy={strategy!r}")
    if strategy == "rl":  # calibrates on train_data's or val_data's inputs by default
        return _rl(model, train_data, val_data, locals())
    data = calibration_data if calibration_data is not None else _inputs_of(train_data)
    if data is None:
        raise ValueError("search needs calibration_data= (inputs, no labels) or train_data=")
    if strategy != "sensitivity":
        from autoqnn.search.dnas_qpl import search_differentiable

        return search_differentiable(model, train_data, val_data, locals())
    del val_data, seed
    top = candidate_bits[-1]
    if ptq is not None:
        ptq = PTQConfig.from_dict(ptq).replace(activation_bits=activation_bits)
    history = []

    def build(weight_overrides):
        return build_quantized(model, data, weight_overrides, config=config, ptq=ptq,
                               scheme=scheme, bits=top, activation_bits=activation_bits,
                               granularity=granularity, num_samples=num_samples)

    start_model = build({})
    pinned = pinned_paths(model, config, ptq)
    report = start_model.autoqnn_report
    pinned_rows = [r for r in report if r.name in pinned and r.status == "quantized"]
    pinned_params = sum(r.quantized_params for r in pinned_rows)
    pinned_bit_params = sum(r.quantized_params * r.weight_bits for r in pinned_rows)
    table = _load_table(checkpoint_dir, model, data, candidate_bits, metric, num_samples, ptq,
                        sorted(pinned))
    if table is None:
        refine = None
        if ptq is not None and ptq.weight_clipping == "mse":
            from autoqnn.ptq.weights import search_weight_clips

            def refine(layer):
                search_weight_clips(start_model, layers=[layer])
        table = measure_sensitivity(start_model, model, data, candidate_bits, metric=metric,
                                    num_samples=num_samples, refine=refine, exclude=pinned,
                                    verbose=verbose)
        _save_table(checkpoint_dir, table, model, data, candidate_bits, metric, num_samples, ptq,
                    sorted(pinned))
    history.append({"step": "sensitivity", "layers": len(table.layers),
                    "probes": sum(len(c) - 1 for c in table.candidates.values()),
                    "seconds": round(table.seconds, 3), "metric": metric})
    searched = list(table.layers)
    solve_start = time.perf_counter()
    if weight_bits_budget is not None or size_budget_bytes is not None:
        policy = solve_policy({p: table.values[p] for p in searched},
                              {p: table.params[p] for p in searched},
                              weight_bits_budget=weight_bits_budget,
                              size_budget_bytes=size_budget_bytes,
                              fixed_bytes=fixed_bytes(report, searched),
                              pinned_params=pinned_params, pinned_bit_params=pinned_bit_params)
    else:
        policy = {p: top for p in searched}
    history.append({"step": "solve", "seconds": round(time.perf_counter() - solve_start, 4),
                    "predicted_distortion": table.start_distortion + sum(
                        table.values[p][b] for p, b in policy.items())})
    final = build({p: {"weight_bits": b} for p, b in policy.items()})
    memory = _fit_memory(final, memory_budget_bytes, candidate_activation_bits, data, ptq,
                         num_samples, history)
    budget = {"weight_bits_budget": weight_bits_budget, "size_budget_bytes": size_budget_bytes,
              "memory_budget_bytes": memory_budget_bytes}
    return _result(final, history, strategy, start, memory, budget, table, activation_bits)


def _result(final, history, strategy, start, memory, budget, table, activation_bits):
    """The `SearchResult` of a searched model (its report gives the policy rows)."""
    report = final.autoqnn_report
    rows = [PolicyRow(r.name, r.scheme, r.weight_bits, activation_bits, r.quantized_params,
                      r.quantized_params * r.weight_bits / 8)
            for r in report if r.status == "quantized"]
    result = SearchResult(final, rows, history, strategy, time.perf_counter() - start,
                          report.size_bytes, memory,
                          {k: v for k, v in budget.items() if v is not None}, table)
    final.autoqnn_search = result
    return result


def _rl(model, train_data, val_data, args) -> SearchResult:
    from autoqnn.search import rl

    names = ("calibration_data", "weight_bits_budget", "size_budget_bytes",
             "memory_budget_bytes", "candidate_bits", "activation_bits",
             "candidate_activation_bits", "scheme", "granularity", "config", "num_samples",
             "checkpoint_dir", "seed", "verbose", "episodes", "rl_config", "rl_finetune_steps",
             "finetune_epochs", "loss", "batch_size", "learning_rate", "executor")
    ptq = args["ptq"]
    if ptq is not None:
        ptq = PTQConfig.from_dict(ptq).replace(activation_bits=args["activation_bits"])
    final, history = rl.run(model, train_data, val_data, ptq=ptq,
                            **{name: args[name] for name in names})
    from autoqnn.report import quantization_report

    final.autoqnn_report = quantization_report(final)  # a checkpointed model has none
    budget = {k: args[k] for k in ("weight_bits_budget", "size_budget_bytes",
                                   "memory_budget_bytes")}
    memory = _fit_memory(final, None, args["candidate_activation_bits"], None, None, None, [])
    return _result(final, history, "rl", args["start"], memory, budget, None,
                   args["activation_bits"])


def _fit_memory(model, budget, candidates, data, ptq, num_samples, history) -> float:
    """Lowers activation bits until every quantized activation tensor fits `budget`."""
    from autoqnn.finalize import set_bits
    from autoqnn.ptq.calibrate import calibrate

    tensors = _memory(model)
    if not tensors:
        if budget is not None:
            raise ValueError(f"memory_budget_bytes={budget!r}: the model has no quantized "
                             "activation whose size is known")
        return 0.0
    if budget is None:
        return max(n * b / 8 for n, b in tensors.values())
    smallest = max(n * candidates[0] / 8 for n, _ in tensors.values())
    if budget < smallest:
        raise ValueError(f"memory_budget_bytes={budget!r} is below the smallest achievable "
                         f"{smallest:.0f} bytes (the largest activation at "
                         f"{candidates[0]} bits)")
    changes = {}
    for path, (n, bits) in tensors.items():
        if n * bits / 8 > budget:
            fits = [b for b in candidates if n * b / 8 <= budget and b < bits]
            changes[path] = max(fits)
    if changes:
        set_bits(model, changes)
        calibrate(model, data, method=ptq.calibration if ptq else "max",
                  num_samples=num_samples)
        history.append({"step": "memory", "activation_bits": changes})
    return max(n * b / 8 for n, b in _memory(model).values())


def _table_key(model, data, candidate_bits, metric, num_samples, ptq, pinned) -> str:
    """A digest of everything the table depends on: weights, data, settings."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.asarray(w).tobytes())
    try:
        x = np.asarray(data[0] if isinstance(data, list) else data)[:num_samples or None]
        digest.update(np.ascontiguousarray(x).tobytes())
    except (TypeError, ValueError):  # a tf.data pipeline: its object identity
        digest.update(repr(data).encode())
    digest.update(json.dumps([list(candidate_bits), metric, num_samples, pinned,
                              None if ptq is None else ptq.to_dict()]).encode())
    return digest.hexdigest()[:16]


def _load_table(directory, *key_args):
    if directory is None:
        return None
    path = Path(directory) / f"sensitivity_{_table_key(*key_args)}.json"
    if not path.is_file():
        return None
    return SensitivityTable.from_dict(json.loads(path.read_text()))


def _save_table(directory, table, *key_args):
    if directory is None:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"sensitivity_{_table_key(*key_args)}.json").write_text(
        json.dumps(table.to_dict(), indent=1))
