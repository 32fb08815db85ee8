"""The PTQ search space: option -> list of values, validated, enumerated, one-hot encoded.

Options are `PTQConfig` fields; each value is validated by building a
`PTQConfig` with it and stored in its canonical JSON form (so the space,
the trial log and the history file agree). Configurations are indexed in
grid order (the last option varies fastest).

Any field is an option, e.g. `{"rounding": ["nearest", "adaround"]}`
(learned rounding, `autoqnn.ptq.adaround`). `DEFAULT_SPACE` leaves rounding
out: AdaRound costs seconds per layer in every trial it is on, many times
a trial without it, for a gain that is largest at 3-4 weight bits; add it
(or fix it with `fixed={"rounding": "adaround"}`) for low-bit tunes.

Example:
    >>> from autoqnn.tune.space import SearchSpace
    >>> options = {"calibration_method": ["max", "kl"],
    ...            "granularity": ["per_tensor", "per_channel"]}
    >>> space = SearchSpace(options, fixed={"weight_bits": 4})
    >>> len(space), space.config(3)["granularity"], space.config(3)["weight_bits"]
    (4, 'per_channel', 4)
    >>> space.encode(space.config(1)).tolist()
    [1.0, 0.0, 0.0, 1.0]
    >>> SearchSpace({"calibration_method": []})
    Traceback (most recent call last):
    ...
    ValueError: space['calibration_method'] must be a non-empty list of values, got []
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import warnings

import numpy as np

from autoqnn.ptq.config import RENAMED, PTQConfig

DEFAULT_SPACE = {
    "calibration_method": ["max", "percentile", "kl", "mse"],
    "calibration_samples": [1, 100, 1000],
    "granularity": ["per_tensor", "per_channel"],
    "grid": ["symmetric", "asymmetric", "symmetric_pot"],
}
"""Quantune's space on this library's options (72 configurations per bit setting)."""

_FIELDS = tuple(f.name for f in dataclasses.fields(PTQConfig))


def _renamed(options: dict, argument: str) -> dict:
    """`options` with the PTQConfig fields' old names replaced (DeprecationWarning)."""
    old = [k for k in options if k in RENAMED]
    if old:
        warnings.warn(f"{argument} options {old} are deprecated names; use "
                      f"{[RENAMED[k] for k in old]}", DeprecationWarning, stacklevel=3)
    return {RENAMED.get(k, k): v for k, v in options.items()}


def _canonical(option, value):
    try:
        return PTQConfig.from_dict({option: value}).to_dict()[option]
    except (TypeError, ValueError) as err:
        raise ValueError(f"space[{option!r}] has an invalid value {value!r}: {err}") from None


class SearchSpace:
    """A grid of PTQ configurations.

    Args:
        options: `{PTQConfig field: list of values}`; None gives `DEFAULT_SPACE`.
        fixed: `{PTQConfig field: value}` shared by every configuration
            (e.g. `{"weight_bits": 4}`).

    Raises:
        ValueError: an empty space, an unknown option, an empty or duplicate
            value list, or a value the field does not accept.
    """

    def __init__(self, options: dict | None = None, fixed: dict | None = None):
        options = DEFAULT_SPACE if options is None else options
        if not isinstance(options, dict) or not options:
            raise ValueError(f"space must be a non-empty dict of option -> values, got {options!r}")
        options, fixed = _renamed(options, "space"), _renamed(dict(fixed or {}), "fixed")
        self.options: dict[str, list] = {}
        for option, values in options.items():
            if option not in _FIELDS:
                raise ValueError(
                    f"space has an unknown option {option!r}; options: {list(_FIELDS)}"
                )
            if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) \
                    or not values:
                raise ValueError(
                    f"space[{option!r}] must be a non-empty list of values, got {values!r}"
                )
            canonical = [_canonical(option, v) for v in values]
            if len(set(map(json.dumps, canonical))) != len(canonical):
                raise ValueError(f"space[{option!r}] has duplicate values: {list(values)!r}")
            self.options[option] = canonical
        for option, value in fixed.items():
            if option not in _FIELDS:
                raise ValueError(
                    f"fixed has an unknown option {option!r}; options: {list(_FIELDS)}"
                )
            if option in self.options:
                raise ValueError(f"option {option!r} is both searched and fixed")
            fixed[option] = _canonical(option, value)
        self.fixed = fixed
        self.sizes = [len(v) for v in self.options.values()]
        self._configs = [
            {**self.fixed, **dict(zip(self.options, combo))}
            for combo in itertools.product(*self.options.values())
        ]
        for config in self._configs:  # cross-field checks
            PTQConfig.from_dict(config)
        self.columns = [(o, v) for o, values in self.options.items() for v in values]

    def __len__(self):
        return len(self._configs)

    def __iter__(self):
        return iter(self.configs())

    def config(self, index: int) -> dict:
        """The configuration (a dict of PTQConfig fields) at grid index `index`."""
        return dict(self._configs[index])

    def configs(self) -> list[dict]:
        return [dict(c) for c in self._configs]

    def ptq_config(self, index: int) -> PTQConfig:
        return PTQConfig.from_dict(self._configs[index])

    def key(self, config: dict) -> str:
        """A canonical string of the searched options of `config` (JSON)."""
        return json.dumps({o: config.get(o) for o in self.options}, sort_keys=True)

    def index_of(self, config: dict) -> int | None:
        """Grid index of a configuration (old field names accepted, e.g. from a history
        file written before the rename), or None if it lies outside the space."""
        config = {RENAMED.get(k, k): v for k, v in config.items()}
        if not hasattr(self, "_index"):
            self._index = {self.key(c): i for i, c in enumerate(self._configs)}
        for option, value in self.fixed.items():
            if config.get(option, value) != value:
                return None
        return self._index.get(self.key(config))

    def encode(self, config: dict) -> np.ndarray:
        """One-hot vector of a configuration (zeros for values outside the space)."""
        return np.array([1.0 if config.get(o) == v else 0.0 for o, v in self.columns], "float32")

    def encode_all(self) -> np.ndarray:
        return np.stack([self.encode(c) for c in self._configs])

    def to_dict(self) -> dict:
        return {"options": self.options, "fixed": self.fixed}

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]

    def neighbours(self, index: int) -> list[int]:
        """Grid indices that differ from `index` in exactly one option."""
        digits = self.digits(index)
        found = []
        for position, size in enumerate(self.sizes):
            for value in range(size):
                if value != digits[position]:
                    changed = list(digits)
                    changed[position] = value
                    found.append(self.from_digits(changed))
        return found

    def digits(self, index: int) -> list[int]:
        """Per-option value indices of a grid index."""
        out = []
        for size in reversed(self.sizes):
            out.append(index % size)
            index //= size
        return out[::-1]

    def from_digits(self, digits) -> int:
        index = 0
        for digit, size in zip(digits, self.sizes):
            index = index * size + int(digit)
        return index

    def __repr__(self):
        return f"SearchSpace({self.options!r}, fixed={self.fixed!r}): {len(self)} configurations"
