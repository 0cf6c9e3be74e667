"""Fallbacks: stale-if-error cache, rules engine, backup route."""
