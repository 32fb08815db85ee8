"""Data: the Fashion-MNIST benchmark set, the bundled demo subset, batch iteration.

Example:
    >>> from autoqnn.data import load_demo_subset
    >>> (x_train, y_train), (x_test, y_test) = load_demo_subset()
    >>> x_train.shape[1:], x_train.dtype
    ((28, 28, 1), dtype('float32'))
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

DEMO_SUBSET = "fashion_mnist_subset.npz"
ENV_DATA = "AUTOQNN_DATA"


def _prepare(x, y):
    x = np.asarray(x, "float32")[..., None] / 255.0
    return x, np.asarray(y, "int64")


def load_npz(path, train_subset: int | None = None, test_subset: int | None = None):
    """Loads an npz with x_train/y_train/x_test/y_test (uint8 images) for Keras.

    Images are scaled to [0, 1] with a channel axis. Subsets take the first N
    samples (the shared split is class-balanced and shuffled).

    Args:
        path: the `.npz` file.
        train_subset: keep this many training samples (None: all).
        test_subset: keep this many test samples (None: all).

    Returns:
        `((x_train, y_train), (x_test, y_test))`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {str(path)!r}")
    with np.load(path) as data:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(data.files)
        if missing:
            raise ValueError(f"data file {str(path)!r} lacks arrays {sorted(missing)}")
        train = _prepare(data["x_train"][:train_subset], data["y_train"][:train_subset])
        test = _prepare(data["x_test"][:test_subset], data["y_test"][:test_subset])
    return train, test


def shared_data_path() -> Path | None:
    """The benchmark file: $AUTOQNN_DATA, or ../shared/data/fashion_mnist.npz if present."""
    candidates = [os.environ.get(ENV_DATA)]
    here = Path.cwd()
    for base in (here, *here.parents):
        candidates.append(base / "shared" / "data" / "fashion_mnist.npz")
        candidates.append(base.parent / "shared" / "data" / "fashion_mnist.npz")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def load_demo_subset():
    """The small Fashion-MNIST subset shipped in the package (offline demo, tests)."""
    with resources.as_file(resources.files("autoqnn.resources") / DEMO_SUBSET) as path:
        return load_npz(path)


def _input_specs(model):
    return [(tuple(t.shape[1:]), str(t.dtype)) for t in model.inputs]


def _check_batch(model, batch, argument):
    arrays = batch if isinstance(batch, (list, tuple)) else [batch]
    specs = _input_specs(model)
    if len(arrays) != len(specs):
        raise ValueError(
            f"{argument} gives {len(arrays)} input array(s) but the model has {len(specs)} inputs"
        )
    for array, (shape, _) in zip(arrays, specs):
        got = tuple(np.shape(array)[1:])
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            raise ValueError(
                f"{argument} has samples of shape {got}, but the model expects {shape}"
            )


def iterate_batches(model, data, batch_size=64, num_samples=None, argument="data", verbose=0):
    """Yields input batches from arrays, `(x, y)` tuples or a `tf.data.Dataset`.

    Args:
        model: the model the batches are for (shapes are checked against it).
        data: numpy array, list of arrays (multi-input), `(x, y)` / `(x, y, w)`
            tuple, or a batched `tf.data.Dataset` of inputs or `(x, y)`.
        batch_size: batch size for arrays.
        num_samples: stop after this many samples (None: all).
        argument: the argument name used in error messages.
        verbose: 1 shows a Keras progress bar.

    Yields:
        numpy arrays (or lists of them for multi-input models).

    Raises:
        ValueError: empty data or samples whose shape does not fit the model.
    """
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
    if data is None:
        raise ValueError(f"{argument} is None")
    n_inputs = len(model.inputs)
    if hasattr(data, "as_numpy_iterator"):
        iterator = _dataset_batches(data, n_inputs)
    else:
        iterator = _array_batches(data, batch_size, n_inputs, argument)
    seen = 0
    progbar = None
    if verbose:
        import keras

        progbar = keras.utils.Progbar(num_samples, unit_name="sample")
    for batch in iterator:
        _check_batch(model, batch, argument)
        size = len(batch[0]) if isinstance(batch, list) else len(batch)
        if num_samples is not None and seen + size > num_samples:
            keep = num_samples - seen
            batch = [b[:keep] for b in batch] if isinstance(batch, list) else batch[:keep]
            size = keep
        if size == 0:
            break
        yield batch
        seen += size
        if progbar is not None:
            progbar.update(seen)
        if num_samples is not None and seen >= num_samples:
            break


def _split_inputs(data, n_inputs):
    """Drops labels: `(x, y)` -> x, keeping lists of inputs for multi-input models."""
    if isinstance(data, dict):
        return list(data.values())
    if isinstance(data, tuple) and len(data) in (2, 3) and n_inputs == 1:
        return data[0]
    if isinstance(data, tuple) and len(data) in (2, 3) and isinstance(data[0], (list, tuple)):
        return list(data[0])
    return data


def _array_batches(data, batch_size, n_inputs, argument):
    x = _split_inputs(data, n_inputs)
    if isinstance(x, (list, tuple)) and all(isinstance(a, np.ndarray) for a in x) \
            and len(x) != n_inputs and n_inputs > 0 and (n_inputs > 1 or len(x) > 1):
        raise ValueError(
            f"{argument} gives {len(x)} input arrays but the model has {n_inputs} input(s)"
        )
    if isinstance(x, (list, tuple)) and n_inputs > 1:
        arrays = [np.asarray(a) for a in x]
    else:
        arrays = [np.asarray(x)]
    for a in arrays:
        if a.ndim == 0:
            raise ValueError(f"{argument} must be an array of samples, got a scalar")
        if len(a) == 0:
            raise ValueError(f"{argument} is empty (0 samples)")
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise ValueError(f"{argument} contains NaN or Inf values")
    n = len(arrays[0])
    for start in range(0, n, batch_size):
        chunk = [a[start:start + batch_size] for a in arrays]
        yield chunk if n_inputs > 1 else chunk[0]


def _dataset_batches(dataset, n_inputs):
    for element in dataset.as_numpy_iterator():
        x = _split_inputs(element, n_inputs)
        if isinstance(x, (list, tuple)):
            x = list(x) if n_inputs > 1 else x[0]
        yield x
