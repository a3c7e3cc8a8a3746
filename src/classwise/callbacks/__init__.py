"""Lightning callbacks: the pattern search after training."""

from classwise.callbacks.pattern_search import PatternSearch, run_pattern_search

__all__ = ["PatternSearch", "run_pattern_search"]
