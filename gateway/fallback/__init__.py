"""Fallbacks served when the primary path cannot answer."""
