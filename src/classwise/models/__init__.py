"""Classifiers that take [0, 1] images: normalisation is their first layer."""

from classwise.models.factory import MODELS, build_model, min_image_size

__all__ = ["MODELS", "build_model", "min_image_size"]
