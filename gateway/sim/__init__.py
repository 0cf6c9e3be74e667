"""Simulated model servers with a fault-injection control API."""
