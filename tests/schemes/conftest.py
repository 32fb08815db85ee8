"""Hypothesis settings for the scheme tests (helpers live in scheme_strategies.py)."""

from hypothesis import HealthCheck, settings

# Deterministic, small: the whole directory must stay well under a minute on 2 cores.
settings.register_profile(
    "schemes",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("schemes")
