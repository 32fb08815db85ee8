"""Package data (the demo subset)."""
