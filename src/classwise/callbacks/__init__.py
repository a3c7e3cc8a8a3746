"""Lightning callbacks: the pattern search after training."""

from classwise.callbacks.pattern_search import PatternSearch

__all__ = ["PatternSearch"]
