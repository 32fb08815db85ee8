"""`autoqnn.finetune`: the recommended way to train a quantized model (QAT).

Plain `fit` on a fake-quantized model works when everything is set up
right; `finetune` makes sure it is:

1. **No quantizer trains from an unobserved range.** Activation quantizers
   that were never calibrated are calibrated on the first
   `calibration_samples` training inputs before the first step.
2. **A learning-rate schedule for QAT.** Adam with a linear warm-up over the
   first 5 % of the steps, then cosine decay to 0 (Keras' `CosineDecay`),
   and the global gradient norm clipped at 1.0. The warm-up lets moving
   ranges and learned steps settle before the weights move much; this is
   what keeps a W4A4 run converging at a learning rate where float training
   converges (tested over several seeds).
3. **BatchNorm.** A model quantized with `fold_batchnorm=False` trains its
   BatchNorms with batch statistics. After each epoch their moving
   statistics are re-estimated on `calibration_samples` training inputs
   with the current quantized weights (`reestimate_batchnorm`), and for the
   last epochs (`freeze_batchnorm_after`, default: after 70 % of the
   epochs) they are frozen (moving statistics, no gamma/beta updates), so
   the statistics the model is evaluated and folded with are those it
   trained with (Jacob et al. 2018; Nagel et al. 2022).
4. **Knowledge distillation** from a float `teacher` (Hinton et al. 2015):
   loss = (1 − α) · task loss + α · τ² · KL(softmax(t/τ) ‖ softmax(s/τ)),
   α = `distill_weight` (0.5), τ = `temperature` (2.0). Choices, not taken
   from a source: they are the common defaults.
5. **SQNR term** (`sqnr_weight` = γ > 0): every quantizer adds
   γ / L · 10 · log10(‖x − Q(x)‖² / ‖x‖²), i.e. −γ times the mean over the
   L quantized tensors of their SQNR in dB (Kwon 2022's SQNR loss as
   reconstructed in `REFERENCES.md`); the term reaches learned ranges and
   clips through their LSQ-style gradients. The model's own settings are
   restored afterwards.
6. **Best epoch.** With `val_data`, the weights of the epoch with the best
   validation accuracy are restored at the end (`restore_best=True`).

The model is trained in place, like `fit`.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int64")
    >>> inputs = keras.Input((8,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(16, "relu")(inputs)))
    >>> qmodel = autoqnn.quantize(model, weight_bits=4, activation_bits=4)
    >>> from autoqnn.finetune import finetune     # also autoqnn.finetune
    >>> history = finetune(qmodel, (x, y), epochs=2, verbose=0)
    >>> sorted(history)
    ['learning_rate', 'loss']
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from autoqnn.evaluate import outputs_probabilities, task_loss, top1_of_outputs
from autoqnn.layers.activation import ActivationQuantizer, reset_compiled_functions
from autoqnn.layers.quantized import QuantizedWeightsMixin
from autoqnn.ptq.calibrate import activation_quantizers, calibrate
from autoqnn.walk import iter_layers

WARMUP_FRACTION = 0.05
CLIP_NORM = 1.0
DEFAULT_LEARNING_RATE = 1e-3
FREEZE_FRACTION = 0.7


def _check_number(name, value, low=0.0, allow_none=False, strict=False):
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and \
        np.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")


def _quantizers(model):
    """Every `Quantizer` of the model (weights and activations)."""

    out = []
    for _, layer in iter_layers(model):
        if isinstance(layer, QuantizedWeightsMixin):
            out += list(layer.weight_quantizers.values())
        elif isinstance(layer, ActivationQuantizer):
            out.append(layer.quantizer)
    return out


def _split(data, argument):
    """`(x, y)` of arrays; `(None, None)` for a tf.data.Dataset of `(x, y)` batches."""
    if hasattr(data, "as_numpy_iterator"):
        return None, None
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"{argument} must be an (x, y) pair or a tf.data.Dataset of (x, y), "
                         f"got {type(data).__name__}")
    x, y = data
    n = len(x[0]) if isinstance(x, (list, tuple)) else len(x)
    if n == 0 or n != len(y):
        raise ValueError(f"{argument} must hold the same positive number of inputs and labels, "
                         f"got {n} and {len(y)}")
    return x, y


def _log_softmax(outputs, probabilities, temperature):
    if probabilities:
        outputs = ops.log(ops.clip(outputs, 1e-7, 1.0))
    return ops.log_softmax(outputs / temperature, axis=-1)


class _Trainer(keras.Model):
    """Trains `student` (shared weights) with the task loss plus distillation."""

    def __init__(self, student, teacher, distill_weight, temperature):
        super().__init__(name=f"{student.name}_finetune")
        self.student = student
        self.teacher = teacher
        self.distill_weight = distill_weight
        self.temperature = temperature
        self.student_probabilities = outputs_probabilities(student)
        self.teacher_probabilities = teacher is not None and outputs_probabilities(teacher)

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        task = super().compute_loss(x, y, y_pred, sample_weight, training)
        if self.teacher is None:
            return task
        tau = self.temperature
        target = ops.stop_gradient(self.teacher(x, training=False))
        log_t = _log_softmax(target, self.teacher_probabilities, tau)
        log_s = _log_softmax(y_pred, self.student_probabilities, tau)
        kl = ops.mean(ops.sum(ops.exp(log_t) * (log_t - log_s), axis=-1))
        a = self.distill_weight
        return (1.0 - a) * task + a * tau * tau * kl


def _check_teacher(teacher, qmodel, sample):
    if teacher is None:
        return
    if not isinstance(teacher, keras.Model):
        raise ValueError(f"teacher must be a Keras model, got {type(teacher).__name__}")
    got = tuple(np.shape(teacher(sample, training=False)))
    want = tuple(np.shape(qmodel(sample, training=False)))
    if got != want:
        raise ValueError(f"teacher outputs shape {got} but the quantized model outputs {want}; "
                         "distillation needs the same outputs")


def _first_inputs(x, data, n):
    if x is not None:
        return [a[:n] for a in x] if isinstance(x, (list, tuple)) else x[:n]
    batches, seen = [], 0
    for element in data.as_numpy_iterator():
        batches.append(element[0])
        seen += len(element[0])
        if seen >= n:
            break
    if not batches:
        raise ValueError("train_data is empty (no batch)")
    return np.concatenate(batches)[:n]


def _steps_per_epoch(x, data, batch_size):
    if x is not None:
        n = len(x[0]) if isinstance(x, (list, tuple)) else len(x)
        return math.ceil(n / batch_size)
    cardinality = int(data.cardinality())
    return cardinality if cardinality > 0 else None


def qat_optimizer(learning_rate: float, total_steps: int | None):
    """The optimizer `finetune` trains with: Adam, linear warm-up over the first 5 % of
    `total_steps` then cosine decay to 0 (constant when `total_steps` is None), global
    gradient norm clipped at 1.0. Benchmarks give a float model the same optimizer."""
    schedule = learning_rate
    if total_steps is not None:
        warmup = max(1, int(WARMUP_FRACTION * total_steps))
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0, decay_steps=max(1, total_steps - warmup), alpha=0.0,
            warmup_target=learning_rate, warmup_steps=warmup)
    return keras.optimizers.Adam(schedule, global_clipnorm=CLIP_NORM)


def _batchnorms(model):

    return [layer for _, layer in iter_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def reestimate_batchnorm(model, inputs, batch_size: int = 128) -> int:
    """Sets the moving statistics of the model's trainable BatchNorms to the average batch
    statistics over `inputs`, as the model computes them now (quantized weights included).

    During QAT the weights move every step, so the moving averages lag the network they
    are used with at inference; re-estimating them closes that gap (Nagel et al. 2022,
    "Overcoming oscillations in QAT", BN re-estimation). Nothing else changes: activation
    quantizer ranges touched by the training-mode passes are restored.

    Returns:
        The number of BatchNorm layers re-estimated.
    """

    bns = _batchnorms(model)
    if not bns:
        return 0
    saved = [(v, v.numpy()) for q in activation_quantizers(model) for v in q.weights]
    momenta = [bn.momentum for bn in bns]
    try:
        n = len(inputs[0]) if isinstance(inputs, (list, tuple)) else len(inputs)
        for k, start in enumerate(range(0, n, batch_size)):
            for bn in bns:
                bn.momentum = k / (k + 1.0)  # running mean of the batch statistics
            batch = [a[start:start + batch_size] for a in inputs] \
                if isinstance(inputs, (list, tuple)) else inputs[start:start + batch_size]
            model(batch, training=True)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for variable, value in saved:
            variable.assign(value)
    return len(bns)


class _EpochProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, headed "Epoch i/N" for the whole run (each `fit` call of the
    loop below trains one epoch, and Keras heads a one-epoch `fit` with nothing)."""

    def __init__(self, total: int):
        super().__init__()
        self.total = total

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total


def finetune(qmodel, train_data, epochs: int = 3, *, val_data=None, teacher=None,
             sqnr_weight: float = 0.0, learning_rate: float | None = None,
             batch_size: int = 128, loss=None, distill_weight: float = 0.5,
             temperature: float = 2.0, freeze_batchnorm_after: int | None = None,
             calibration_samples: int = 512, restore_best: bool = True, verbose: int = 1) -> dict:
    """Quantization-aware training of an autoqnn model (see the module docstring).

    Args:
        qmodel: a model from `autoqnn.quantize` (trained in place).
        train_data: `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)` batches.
        epochs: training epochs (>= 1).
        val_data: optional `(x, y)` arrays: per-epoch `val_loss` and
            `val_accuracy`, and the best epoch's weights are restored.
        teacher: the float model to distil from (same outputs), or None.
        sqnr_weight: γ of the SQNR term (0: off).
        learning_rate: peak Adam learning rate (default 1e-3).
        batch_size: batch size for arrays.
        loss: the task loss (default: sparse categorical cross-entropy, from
            logits unless the model ends in a softmax).
        distill_weight: α, the weight of the distillation term in [0, 1].
        temperature: τ of the distillation softmax (> 0).
        freeze_batchnorm_after: epochs after which unfolded BatchNorms are
            frozen (default: 70 % of `epochs`, rounded up, for 2 epochs or
            more; 0: frozen throughout; `epochs` or more: never).
        calibration_samples: training inputs used to calibrate quantizers
            that have no range yet and to re-estimate BatchNorm statistics.
        restore_best: with `val_data`, end on the best validation epoch.
        verbose: 0 silent, 1 a progress bar per epoch.

    Returns:
        `{"loss": [...], "learning_rate": [...], "val_loss": [...],
        "val_accuracy": [...]}`, one value per epoch (total training loss,
        the learning rate at the epoch's end; validation entries only with
        `val_data`).

    Raises:
        ValueError: a model autoqnn did not quantize, bad numbers, data that
            is not `(x, y)`, a teacher whose outputs differ.
    """

    if not isinstance(qmodel, keras.Model):
        raise ValueError(f"qmodel must be a Keras model, got {type(qmodel).__name__}")
    quantizers = _quantizers(qmodel)
    if not quantizers:
        raise ValueError(f"finetune needs a model quantized by autoqnn.quantize; model "
                         f"{qmodel.name!r} has no autoqnn quantizer")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    _check_number("sqnr_weight", sqnr_weight)
    _check_number("learning_rate", learning_rate, allow_none=True, strict=True)
    _check_number("temperature", temperature, strict=True)
    _check_number("distill_weight", distill_weight)
    if distill_weight > 1:
        raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if freeze_batchnorm_after is None:
        freeze_batchnorm_after = math.ceil(FREEZE_FRACTION * epochs) if epochs > 1 else epochs
    elif isinstance(freeze_batchnorm_after, bool) or not isinstance(freeze_batchnorm_after, int) \
            or freeze_batchnorm_after < 0:
        raise ValueError(f"freeze_batchnorm_after must be an int >= 0 or None, got "
                         f"{freeze_batchnorm_after!r}")
    x, y = _split(train_data, "train_data")
    val = None if val_data is None else _split(val_data, "val_data")
    if val is not None and val[1] is None:
        raise ValueError("val_data must be (x, y) arrays, got a dataset")
    sample = _first_inputs(x, train_data, calibration_samples)
    _check_teacher(teacher, qmodel, sample[:2])

    if any(not q.is_calibrated for q in activation_quantizers(qmodel)
           if isinstance(q, ActivationQuantizer)):
        calibrate(qmodel, sample, num_samples=calibration_samples, verbose=0)

    saved_sqnr = [q.sqnr_weight for q in quantizers]
    for q in quantizers:
        q.sqnr_weight = float(sqnr_weight) / len(quantizers)
    frozen = []
    teacher_trainable = None if teacher is None else teacher.trainable
    if teacher is not None:
        teacher.trainable = False  # not among the trained variables (no optimizer slots)
    history: dict[str, list] = {"loss": [], "learning_rate": []}
    if val is not None:
        history.update(val_loss=[], val_accuracy=[])
    best, best_weights = -1.0, None
    try:
        steps = _steps_per_epoch(x, train_data, batch_size)
        lr = DEFAULT_LEARNING_RATE if learning_rate is None else float(learning_rate)
        optimizer = qat_optimizer(lr, None if steps is None else steps * epochs)
        trainer = _Trainer(qmodel, teacher, float(distill_weight), float(temperature))
        task_loss_fn = task_loss(qmodel, loss)
        for epoch in range(epochs):
            if epoch == freeze_batchnorm_after:
                for bn in _batchnorms(qmodel):
                    bn.trainable = False
                    frozen.append(bn)
            if epoch == 0 or epoch == freeze_batchnorm_after:
                trainer.compile(optimizer=optimizer, loss=task_loss_fn)
            fit_args = dict(epochs=epoch + 1, initial_epoch=epoch, verbose=verbose,
                            callbacks=[_EpochProgress(epochs)] if verbose else None)
            if y is None:
                record = trainer.fit(train_data, **fit_args)
            else:
                record = trainer.fit(x, y, batch_size=batch_size, shuffle=True, **fit_args)
            history["loss"].append(float(record.history["loss"][-1]))
            history["learning_rate"].append(float(ops.convert_to_numpy(
                optimizer.learning_rate)))
            if epoch < freeze_batchnorm_after:
                reestimate_batchnorm(qmodel, sample, batch_size)
            if val is not None:
                vx, vy = val
                out = ops.convert_to_tensor(qmodel.predict(vx, batch_size=256, verbose=0))
                history["val_loss"].append(float(ops.mean(task_loss_fn(vy, out))))
                acc = top1_of_outputs(out, vy)
                history["val_accuracy"].append(acc)
                if restore_best and acc > best:
                    best, best_weights = acc, [v.numpy() for v in qmodel.variables]
    finally:
        for q, w in zip(quantizers, saved_sqnr):
            q.sqnr_weight = w
        for bn in frozen:
            bn.trainable = True
        if teacher is not None:
            teacher.trainable = teacher_trainable
        reset_compiled_functions(qmodel)
    if best_weights is not None:
        for variable, value in zip(qmodel.variables, best_weights):
            variable.assign(value)
    return history
