"""A least-recently-used memo of tensors (or tuples of tensors) bounded by their total size in bytes."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch


def nbytes(value: Any) -> int:
    """Bytes held by a tensor, or by the tensors among an object's attributes / a tuple's items."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(item) for item in value)
    if hasattr(value, "__dict__"):
        return sum(nbytes(item) for item in vars(value).values())
    return 0


class TensorMemo:
    """Keeps recently used values while their total size stays within max_bytes (0 keeps nothing)."""

    def __init__(self, max_bytes: int = 0):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The memoised value of key, made (and kept if it fits) when absent."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = make()
        size = nbytes(value)
        if size <= self.max_bytes:
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
        return value

    def peek(self, key: Hashable) -> Any:
        """The memoised value of key, or None (nothing is made or reordered)."""
        item = self._items.get(key)
        return None if item is None else item[0]

    def clear(self) -> None:
        """Forget everything."""
        self._items.clear()
        self._bytes = 0
