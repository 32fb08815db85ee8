"""Copies of the layers QAG does not rewrite, with their state.

A layer that stays float (a LayerNorm, an adapted `Normalization`, a user's
`Patches` layer) is copied, never shared with the user's model and never
rebuilt from a config that cannot rebuild it:

* `replicate(layer)` returns an unbuilt copy: `from_config(get_config())` when
  that works; for a layer whose `__init__` takes no `**kwargs` (keras.io
  examples write them so), a twin subclass (`autoqnn.layers.composite`) that
  takes the name, dtype and trainable flag itself, so the copy also reloads
  from `.keras`; else a deep copy of the layer (graph links left out). A
  weight-free layer that cannot be copied at all is shared (it holds no state).
* `copy_state(original, clone)` assigns the variables pairwise in creation
  order (same class, same config: same order; shapes are checked), so two
  variables both named "kernel" in a nested `Sequential` cannot be mixed up,
  then calls `finalize_state()` on every (sub)layer that has one, which turns an
  adapted `Normalization`'s `adapt_mean` / `adapt_variance` into the mean and
  variance its `call` uses.

Example:
    >>> import numpy as np, keras
    >>> from autoqnn.rewrite.replica import copy_state, replicate
    >>> norm = keras.layers.Normalization(); norm.adapt(np.arange(8.0).reshape(4, 2) + 3)
    >>> clone, note = replicate(norm)
    >>> _ = clone(np.zeros((1, 2), "float32")); copy_state(norm, clone)
    >>> np.asarray(clone.mean).ravel().tolist(), note
    ([6.0, 7.0], '')
"""

from __future__ import annotations

import copy

import keras

from autoqnn.layers.composite import quantized_composite, unaccepted_base_kwargs


def replicate(layer):
    """`(copy, note)`: an unbuilt (or, for a deep copy, built) copy of `layer` and what
    to tell the user about it ("" when the layer round-trips through its config).

    Raises:
        TypeError: a weighted layer that can be neither rebuilt nor deep-copied.
    """
    try:
        config = layer.get_config()
    except Exception as err:  # noqa: BLE001 - get_config itself may be unimplemented
        config, config_error = None, err
    if config is not None:
        try:
            return type(layer).from_config(config), ""
        except Exception as err:  # noqa: BLE001 - user code: any error means "cannot"
            config_error = err
        if unaccepted_base_kwargs(type(layer), config):
            try:
                return quantized_composite(layer, {}), no_kwargs_note(layer)
            except Exception as err:  # noqa: BLE001
                config_error = err
    try:
        return deep_copy(layer), (
            f"copied with copy.deepcopy: {type(layer).__name__}.from_config(get_config()) "
            f"fails ({_first_line(config_error)}); fix its get_config/__init__ to save this "
            "model as .keras")
    except Exception as err:  # noqa: BLE001
        if not layer.weights:
            return layer, (f"shared with the float model (weight-free; it cannot be copied: "
                           f"{_first_line(err)})")
        raise TypeError(
            f"layer {layer.name!r} ({type(layer).__name__}) can be neither rebuilt from its "
            f"config ({_first_line(config_error)}) nor deep-copied ({_first_line(err)}); "
            f"give {type(layer).__name__}.__init__ **kwargs and a get_config returning its "
            "arguments") from None


def no_kwargs_note(layer) -> str:
    """The report note of a layer whose `__init__` takes no `**kwargs`."""
    name = type(layer).__name__
    return (f"{name}.__init__ takes no **kwargs: autoqnn keeps it as a twin that reloads from "
            f".keras; add **kwargs to {name}.__init__ (passed to super().__init__) to save "
            "the float model as .keras")


def deep_copy(layer):
    """`copy.deepcopy(layer)` without its links into the model graph (which would copy
    the whole model)."""
    memo = {}
    for attribute in ("_inbound_nodes", "_outbound_nodes"):
        nodes = getattr(layer, attribute, None)
        if nodes is not None:
            memo[id(nodes)] = []
    return copy.deepcopy(layer, memo)


def copy_state(original, clone):
    """Assigns `original`'s variables to the built `clone`'s pairwise (see the module
    docstring), then finalizes preprocessing state.

    Raises:
        RuntimeError: the variables do not pair up (count or shapes).
    """
    copy_in_order(original.weights, clone.weights, original)
    finalize_states(clone)


def copy_in_order(sources, targets, layer):
    """Assigns `sources` to `targets` pairwise (same creation order and shapes)."""
    if len(sources) != len(targets) or any(tuple(s.shape) != tuple(t.shape)
                                           for s, t in zip(sources, targets)):
        raise RuntimeError(
            f"internal error: the weights of {layer.name!r} "
            f"{[(v.name, tuple(v.shape)) for v in sources]} do not pair up with its copy's "
            f"{[(v.name, tuple(v.shape)) for v in targets]}")
    for source, target in zip(sources, targets):
        if source is not target:
            target.assign(keras.ops.convert_to_numpy(source))


def finalize_states(layer):
    """Calls `finalize_state()` on `layer` and its sublayers that define one (adapted
    Normalization, Discretization, lookups), as `keras.models.load_model` does."""
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        finalize = getattr(sub, "finalize_state", None)
        if callable(finalize) and sub.built:
            finalize()


def _first_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:200] if text else type(err).__name__
