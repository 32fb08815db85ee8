"""Quantization schemes: one small serialisable class per scheme.

`get_scheme(name, bits=..., granularity=...)` builds one; `list_schemes()`
names them all.
"""

from autoqnn.schemes.base import (
    GRANULARITIES,
    Scheme,
    deserialize_scheme,
    get_scheme,
    list_schemes,
    register_scheme,
    serialize_scheme,
)
from autoqnn.schemes.uniform import UniformScheme

__all__ = [
    "GRANULARITIES",
    "Scheme",
    "UniformScheme",
    "deserialize_scheme",
    "get_scheme",
    "list_schemes",
    "register_scheme",
    "serialize_scheme",
]
