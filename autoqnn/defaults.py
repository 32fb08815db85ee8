"""The one table of defaults. `LayerConfig`, `QuantizationConfig`, `quantize`, `search`,
the strategies' configs, `tune_ptq`, `finetune` and the command line read their defaults
here and nowhere else, so a default changes in one place.

Example:
    >>> from autoqnn import defaults
    >>> defaults.ACTIVATION_BITS, defaults.GRANULARITY
    (8, 'per_channel')
"""

SCHEME = "uniform"
"""Weight scheme (`autoqnn.list_schemes("weight")`)."""
ACTIVATION_SCHEME = "uniform"
"""Activation scheme. A weight `scheme` never changes it: `scheme="lsq"` quantizes the
weights with LSQ and the activations with this, as the report's `activation_scheme` says."""
ACTIVATION_BITS = 8
GRANULARITY = "per_channel"
FOLD_BATCHNORM = True
CALIBRATION_METHOD = "max"
CALIBRATION_SAMPLES = None
"""`quantize` calibrates on every sample it is given."""
PTQ_CALIBRATION_SAMPLES = 1000
"""A `PTQConfig` recipe calibrates on at most this many samples."""
SEARCH_SAMPLES = 512
"""Calibration images the searches measure sensitivities on (and calibrate with when the
data comes from `train_data`)."""
CANDIDATE_BITS = (2, 3, 4, 8)
CANDIDATE_ACTIVATION_BITS = (8, 6, 4, 2)
SEARCH_EPOCHS = 3
FINETUNE_EPOCHS = 3
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
EPISODES = 30
TUNER_TRIALS = 20
VERBOSE = 1
"""The user-facing calls (`quantize`, `search`, `tune_ptq`, `finetune`, the command line)
show progress unless given `verbose=0`; the building blocks they call are silent."""
AUTOPILOT_SECONDS = 60.0
"""Time the autopilot of `quantize(..., weight_bits_budget=...)` spends choosing the recipe
(the first recipe and the uniform baseline are always tried)."""
