"""What the command line reads and prints: models (with the user's custom layers), `.npz`
arrays, accuracy read-outs and library warnings turned into one-line notes.

Every failure is a `SystemExit` with a message naming the option and the value.

Example:
    >>> from autoqnn.cli_io import check_budget
    >>> check_budget(3.0, (2, 3, 4, 8))
    >>> check_budget(0.5, (2, 3, 4, 8))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    SystemExit: error: --budget 0.5 is below the smallest candidate bits (2): no policy ...
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
import warnings
from pathlib import Path

import numpy as np

_INPUT_KEYS = ("x_calib", "x", "x_train", "x_test")
_EVAL_PAIRS = (("x_test", "y_test"), ("x_val", "y_val"), ("x", "y"), ("x_calib", "y_calib"),
               ("x_train", "y_train"))


def load_custom_objects(paths) -> dict:
    """Imports each user module (a `.py` file) and returns its Keras classes by name.

    A module's `keras.saving.register_keras_serializable` classes register themselves on
    import; every `keras.layers.Layer` / `keras.Model` / `keras.losses.Loss` subclass it
    defines, and a `CUSTOM_OBJECTS` dict if it has one, go to `load_model` too.
    """
    import keras

    objects = {}
    for number, path in enumerate(paths or ()):
        path = Path(path)
        if not path.is_file():
            raise SystemExit(f"error: --custom-objects file not found: {str(path)!r}")
        spec = importlib.util.spec_from_file_location(f"autoqnn_user_{number}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's code: any error, reported with its file
            raise SystemExit(f"error: --custom-objects {str(path)!r} failed to import: "
                             f"{type(err).__name__}: {err}") from None
        kinds = (keras.layers.Layer, keras.losses.Loss, keras.metrics.Metric)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, kinds) and \
                    value.__module__ == module.__name__:
                objects[name] = value
        objects.update(getattr(module, "CUSTOM_OBJECTS", {}))
    return objects


def load_model(path, custom_objects=None):
    """`keras.models.load_model` with the package's classes and the user's modules, without
    the training configuration (`compile=False`: no command needs it, and a legacy `.h5`
    with compiled metrics then loads without a warning or a deserialization error)."""
    import keras

    import autoqnn  # noqa: F401  (registers the quantized layers for load_model)

    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: model file not found: {str(path)!r}")
    objects = load_custom_objects(custom_objects)
    try:
        with quiet_absl():
            return keras.models.load_model(path, custom_objects=objects or None, compile=False)
    except Exception as err:  # keras raises many types for bad files
        text = str(err)
        hint = ""
        if "Could not locate" in text or "Unknown layer" in text:
            hint = ("\n  the model uses a class this process does not know: give the module "
                    "that defines it with --custom-objects my_layers.py")
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise SystemExit(f"error: cannot load {str(path)!r} as a Keras model: "
                         f"{first[:300]}{hint}") from None


@contextlib.contextmanager
def quiet_absl():
    """Hides absl's warnings (e.g. "Compiled the loaded model, but the compiled metrics
    have yet to be built") while a legacy `.h5` loads."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # absl comes with TensorFlow; nothing to quiet without it
        yield
        return
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)


def _scaled(x, model):
    if x.dtype == np.uint8:
        x = x.astype("float32") / 255.0
    expected = len(model.inputs[0].shape)
    if x.ndim == expected - 1:
        x = x[..., None]
    return x.astype("float32")


def _open(path, option):
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: {option} file not found: {str(path)!r}")
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as err:
        raise SystemExit(f"error: {option} {str(path)!r} is not a readable .npz file: "
                         f"{err}") from None


def load_inputs(path, model, option="--data"):
    """Calibration inputs from an .npz: x_calib, x, x_train or x_test (first found)."""
    with _open(path, option) as data:
        key = next((k for k in _INPUT_KEYS if k in data.files), None)
        if key is None:
            raise SystemExit(f"error: {option} {str(path)!r} has none of "
                             f"{', '.join(_INPUT_KEYS)} (arrays: {data.files})")
        return _scaled(data[key], model)


def load_labelled(path, model, option="--eval-data"):
    """(x, y) from an .npz: x_test/y_test, x_val/y_val, x/y, x_calib/y_calib or x_train/y_train."""
    with _open(path, option) as data:
        pair = next(((x, y) for x, y in _EVAL_PAIRS if x in data.files and y in data.files),
                    None)
        if pair is None:
            raise SystemExit(f"error: {option} {str(path)!r} has no labelled pair "
                             f"({', '.join(f'{x}/{y}' for x, y in _EVAL_PAIRS)}; arrays: "
                             f"{data.files})")
        x, y = data[pair[0]], data[pair[1]]
    if len(x) != len(y):
        raise SystemExit(f"error: {option} {str(path)!r} has {len(x)} inputs but {len(y)} labels")
    return _scaled(x, model), y.astype("int64")


def load_labels(path, count, option="--data"):
    """The labels beside `load_inputs`' arrays: y_calib, y, y_train or y_test."""
    with _open(path, option) as data:
        x_key = next(k for k in _INPUT_KEYS if k in data.files)
        y_key = "y" + x_key[1:]
        if y_key not in data.files:
            raise SystemExit(f"error: this --strategy needs labels: {option} {str(path)!r} "
                             f"has {x_key} but no {y_key}")
        labels = data[y_key]
    if len(labels) != count:
        raise SystemExit(f"error: {option} {str(path)!r} has {count} inputs but "
                         f"{len(labels)} labels")
    return labels.astype("int64")


def check_budget(budget, candidate_bits):
    """Refuses an average-bits budget no policy can meet, before any work; notes one that
    every layer meets at the largest candidate."""
    if budget is None:
        return
    low, high = min(candidate_bits), max(candidate_bits)
    if budget < low:
        raise SystemExit(f"error: --budget {budget:g} is below the smallest candidate bits "
                         f"({low}): no policy fits; give --budget between {low} and {high}")
    if budget >= high:
        print(f"note: --budget {budget:g} is at or above the largest candidate bits ({high}): "
              f"every layer gets {high} bits, nothing is searched", file=sys.stderr)


def accuracy_readout(model, qmodel, path, label="quantized"):
    """Prints float and quantized top-1 on `--eval-data` and the points lost."""
    from autoqnn.evaluate import top1_accuracy

    x, y = load_labelled(path, model)
    before = top1_accuracy(model, (x, y))
    after = top1_accuracy(qmodel, (x, y))
    print(f"top-1 on {path} ({len(x)} images): float {100 * before:.2f}%, {label} "
          f"{100 * after:.2f}% ({100 * (after - before):+.2f} points)")
    return before, after


@contextlib.contextmanager
def warnings_as_notes():
    """Library `UserWarning`s print as one `note:` line each (no source line)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        finally:
            seen = set()
            for w in caught:
                text = str(w.message)
                if issubclass(w.category, UserWarning) and text not in seen:
                    seen.add(text)
                    print(f"note: {text}", file=sys.stderr)
