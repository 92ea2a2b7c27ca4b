"""Token stores: where one token is shared by threads, processes or machines.

``MemoryStore`` (the default) shares within a process. This package imports without the
``redis`` package installed; only building a ``RedisStore`` needs the ``[redis]`` extra.
"""

from .base import MemoryStore, TokenStore, store_key

__all__ = ["MemoryStore", "TokenStore", "store_key"]
