"""Background loops: active health checks and other periodic control work."""
