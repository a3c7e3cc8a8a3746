"""The steps around the core algorithm: settings, search-and-evaluate, outputs, detection, transfer."""

from classwise.pipeline.search_step import run_pattern_search
from classwise.pipeline.settings import parse_settings
from classwise.pipeline.transfer import run_transfer

__all__ = ["parse_settings", "run_pattern_search", "run_transfer"]
