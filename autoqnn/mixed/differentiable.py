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
step instead of DARTS' second-order unrolling. `arch_update="joint"` instead takes
one step on the training batch for the weights and the architecture together
(HGQ2's and Uhlich et al.'s way for learned bitwidths): half the forward/backward
passes of an epoch. Bi-level stays the default, chosen on validation accuracy
(`results/search_arch_update.json`).

The precision loss is `relu(cost / budget - 1)^2 + 0.01 * cost / budget`, with `cost` the
differentiable model size (sum of params * `expected_bits()`, the mixture
average and/or trainable bits) or the average bits: zero pressure below the
budget apart from a small pull towards fewer bits. After every architecture step
the trainable bitwidths are also **projected** onto the budget (`project_bits`: one
common downward shift, each bitwidth clipped to its range), so the network always
trains at bits that fit: the bits' gradients move precision between layers, the
projection keeps the total (the precision loss alone leaves the expected bits over the
budget for epochs, and the repair then makes the last step at once). Mixture
temperatures anneal geometrically from `tau_start` to `tau_end` over the epochs but the
last, which runs hard (temperature 0: the argmax scheme forward, straight-through
gradient to the logits): the soft mixture's accuracy can be far above its argmax
model's, a gap the hard epoch trains away before `finalize` fixes the choice.
`scheme_scope="model"` picks one scheme for the whole model (`unify_scheme`) at the
start of that hard epoch.

After the epochs the model is finalized (argmax scheme, rounded bits) and
**repaired**: when the rounded policy overshoots the budget, the sensitivity
table of the finalized model (`autoqnn.mixed.table`) and the exact solver
(`autoqnn.mixed.budget`) lower the bits of the least sensitive layers, each
layer choosing among bits at most its searched value, until the budget holds
exactly. Then the derived model is fine-tuned (QAT, `finetune_epochs`).

Checkpoints (`autoqnn.mixed.dnas_qpl`): after every epoch the searchable model and the
history go to a folder keyed by the model, data and every setting; the same call resumes
at the next epoch, a finished search returns at once, another setting starts fresh.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from autoqnn.evaluate import task_loss, top1_accuracy
from autoqnn.mixed.budget import bit_plan, expected_cost, project_bits, weighted_layers
from autoqnn.walk import iter_layers

DEFAULT_CANDIDATES = (
    {"name": "uniform", "bits": 4, "granularity": "per_channel"},
    {"name": "pot", "bits": 4, "granularity": "per_channel"},
    {"name": "apot", "bits": 4, "granularity": "per_channel"},
    {"name": "acd", "bits": 4},
)
"""DNAS candidates: the integer grid at its min/max range, power-of-two and additive
powers-of-two levels, and the integer grid with learned SAWB-initialised clips (ACD's
weight side, which holds 2-bit weights better than the min/max grid:
`results/lowbit_qat_w2_cnn.json`), at the budget's bits. All per-channel, so folding
BatchNorm at export keeps the searched function, and all export or pack."""


ARCH_UPDATES = ("bilevel", "joint")


def _arch_variables(model):
    out = []
    for _, layer in weighted_layers(model):
        for q in layer.weight_quantizers.values():
            out += [v for v in (q.logits, q.bits_variable) if v is not None]
    for _, layer in iter_layers(model):
        q = getattr(layer, "quantizer", None)
        if q is not None:
            out += [v for v in (q.logits, q.bits_variable) if v is not None]
    return out


def _batches(data, batch_size, rng):
    x, y = data
    order = rng.permutation(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


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
        project: after every architecture step, project the trainable bitwidths onto
            the budget (`project_bits`); False leaves it to the precision loss alone.
        hard_final: train the last epoch (of two or more) in the hard mode
            (temperature 0: argmax forward, straight-through gradient), so the
            weights adapt to the schemes `finalize` keeps.
        scheme_scope: "layer" (a scheme per layer) or "model" (one scheme for the
            whole model, `unify_scheme`, fixed from the hard epoch on).
        arch_update: "bilevel" (a weight step on a training batch, then an architecture
            step on a validation batch) or "joint" (one step on the training batch
            updates both; the validation split only measures).
        loss: the task loss (None: the model's, else sparse categorical CE).
        seed: shuffling seed.
        verbose: 1 shows a progress bar per epoch.
    """

    def __init__(self, model, train, val, *, budget_cost, size=False, epochs=3,
                 batch_size=128, learning_rate=1e-3, arch_learning_rate=1e-2,
                 precision_weight=1.0, tau_start=1.0, tau_end=0.1, loss=None, seed=0,
                 verbose=1, project=True, hard_final=True, scheme_scope="layer",
                 arch_update="bilevel"):
        self.model = model
        self.train, self.val = train, val
        self.budget_cost = float(budget_cost)
        self.size = size
        self.epochs = epochs
        self.batch_size = batch_size
        self.precision_weight = float(precision_weight)
        self.tau = (float(tau_start), float(tau_end))
        self.loss = task_loss(model, loss)
        self.seed = seed
        self.verbose = verbose
        # Trainable bits, and the constant cost of the rest, do not change during a search.
        self.bit_plan = bit_plan(model) if project else None
        self.hard_final = hard_final
        if scheme_scope not in ("layer", "model"):
            raise ValueError(f"scheme_scope must be 'layer' or 'model', got {scheme_scope!r}")
        self.scheme_scope = scheme_scope
        if arch_update not in ARCH_UPDATES:
            raise ValueError(f"arch_update must be one of {list(ARCH_UPDATES)}, "
                             f"got {arch_update!r}")
        self.arch_update = arch_update
        if project:
            project_bits(model, self.budget_cost, size, self.bit_plan)
        arch = _arch_variables(model)
        arch_ids = {id(v) for v in arch}
        self.arch_vars = arch
        self.weight_vars = [v for v in model.trainable_variables if id(v) not in arch_ids]
        self.weight_opt = keras.optimizers.Adam(learning_rate)
        self.arch_opt = keras.optimizers.Adam(arch_learning_rate)
        self.weight_opt.build(self.weight_vars)
        if self.arch_vars:
            self.arch_opt.build(self.arch_vars)
        # Under a `tf.distribute` strategy scope (e.g. MirroredStrategy over several
        # accelerators) each step splits its batch over the replicas and the optimizers sum
        # the replicas' gradients: Keras losses already divide by the number of replicas,
        # the other terms (layer losses, precision loss) are divided here.
        self.strategy = tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self._scale = 1.0 / self.replicas
        self._weight_step = self._compiled(self._weight_step_eager)
        self._arch_step = self._compiled(self._arch_step_eager)
        self._joint_step = self._compiled(self._joint_step_eager)

    def _compiled(self, step):
        """`step(x, y)` as a tf.function, run data-parallel when there are replicas."""
        if self.replicas == 1:
            return tf.function(step, reduce_retracing=True)
        strategy = self.strategy

        @tf.function(reduce_retracing=True)
        def replicated(x, y):
            out = strategy.run(step, args=(x, y))
            return tf.nest.map_structure(
                lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None), out)

        def call(x, y):
            def shard(context):
                i, n = context.replica_id_in_sync_group, context.num_replicas_in_sync
                return tf.constant(x[i::n]), tf.constant(y[i::n])

            xs, ys = strategy.experimental_distribute_values_from_function(shard)
            return replicated(xs, ys)

        return call

    def precision_loss(self):
        ratio = expected_cost(self.model, self.size) / self.budget_cost
        return tf.square(tf.nn.relu(ratio - 1.0)) + 0.01 * ratio

    def _weight_step_eager(self, x, y):
        with tf.GradientTape() as tape:
            out = self.model(x, training=True)
            task = self.loss(y, out)
            total = task + sum(self.model.losses) * self._scale
        grads = tape.gradient(total, self.weight_vars)
        self.weight_opt.apply(grads, self.weight_vars)
        return total / self._scale

    def _arch_step_eager(self, x, y):
        with tf.GradientTape() as tape:
            out = self.model(x, training=True)
            task = self.loss(y, out)
            prec = self.precision_loss()
            total = task + self.precision_weight * prec * self._scale
        grads = tape.gradient(total, self.arch_vars)
        self.arch_opt.apply(grads, self.arch_vars)
        return task / self._scale, prec

    def _joint_step_eager(self, x, y):
        with tf.GradientTape() as tape:
            out = self.model(x, training=True)
            task = self.loss(y, out)
            prec = self.precision_loss()
            total = task + (sum(self.model.losses) + self.precision_weight * prec) * self._scale
        grads = tape.gradient(total, self.weight_vars + self.arch_vars)
        n = len(self.weight_vars)
        self.weight_opt.apply(grads[:n], self.weight_vars)
        self.arch_opt.apply(grads[n:], self.arch_vars)
        return task / self._scale, prec

    def set_temperature(self, epoch):
        """The epoch's temperature: geometric from `tau_start` to `tau_end` over the soft
        epochs, then 0 (hard, straight-through) for the last one when `hard_final`."""
        start, end = self.tau
        soft = self.epochs - 1 if self.hard_final and self.epochs > 1 else self.epochs
        tau = 0.0 if epoch >= soft else start * (end / start) ** (epoch / max(soft - 1, 1))
        for q in _mixtures(self.model):
            q.temperature_variable.assign(tau)
        return tau

    def run_epoch(self, epoch) -> dict:
        rng = np.random.default_rng(self.seed + epoch)
        tau = self.set_temperature(epoch)
        chosen = None
        if tau == 0.0 and self.scheme_scope == "model":
            chosen = unify_scheme(self.model)
        steps = int(np.ceil(len(self.train[0]) / self.batch_size))
        bar = keras.utils.Progbar(steps) if self.verbose else None
        val_batches = _batches(self.val, self.batch_size, rng)
        tasks, precs = [], []
        start = time.perf_counter()
        joint = self.arch_update == "joint" and bool(self.arch_vars)
        for i, (x, y) in enumerate(_batches(self.train, self.batch_size, rng)):
            if joint:
                task, prec = self._joint_step(x, y)
                tasks.append(float(task))
                precs.append(float(prec))
            else:
                tasks.append(float(self._weight_step(x, y)))
                if self.arch_vars:
                    try:
                        vx, vy = next(val_batches)
                    except StopIteration:
                        val_batches = _batches(self.val, self.batch_size, rng)
                        vx, vy = next(val_batches)
                    _, prec = self._arch_step(vx, vy)
                    precs.append(float(prec))
            if self.arch_vars and self.bit_plan is not None:
                project_bits(self.model, self.budget_cost, self.size, self.bit_plan)
            if bar is not None:
                bar.update(i + 1, [("task_loss", tasks[-1])])
        extra = {} if chosen is None else {"model_scheme": chosen}
        return {"epoch": epoch + 1, **extra, "task_loss": float(np.mean(tasks)),
                "precision_loss": float(np.mean(precs)) if precs else 0.0,
                "temperature": tau, "seconds": round(time.perf_counter() - start, 2),
                "expected_cost": float(expected_cost(self.model, self.size)),
                "val_accuracy": top1_accuracy(self.model, self.val)}


def _mixtures(model):
    """Every scheme-mixture quantizer of the model (weights and activations)."""
    out = []
    for _, layer in iter_layers(model):
        quantizers = list(getattr(layer, "weight_quantizers", {}).values())
        if getattr(layer, "quantizer", None) is not None:
            quantizers.append(layer.quantizer)
        out += [q for q in quantizers if q.temperature_variable is not None]
    return out


def unify_scheme(model) -> str | None:
    """One scheme for the whole model: the candidate with the largest parameter-weighted
    mean mixture probability (at temperature 1) over the weight mixtures becomes every
    weight mixture's choice (its logits are set to 100 * one-hot, which the architecture
    steps cannot overturn). The mixtures must list the same candidate names in the same
    order. Returns the chosen name (None: no weight mixture).
    """
    mixtures, votes, names = [], None, None
    for _, layer in weighted_layers(model):
        for attr, q in layer.weight_quantizers.items():
            if q.logits is None:
                continue
            these = [c.name for c in q.candidates]
            if names is not None and these != names:
                raise ValueError("scheme_scope='model' needs the same candidates on every "
                                 f"layer, got {names} and {these}")
            names = these
            probs = np.asarray(keras.ops.softmax(q.logits)) * int(
                np.prod(getattr(layer, attr).shape))
            votes = probs if votes is None else votes + probs
            mixtures.append(q)
    if not mixtures:
        return None
    best = int(np.argmax(votes))
    for q in mixtures:
        q.logits.assign(100.0 * np.eye(len(names), dtype="float32")[best])
    return names[best]
