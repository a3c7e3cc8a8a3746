"""Classifiers that take [0, 1] images: normalisation is their first layer."""

__all__ = ["MODELS", "build_model", "min_image_size"]


def __getattr__(name: str):
    # Lazy, so that `classwise.models.shipped` (what the torch-free report reads) does not import torch.
    if name in __all__:
        from classwise.models import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'classwise.models' has no attribute {name!r}")
