"""The data path: the HTTP edge, the pipeline stages, attempt orchestration, upstream transports."""
