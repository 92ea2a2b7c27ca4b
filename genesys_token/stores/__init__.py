"""Token stores: where one token is shared by threads, processes or machines.

``MemoryStore`` (the default) shares within a process, ``FileStore`` between the processes
of a host, ``RedisStore`` across a fleet. This package imports without the ``redis``
package installed; only building a ``RedisStore`` needs the ``[redis]`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import MemoryStore, TokenStore, store_key

if TYPE_CHECKING:
    from .file import FileStore
    from .redis import RedisStore

__all__ = ["FileStore", "MemoryStore", "RedisStore", "TokenStore", "store_key"]


def __getattr__(name: str) -> Any:
    # Lazy: FileStore needs fcntl (POSIX only) and RedisStore's module is only useful with
    # redis installed; neither should be a cost of importing the package.
    if name == "FileStore":
        from .file import FileStore

        return FileStore
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
