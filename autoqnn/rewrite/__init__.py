"""QAG: the architecture rewriter."""
