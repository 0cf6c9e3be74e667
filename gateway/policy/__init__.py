"""The declarative policy language: YAML with line numbers → validated model → runtime snapshot."""
