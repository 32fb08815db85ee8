"""Tests of autoqnn.schemes (a package so the shared helpers import in any import mode)."""
