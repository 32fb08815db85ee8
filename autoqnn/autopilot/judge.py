"""How the autopilot judges a candidate quantized model: against the float model, on
images held out from the ones it calibrates and measures sensitivities on.

Without labels the judge is the mean KL divergence of the candidate's class
distribution from the float model's (`autoqnn.mixed.table.distortion`, the quantity the
sensitivity table adds up); with labels it is top-1 accuracy, KL breaking ties. Higher
`Score.key` is better either way.

Example:
    >>> import keras, numpy as np
    >>> from autoqnn.autopilot.judge import Judge, split_holdout
    >>> inputs = keras.Input((8,))
    >>> model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    >>> x = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    >>> calibrate, held_out = split_holdout(x)
    >>> len(calibrate), len(held_out)
    (48, 16)
    >>> judge = Judge(model, held_out)
    >>> judge(model).kl
    0.0
"""

from __future__ import annotations

import dataclasses

import numpy as np

from autoqnn.evaluate import outputs_probabilities, top1_of_outputs
from autoqnn.mixed.table import distortion

HOLDOUT_FRACTION = 0.25
"""Share of the calibration images the judge holds out."""
MAX_HOLDOUT = 1000
"""The judge holds out at most this many images."""
MIN_SAMPLES = 8
"""The fewest calibration images the autopilot accepts (some must be held out)."""
MAX_SAMPLES = 8192
"""A `tf.data` pipeline is read up to this many samples."""


@dataclasses.dataclass(frozen=True)
class Score:
    """A candidate's score on the held-out images.

    Attributes:
        kl: mean KL divergence of its class distribution from the float model's
            (0: identical outputs).
        accuracy: top-1 accuracy on the held-out labels (None without labels).
    """

    kl: float
    accuracy: float | None = None

    @property
    def key(self) -> tuple:
        """Sort key, higher is better: accuracy first (when known), then -KL."""
        return (self.accuracy if self.accuracy is not None else 0.0, -self.kl)

    def __str__(self):
        text = f"KL {self.kl:.4f}"
        return text if self.accuracy is None else f"accuracy {self.accuracy:.4f}, {text}"


def as_arrays(data, argument: str):
    """The inputs of `data` as a numpy array (a list of arrays for several inputs): the
    `x` of `(x, y)` pairs, a `tf.data` pipeline read up to `MAX_SAMPLES` samples."""
    if isinstance(data, tuple) and len(data) in (2, 3):
        data = data[0]
    if hasattr(data, "as_numpy_iterator"):
        parts, count = [], 0
        for batch in data.as_numpy_iterator():
            batch = batch[0] if isinstance(batch, tuple) and len(batch) in (2, 3) else batch
            parts.append(batch)
            count += len(batch[0] if isinstance(batch, (list, tuple)) else batch)
            if count >= MAX_SAMPLES:
                break
        if not parts:
            raise ValueError(f"{argument} is empty")
        if isinstance(parts[0], (list, tuple)):
            return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
        return np.concatenate(parts)
    if isinstance(data, (list, tuple)):
        return [np.asarray(part) for part in data]
    return np.asarray(data)


def count(inputs) -> int:
    """Samples in an array or a list of arrays."""
    return len(inputs[0] if isinstance(inputs, list) else inputs)


def take(inputs, index):
    """`inputs[index]` for an array or a list of arrays."""
    return [part[index] for part in inputs] if isinstance(inputs, list) else inputs[index]


def split_holdout(inputs, labels=None, argument: str = "calibration_data"):
    """`(calibrate, held_out)`: the last `HOLDOUT_FRACTION` of the samples (at most
    `MAX_HOLDOUT`) held out for the judge, the rest to calibrate on. With `labels`, each
    part is an `(x, y)` pair.

    Raises:
        ValueError: fewer than `MIN_SAMPLES` samples, or labels of another length.
    """
    n = count(inputs)
    if n < MIN_SAMPLES:
        raise ValueError(f"{argument} has {n} samples: the autopilot holds some out to judge "
                         f"its candidates and needs at least {MIN_SAMPLES} (or fix the recipe "
                         "with recipe='defaults' or ptq=)")
    cut = n - min(MAX_HOLDOUT, max(1, int(n * HOLDOUT_FRACTION)))
    first, last = take(inputs, slice(0, cut)), take(inputs, slice(cut, n))
    if labels is None:
        return first, last
    labels = np.asarray(labels)
    if len(labels) != n:
        raise ValueError(f"{argument} has {n} inputs but {len(labels)} labels")
    return (first, labels[:cut]), (last, labels[cut:])


class Judge:
    """Scores quantized candidates against the float model on held-out inputs.

    Args:
        model: the float model.
        inputs: held-out inputs (array or list of arrays).
        labels: their labels (None: judge by KL alone).
        batch_size: prediction batch size.
    """

    def __init__(self, model, inputs, labels=None, batch_size: int = 256):
        self.inputs = inputs
        self.labels = None if labels is None else np.asarray(labels)
        self.batch_size = batch_size
        self.probabilities = outputs_probabilities(model)
        self.reference = self._logits(model)
        self.float_score = self.score(self.reference)

    def _logits(self, model) -> np.ndarray:
        outputs = np.asarray(model.predict(self.inputs, batch_size=self.batch_size, verbose=0))
        if self.probabilities:
            return np.log(np.clip(outputs, 1e-12, None))
        return outputs

    def score(self, logits) -> Score:
        """The `Score` of outputs `logits` (in the float model's output space)."""
        kl = max(0.0, distortion(self.reference, logits, "kl"))
        accuracy = None if self.labels is None else top1_of_outputs(logits, self.labels)
        return Score(round(kl, 6), accuracy)

    def __call__(self, qmodel) -> Score:
        return self.score(self._logits(qmodel))

    @property
    def size(self) -> int:
        return count(self.inputs)

    def describe(self) -> str:
        kind = "top-1 accuracy (KL breaks ties)" if self.labels is not None else \
            "KL to the float model's outputs"
        return f"{kind} on {self.size} held-out samples"
