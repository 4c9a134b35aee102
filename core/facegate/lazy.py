"""Modules imported when first used, not when the module that names them is imported.

The API function imports every router's services, and most of those read or write Parquet;
a ``/compare`` or ``/verify`` request never does, yet ``import pyarrow`` (with its compute
and parquet modules) alone was ~30 MiB of that function's peak memory, which is what a
Lambda user pays for. Modules that use pyarrow name it through :func:`lazy_module`, and the
first attribute read (``pa.table``) imports it. Type checkers see the real module::

    if TYPE_CHECKING:
        import pyarrow as pa
    else:
        pa = lazy_module("pyarrow")

Unlike :class:`importlib.util.LazyLoader`, nothing is put in ``sys.modules`` early, so a
submodule (``pyarrow.parquet``) can be named before its package is imported, and a process
that imports pyarrow itself sees the ordinary module. Torch-free and I/O-free.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Any


class _LazyModule(ModuleType):
    """Stands for a module until one of its attributes is read; then imports it and takes
    on its namespace, so later reads are plain attribute reads."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._lock = threading.Lock()

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") and attribute.endswith("__"):
            raise AttributeError(attribute)  # copy, pickle and inspection probe these
        with self._lock:
            module = importlib.import_module(self.__name__)
            self.__dict__.update(module.__dict__)
        return getattr(module, attribute)


def lazy_module(name: str) -> ModuleType:
    """``name``, imported at the first attribute read (the module itself when it is
    imported already)."""
    return sys.modules.get(name) or _LazyModule(name)


__all__ = ["lazy_module"]
