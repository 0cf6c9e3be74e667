"""Tailguard: a resilience gateway for model backends."""

__version__ = "0.1.0"
