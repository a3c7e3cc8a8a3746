"""The one classifier LightningModule used by every setting."""

from classwise.lit.classifier import ClassifierModule

__all__ = ["ClassifierModule"]
