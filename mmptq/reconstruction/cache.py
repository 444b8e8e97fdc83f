"""Cached unit inputs / outputs under a memory budget."""
import os
import os.path as osp
import shutil
from typing import Any, Dict, Hashable, Union

import torch
from torch.utils._pytree import tree_flatten


def nbytes(obj: Any) -> int:
    """Bytes held by the tensors of a nested structure."""
    leaves, _ = tree_flatten(obj)
    return sum(t.numel() * t.element_size() for t in leaves
               if isinstance(t, torch.Tensor))


class RecordCache:
    """Key → nested structure of CPU tensors. Records are kept in memory
    while the total stays within ``budget_mb``; past it, new records are
    written to ``spill_dir`` and read back on ``get`` (so a detector at
    full resolution with many calibration images stays within RAM).
    """

    def __init__(self, budget_mb: float, spill_dir: str) -> None:
        if budget_mb < 0:
            raise ValueError(f'cache_budget_mb={budget_mb} must be >= 0')
        self.budget = int(budget_mb * 2**20)
        self.spill_dir = spill_dir
        self.used = 0
        self.spilled = 0
        self._store: Dict[Hashable, Union[Any, str]] = {}
        self._sizes: Dict[Hashable, int] = {}
        self._count = 0

    def put(self, key: Hashable, record: Any) -> None:
        self.pop(key)
        size = nbytes(record)
        if self.used + size <= self.budget:
            self._store[key] = record
            self._sizes[key] = size
            self.used += size
            return
        os.makedirs(self.spill_dir, exist_ok=True)
        path = osp.join(self.spill_dir, f'{self._count}.pt')
        self._count += 1
        torch.save(record, path)
        self._store[key] = path
        self._sizes[key] = 0
        self.spilled += 1

    def is_spilled(self, key: Hashable) -> bool:
        return isinstance(self._store[key], str)

    def get(self, key: Hashable) -> Any:
        value = self._store[key]
        if isinstance(value, str):
            return torch.load(value, weights_only=True)
        return value

    def pop(self, key: Hashable) -> None:
        value = self._store.pop(key, None)
        self.used -= self._sizes.pop(key, 0)
        if isinstance(value, str):
            os.remove(value)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._store

    def clear(self) -> None:
        self._store.clear()
        self._sizes.clear()
        self.used = 0
        self.spilled = 0
        if osp.isdir(self.spill_dir):
            shutil.rmtree(self.spill_dir)
