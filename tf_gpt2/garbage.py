"""Garbage collection deferred while Keras drops many variables: `Layer.__delattr__` runs `gc.collect()` after
each one (a quantized layer drops its float kernel), 0.2 s or more a time in a process holding TensorFlow."""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_deferred = threading.local()  # how deep this thread is in `collected_once`
_collecting = {"lock": threading.Lock(), "within": 0, "collect": gc.collect}  # (the gc.collect it stands in for)


def _collect(generation: int = 2) -> int:
    return 0 if getattr(_deferred, "depth", 0) else _collecting["collect"](generation)


@contextlib.contextmanager
def collected_once() -> Iterator[None]:
    """Garbage collected once in this thread, at the block's end (other threads collect as they would): GPT-2
    124M's int8 quantization took 11.8-12.3 s collecting after each kernel, 1.8-2.2 s so, at the same peak RSS.

    >>> with collected_once():
    ...     gc.collect()  # nothing collected here: once, as the block ends
    0
    """
    with _collecting["lock"]:
        if not _collecting["within"]:
            _collecting["collect"], gc.collect = gc.collect, _collect
        _collecting["within"] += 1
    _deferred.depth = getattr(_deferred, "depth", 0) + 1
    try:
        yield
    finally:
        _deferred.depth -= 1
        with _collecting["lock"]:
            _collecting["within"] -= 1
            if not _collecting["within"] and gc.collect is _collect:
                gc.collect = _collecting["collect"]
        if not _deferred.depth:
            gc.collect()
