"""Post-training quantization: calibration (pluggable observers)."""

from autoqnn.ptq.calibrate import (
    MinMaxObserver,
    Observer,
    activation_quantizers,
    calibrate,
    list_calibration_methods,
    register_observer,
)

__all__ = [
    "MinMaxObserver",
    "Observer",
    "activation_quantizers",
    "calibrate",
    "list_calibration_methods",
    "register_observer",
]
