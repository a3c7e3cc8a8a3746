"""Datasets: sources (real and synthetic), the split-aware datamodule, and tensor views of splits."""

from classwise.data.datamodule import ClasswiseDataModule
from classwise.data.sources import SOURCES, ImageSource, load_source

__all__ = ["ClasswiseDataModule", "ImageSource", "SOURCES", "load_source"]
