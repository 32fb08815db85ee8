"""Checkpoints keyed by everything that changes a result.

A search writes its checkpoints into `checkpoint_dir/<kind>_<key>/`, where the key is a
digest of the float model's weights, the data it sees and every setting of the run. The
same call resumes (or returns its finished result); a call with any other setting gets
another key and starts fresh beside it, so a reused directory never hands back a model
searched under another budget.

Example:
    >>> import tempfile, numpy as np
    >>> from autoqnn.checkpoint import KeyedCheckpoint
    >>> root = tempfile.mkdtemp()
    >>> a = KeyedCheckpoint(root, "qpl", {"weight_bits_budget": 4.0}, [np.ones(3)])
    >>> b = KeyedCheckpoint(root, "qpl", {"weight_bits_budget": 2.5}, [np.ones(3)])
    >>> a.path == b.path
    False
    >>> a.path == KeyedCheckpoint(root, "qpl", {"weight_bits_budget": 4.0}, [np.ones(3)]).path
    True
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def digest(*parts) -> str:
    """A 16-hex-digit SHA-256 digest of arrays (their bytes) and JSON-able values."""
    hasher = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            hasher.update(str(part.shape).encode())
            hasher.update(np.ascontiguousarray(part).tobytes())
        else:
            hasher.update(json.dumps(part, sort_keys=True, default=repr).encode())
    return hasher.hexdigest()[:16]


def data_sample(data, count: int | None = None) -> list:
    """What identifies `data` in a key: per array its length and first `count` samples
    (all up to 4096 by default); a `tf.data` pipeline by its repr."""
    if data is None:
        return [None]
    if isinstance(data, (tuple, list)):
        return [part for item in data for part in data_sample(item, count)]
    try:
        array = np.asarray(data)
    except (TypeError, ValueError):
        return [repr(data)]
    if array.dtype == object:
        return [repr(data)]
    return [len(array), np.ascontiguousarray(array[:count or 4096])]


def describe(value):
    """A JSON-able description of a setting (dataclasses, callables and objects by name)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if callable(value) and not isinstance(value, type):
        return getattr(value, "__name__", type(value).__name__)
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, type):
        return value.__name__
    return value


class KeyedCheckpoint:
    """The checkpoint folder of one run: `directory/<kind>_<key>`.

    Args:
        directory: the user's `checkpoint_dir` (None: no checkpoint; `path` is None).
        kind: the strategy, e.g. "sensitivity", "dnas+qpl", "rl".
        settings: every setting that changes the result (a dict of JSON-able values;
            `describe` turns configs into dicts).
        weights: the float model's weights.
        data: the arrays the run sees (or a list of `data_sample` parts).
    """

    def __init__(self, directory, kind: str, settings: dict, weights, *data):
        self.key = digest(*[np.asarray(w) for w in weights], *data,
                          kind, describe(settings))
        self.path = None if directory is None else \
            Path(directory) / f"{kind.replace('+', '_')}_{self.key}"

    def file(self, name: str) -> Path | None:
        """A file in the run's folder (created on demand), or None without a directory."""
        if self.path is None:
            return None
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path / name

    def read_json(self, name: str):
        """The JSON file `name` of this run, or None when absent."""
        if self.path is None or not (self.path / name).is_file():
            return None
        return json.loads((self.path / name).read_text())

    def write_json(self, name: str, value):
        path = self.file(name)
        if path is not None:
            path.write_text(json.dumps(value, indent=1))
