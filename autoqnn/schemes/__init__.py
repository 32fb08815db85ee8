"""Quantization schemes: one small serialisable class per scheme.

`get_scheme(name, bits=..., granularity=...)` builds one; `list_schemes()`
names them all.

Example:
    >>> from autoqnn.schemes import list_schemes
    >>> list_schemes("activation")
    ['acd', 'lsq', 'minifloat', 'pact', 'uniform']
"""

from autoqnn.schemes.acd import ACDScheme
from autoqnn.schemes.apot import APoTScheme
from autoqnn.schemes.asd import ASDScheme
from autoqnn.schemes.base import (
    GRANULARITIES,
    Scheme,
    deserialize_scheme,
    get_scheme,
    list_schemes,
    register_scheme,
    serialize_scheme,
)
from autoqnn.schemes.binary import BinaryScheme
from autoqnn.schemes.clipq import ClipQScheme
from autoqnn.schemes.esb import ESBScheme
from autoqnn.schemes.lsq import LSQScheme
from autoqnn.schemes.minifloat import MiniFloatScheme
from autoqnn.schemes.ml2q import ML2QScheme
from autoqnn.schemes.pact import PACTScheme
from autoqnn.schemes.pot import PowerOfTwoScheme
from autoqnn.schemes.resq import ResQScheme
from autoqnn.schemes.ternary import TernaryScheme
from autoqnn.schemes.uniform import UniformScheme
from autoqnn.schemes.vecq import VecQScheme
from autoqnn.schemes.zoomq import ZoomQScheme

__all__ = [
    "GRANULARITIES",
    "ACDScheme",
    "APoTScheme",
    "ASDScheme",
    "BinaryScheme",
    "ClipQScheme",
    "ESBScheme",
    "LSQScheme",
    "ML2QScheme",
    "MiniFloatScheme",
    "PACTScheme",
    "PowerOfTwoScheme",
    "ResQScheme",
    "Scheme",
    "TernaryScheme",
    "UniformScheme",
    "VecQScheme",
    "ZoomQScheme",
    "deserialize_scheme",
    "get_scheme",
    "list_schemes",
    "register_scheme",
    "serialize_scheme",
]
