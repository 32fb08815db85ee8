"""Differentiable search: DNAS over schemes (QSS) and learnable bitwidths (QPL).

The searchable model has, on every weighted layer, a `Quantizer` with a
mixture of candidate schemes (DNAS), a trainable bitwidth (QPL) or both
(`autoqnn.layers.quantizer`). Training alternates, DARTS-style with the
first-order approximation, between

* a **weight step** on a training batch: task loss, network weights only;
* an **architecture step** on a validation batch: task loss + lambda * precision
  loss, mixture logits and bitwidths only.

The bi-level split is what keeps the architecture from overfitting the
training batches (the logits would otherwise follow whichever candidate the
weights adapted to); the first-order form costs one extra forward/backward per
step instead of DARTS' second-order unrolling. The precision loss is
`relu(cost / budget - 1)^2 + 0.01 * cost / budget`, with `cost` the
differentiable model size (sum of params * `expected_bits()`, the mixture
average and/or trainable bits) or the average bits: zero pressure below the
budget apart from a small pull towards fewer bits. Mixture temperatures anneal
geometrically from `tau_start` to `tau_end` over the epochs.

After the epochs the model is finalized (argmax scheme, rounded bits) and
**repaired**: when the rounded policy overshoots the budget, the sensitivity
table of the finalized model (`autoqnn.search.sensitivity`) and the exact solver
(`autoqnn.search.budget`) lower the bits of the least sensitive layers, each
layer choosing among bits at most its searched value, until the budget holds
exactly. Then the derived model is fine-tuned (QAT, `finetune_epochs`).

Checkpoints: after every epoch the searchable model, the optimiser-free state
and the history go to `checkpoint_dir`; a second call resumes at the next
epoch, and a finished search returns at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from autoqnn.layers.quantized import QuantizedWeightsMixin
from autoqnn.walk import iter_layers

DEFAULT_CANDIDATES = (
    {"name": "uniform", "bits": 4, "granularity": "per_channel"},
    {"name": "pot", "bits": 4},
    {"name": "apot", "bits": 4},
    {"name": "lsq", "bits": 4, "granularity": "per_channel"},
)
"""DNAS candidates: the integer grid, power-of-two and additive powers-of-two levels,
and a learned step; four families that export or pack, at the budget's bits."""


def _layers(model):
    return [(path, layer) for path, layer in iter_layers(model)
            if isinstance(layer, QuantizedWeightsMixin) and layer.weight_quantizers]


def _arch_variables(model):
    out = []
    for _, layer in _layers(model):
        for q in layer.weight_quantizers.values():
            out += [v for v in (q.logits, q.bits_variable) if v is not None]
    for _, layer in iter_layers(model):
        q = getattr(layer, "quantizer", None)
        if q is not None:
            out += [v for v in (q.logits, q.bits_variable) if v is not None]
    return out


def expected_cost(model, size: bool):
    """Differentiable `sum params * bits` (bits) or its average (size False)."""
    total, params = 0.0, 0
    for _, layer in _layers(model):
        for attr, q in layer.weight_quantizers.items():
            n = int(np.prod(getattr(layer, attr).shape))
            total = total + n * q.expected_bits()
            params += n
    return total if size else total / max(params, 1)


def _loss_fn(model, loss):
    if loss is not None:
        return keras.losses.get(loss)
    if getattr(model, "loss", None):
        return keras.losses.get(model.loss)
    last = model.layers[-1]
    from_logits = getattr(getattr(last, "activation", None), "__name__", "") != "softmax"
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def _batches(data, batch_size, rng):
    x, y = data
    order = rng.permutation(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def _accuracy(model, data, batch_size=256):
    x, y = data
    hits = 0
    for start in range(0, len(x), batch_size):
        out = np.asarray(model(x[start:start + batch_size], training=False))
        pred = out.argmax(-1) if out.shape[-1] > 1 else (out[..., 0] > 0).astype(int)
        hits += int(np.sum(pred == np.asarray(y[start:start + batch_size]).reshape(pred.shape)))
    return hits / len(x)


class DifferentiableSearch:
    """Runs the alternating search on a searchable quantized model (see the module doc).

    Args:
        model: the searchable quantized model (mixtures / trainable bits).
        train, val: `(x, y)` arrays.
        budget_cost: the cost the precision loss compares with (average bits,
            or weight bits in total when `size` is True).
        size: whether `budget_cost` is a total (size budget) or an average.
        epochs, batch_size, learning_rate, arch_learning_rate, precision_weight,
        tau_start, tau_end: the schedule.
        loss: the task loss (None: the model's, else sparse categorical CE).
        seed: shuffling seed.
        verbose: 1 shows a progress bar per epoch.
    """

    def __init__(self, model, train, val, *, budget_cost, size=False, epochs=3,
                 batch_size=128, learning_rate=1e-3, arch_learning_rate=1e-2,
                 precision_weight=1.0, tau_start=1.0, tau_end=0.1, loss=None, seed=0,
                 verbose=1):
        self.model = model
        self.train, self.val = train, val
        self.budget_cost = float(budget_cost)
        self.size = size
        self.epochs = epochs
        self.batch_size = batch_size
        self.precision_weight = float(precision_weight)
        self.tau = (float(tau_start), float(tau_end))
        self.loss = _loss_fn(model, loss)
        self.seed = seed
        self.verbose = verbose
        arch = _arch_variables(model)
        arch_ids = {id(v) for v in arch}
        self.arch_vars = arch
        self.weight_vars = [v for v in model.trainable_variables if id(v) not in arch_ids]
        self.weight_opt = keras.optimizers.Adam(learning_rate)
        self.arch_opt = keras.optimizers.Adam(arch_learning_rate)
        self.weight_opt.build(self.weight_vars)
        if self.arch_vars:
            self.arch_opt.build(self.arch_vars)
        self._weight_step = tf.function(self._weight_step_eager, reduce_retracing=True)
        self._arch_step = tf.function(self._arch_step_eager, reduce_retracing=True)

    def precision_loss(self):
        ratio = expected_cost(self.model, self.size) / self.budget_cost
        return tf.square(tf.nn.relu(ratio - 1.0)) + 0.01 * ratio

    def _weight_step_eager(self, x, y):
        with tf.GradientTape() as tape:
            out = self.model(x, training=True)
            task = self.loss(y, out) + sum(self.model.losses)
        grads = tape.gradient(task, self.weight_vars)
        self.weight_opt.apply(grads, self.weight_vars)
        return task

    def _arch_step_eager(self, x, y):
        with tf.GradientTape() as tape:
            out = self.model(x, training=True)
            task = self.loss(y, out)
            prec = self.precision_loss()
            total = task + self.precision_weight * prec
        grads = tape.gradient(total, self.arch_vars)
        self.arch_opt.apply(grads, self.arch_vars)
        return task, prec

    def set_temperature(self, epoch):
        start, end = self.tau
        tau = start * (end / start) ** (epoch / max(self.epochs - 1, 1))
        for _, layer in iter_layers(self.model):
            quantizers = list(getattr(layer, "weight_quantizers", {}).values())
            if getattr(layer, "quantizer", None) is not None:
                quantizers.append(layer.quantizer)
            for q in quantizers:
                if q.temperature_variable is not None:
                    q.temperature_variable.assign(tau)
        return tau

    def run_epoch(self, epoch) -> dict:
        rng = np.random.default_rng(self.seed + epoch)
        tau = self.set_temperature(epoch)
        steps = int(np.ceil(len(self.train[0]) / self.batch_size))
        bar = keras.utils.Progbar(steps) if self.verbose else None
        val_batches = _batches(self.val, self.batch_size, rng)
        tasks, precs = [], []
        start = time.perf_counter()
        for i, (x, y) in enumerate(_batches(self.train, self.batch_size, rng)):
            tasks.append(float(self._weight_step(x, y)))
            if self.arch_vars:
                try:
                    vx, vy = next(val_batches)
                except StopIteration:
                    val_batches = _batches(self.val, self.batch_size, rng)
                    vx, vy = next(val_batches)
                _, prec = self._arch_step(vx, vy)
                precs.append(float(prec))
            if bar is not None:
                bar.update(i + 1, [("task_loss", tasks[-1])])
        return {"epoch": epoch + 1, "task_loss": float(np.mean(tasks)),
                "precision_loss": float(np.mean(precs)) if precs else 0.0,
                "temperature": tau, "seconds": round(time.perf_counter() - start, 2),
                "expected_cost": float(expected_cost(self.model, self.size)),
                "val_accuracy": _accuracy(self.model, self.val)}


def save_checkpoint(directory, model, history):
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model.save(path / "search.keras")
    (path / "history.json").write_text(json.dumps(history, indent=1))


def load_checkpoint(directory):
    path = Path(directory)
    if not (path / "search.keras").is_file() or not (path / "history.json").is_file():
        return None, []
    return keras.models.load_model(path / "search.keras"), json.loads(
        (path / "history.json").read_text())
