"""autoqnn: automatic neural-network quantization for Keras 3.

Example:
    >>> import keras, autoqnn
    >>> inputs = keras.Input((8,))
    >>> model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    >>> qmodel = autoqnn.quantize(model, weight_bits=4, activation_bits=None)
    >>> autoqnn.quantization_report(qmodel)[1].weight_bits
    4
"""

# First: quiets TensorFlow's start-up log when this process is the command line.
from autoqnn import _startup  # noqa: F401
from autoqnn.api import quantize
from autoqnn.config import LayerConfig, QuantizationConfig
from autoqnn.export import (
    export_packed,
    export_report,
    export_tflite,
    load_packed,
    per_tensor_activations,
)
from autoqnn.export.shift_add import adder_report, shift_add_forward
from autoqnn.finalize import finalize, set_bits
from autoqnn.finetune import finetune
from autoqnn.layers import ActivationQuantizer, Quantizer
from autoqnn.mixed import (
    AgentConfig,
    DifferentiableConfig,
    RLConfig,
    SearchResult,
    SensitivityConfig,
    search,
)
from autoqnn.ptq import (
    Observer,
    PTQConfig,
    activation_quantizers,
    calibrate,
    list_calibration_methods,
    register_observer,
)
from autoqnn.report import LayerReport, QuantizationReport, quantization_report
from autoqnn.rewrite.registry import Unsupported, register_handler
from autoqnn.schemes import Scheme, get_scheme, list_schemes, register_scheme
from autoqnn.tune import SearchSpace, TuneResult, tune_ptq

__version__ = "0.1.0"

__all__ = [
    "ActivationQuantizer",
    "AgentConfig",
    "DifferentiableConfig",
    "LayerConfig",
    "LayerReport",
    "Observer",
    "PTQConfig",
    "Quantizer",
    "QuantizationConfig",
    "QuantizationReport",
    "RLConfig",
    "Scheme",
    "SearchResult",
    "SearchSpace",
    "SensitivityConfig",
    "TuneResult",
    "Unsupported",
    "__version__",
    "activation_quantizers",
    "adder_report",
    "calibrate",
    "export_packed",
    "export_report",
    "export_tflite",
    "finalize",
    "finetune",
    "get_scheme",
    "list_calibration_methods",
    "list_schemes",
    "load_packed",
    "per_tensor_activations",
    "quantization_report",
    "quantize",
    "register_handler",
    "register_observer",
    "register_scheme",
    "search",
    "set_bits",
    "shift_add_forward",
    "tune_ptq",
]
