"""Metaplasticity in binarized Vision Transformers for continual learning."""

__version__ = "0.1.0"
