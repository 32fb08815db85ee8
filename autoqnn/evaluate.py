"""Shared helpers of the training and search drivers: top-1 accuracy, the task loss,
labelled arrays and the validation split. One of each, used by `finetune`, the
mixed-precision strategies (`autoqnn.mixed`) and the PTQ tuner (`autoqnn.tune`).

Example:
    >>> import keras, numpy as np
    >>> from autoqnn.evaluate import split_validation, top1_accuracy
    >>> x = np.eye(4, dtype="float32"); y = np.arange(4)
    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Identity()(inputs))
    >>> top1_accuracy(model, (x, y))
    1.0
    >>> (train_x, train_y), (val_x, val_y) = split_validation((x, y), 0.25)
    >>> len(train_x), len(val_x)
    (3, 1)
"""

from __future__ import annotations

import keras
import numpy as np

from autoqnn.data import iterate_batches

VALIDATION_FRACTION = 0.1
"""The fraction of a labelled `train_data` the strategies hold out for validation when no
`val_data` is given (the last samples)."""


class FunctionLoss(keras.losses.Loss):
    """A loss function `fn(y_true, y_pred)` as a `keras.losses.Loss` (mean over the batch);
    Keras 3 keeps its own wrapper private."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", "loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def outputs_probabilities(model) -> bool:
    """Whether the model's last layer ends in a softmax (its outputs are probabilities)."""
    last = model.layers[-1]
    return getattr(getattr(last, "activation", None), "__name__", "") == "softmax"


def task_loss(model, loss=None):
    """The task loss as a `keras.losses.Loss` (a mean over the batch): `loss` when given,
    else the model's compiled loss, else sparse categorical cross-entropy on logits or
    probabilities as the model's last layer says."""
    chosen = loss if loss is not None else getattr(model, "loss", None)
    if chosen:
        fn = keras.losses.get(chosen)
        return fn if isinstance(fn, keras.losses.Loss) else FunctionLoss(fn)
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=not outputs_probabilities(model))


def labelled_arrays(data, argument: str):
    """`(x, y)` numpy arrays of labelled data; `argument` names it in errors."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"{argument} must be an (x, y) pair of arrays, got "
                         f"{type(data).__name__}")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"{argument} must hold the same positive number of inputs and labels, "
                         f"got {len(x)} and {len(y)}")
    return x, y


def split_validation(train, fraction: float = VALIDATION_FRACTION):
    """`(train, val)`: the last `fraction` of the `(x, y)` arrays (at least one sample)
    held out for validation."""
    x, y = train
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    cut = max(1, int(len(x) * fraction + 1e-9))
    return (x[:-cut], y[:-cut]), (x[-cut:], y[-cut:])


def top1_of_outputs(outputs, labels, sigmoid: bool = False) -> float:
    """Top-1 accuracy of model `outputs` against integer or one-hot `labels`; a single
    output column is a binary classifier (logit > 0, or probability > 0.5 if `sigmoid`)."""
    out = np.asarray(outputs)
    labels = np.asarray(labels)
    if labels.ndim > 1 and labels.shape[-1] > 1:
        labels = labels.argmax(axis=-1)
    if out.shape[-1] > 1:
        predictions = out.argmax(axis=-1)
    else:
        predictions = (out[..., 0] > (0.5 if sigmoid else 0.0)).astype(int)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} outputs but {len(labels)} labels")
    return float(np.mean(predictions == labels.reshape(predictions.shape)))


def top1_accuracy(model, data, batch_size: int = 256, argument: str = "val_data") -> float:
    """Top-1 accuracy on `(x, y)` (integer or one-hot labels), eagerly, in inference mode.
    A single-output model is a binary classifier (logit > 0, or probability > 0.5 after
    a sigmoid)."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"{argument} must be an (x, y) tuple of arrays")
    x, y = data
    sigmoid = getattr(getattr(model.layers[-1], "activation", None), "__name__", "") == \
        "sigmoid"
    outputs = [np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)))
               for batch in iterate_batches(model, x, batch_size, argument=argument)]
    outputs = np.concatenate(outputs)
    if len(outputs) != len(np.asarray(y)):
        raise ValueError(f"{argument} has {len(outputs)} inputs but {len(np.asarray(y))} labels")
    return top1_of_outputs(outputs, y, sigmoid)
