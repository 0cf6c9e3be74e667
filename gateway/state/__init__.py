"""State that replicas may share: the `StateStore` protocol, in memory or on Redis."""

from gateway.state.memory import MemoryStore
from gateway.state.store import StateStore, TakeResult

__all__ = ["MemoryStore", "StateStore", "TakeResult"]
