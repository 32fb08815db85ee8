"""Post-training quantization: observers, weight clipping, AdaRound, bias correction, PTQConfig."""

from autoqnn.ptq.adaround import adaround
from autoqnn.ptq.apply import apply_ptq, quantization_config, select_layers
from autoqnn.ptq.calibrate import (
    MinMaxObserver,
    Observer,
    activation_quantizers,
    calibrate,
    list_calibration_methods,
    register_observer,
)
from autoqnn.ptq.config import PTQConfig
from autoqnn.ptq.observers import (
    HistogramObserver,
    KLObserver,
    MSEObserver,
    PercentileObserver,
)
from autoqnn.ptq.weights import correct_biases, search_weight_clips

__all__ = [
    "HistogramObserver",
    "KLObserver",
    "MSEObserver",
    "MinMaxObserver",
    "Observer",
    "PTQConfig",
    "PercentileObserver",
    "activation_quantizers",
    "adaround",
    "apply_ptq",
    "calibrate",
    "correct_biases",
    "list_calibration_methods",
    "quantization_config",
    "register_observer",
    "search_weight_clips",
    "select_layers",
]
