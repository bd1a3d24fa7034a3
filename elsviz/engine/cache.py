"""A byte-bounded LRU cache whose budget several caches share (key tables, KeySets, hashes)."""
from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from collections import OrderedDict

import torch


class Budget:
    """Bytes that several caches share: when they hold more, the least recently used entry of any
    of them goes. CPU engines made with the default cache_bytes share one (cpu_budget), so that an
    app holding an engine per set and machine keeps one cache's worth of tables, not one per engine."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.caches: weakref.WeakSet = weakref.WeakSet()
        self.tick = 0  # ticks of use: the smallest is the least recently used entry
        self.lock = threading.RLock()  # the app's engines run in several threads

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in list(self.caches))

    def evict(self, limit: int) -> None:
        """Drop least recently used entries of any cache until the caches hold at most limit bytes."""
        with self.lock:
            held = self.bytes
            while held > limit:
                full = [c for c in list(self.caches) if c._items]
                if not full:
                    return
                oldest = min(full, key=lambda c: next(iter(c._items.values()))[2])
                held -= oldest._pop_oldest()


class Cache:
    """A byte-bounded LRU cache (key tables, KeySets, hashes, ...); budget: shared with other
    caches (Budget), or None for a budget of its own of max_bytes."""

    def __init__(self, max_bytes: int, budget: Budget | None = None):
        self.budget = budget if budget is not None else Budget(max_bytes)
        self.budget.caches.add(self)
        self._items: OrderedDict = OrderedDict()  # key -> (value, size, tick)
        self.bytes = 0

    @property
    def max_bytes(self) -> int:
        return self.budget.max_bytes

    @staticmethod
    def _size(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(Cache._size(v) for v in value)
        if isinstance(value, dict):
            return sum(Cache._size(v) for v in value.values())
        if dataclasses.is_dataclass(value):  # a KeySet, a Plan: what their fields hold
            return sum(Cache._size(getattr(value, f.name)) for f in dataclasses.fields(value))
        return 64

    def _next_tick(self) -> int:
        self.budget.tick += 1
        return self.budget.tick

    def get(self, key, make, size_hint: int = 0):
        """The cached value, or make() (kept if it fits). size_hint: bytes make() will need;
        room is made for it first, so the caches and the new value never both hold the peak."""
        lock = self.budget.lock
        with lock:
            if key in self._items:
                value, size, _ = self._items.pop(key)
                self._items[key] = (value, size, self._next_tick())  # now the most recent
                return value
        self.budget.evict(self.max_bytes - min(size_hint, self.max_bytes))
        value = make()  # outside the lock: other engines go on meanwhile
        size = self._size(value)
        if size <= self.max_bytes:
            with lock:
                old = self._items.pop(key, None)
                self.bytes += size - (old[1] if old else 0)
                self._items[key] = (value, size, self._next_tick())
            self.budget.evict(self.max_bytes)
        return value

    def _pop_oldest(self) -> int:
        _, (_, size, _) = self._items.popitem(last=False)
        self.bytes -= size
        return size

    def peek(self, key):
        """(True, the cached value) without making it, or (False, None)."""
        with self.budget.lock:  # (re-entrant: get takes it again)
            if key not in self._items:
                return False, None
            return True, self.get(key, None)

    def clear(self):
        with self.budget.lock:
            self._items.clear()
            self.bytes = 0


_budgets: dict = {}


def cpu_budget() -> Budget:
    """The budget that CPU engines with the default cache_bytes share (cpu_cache_bytes)."""
    return _budgets.get("cpu") or _budgets.setdefault("cpu", Budget(cpu_cache_bytes()))  # (setdefault: one, whatever the threads)



def cpu_cache_bytes() -> int:
    """The CPU engine's cache: a sixteenth of the machine's memory, between 384 MB and 2 GB. The
    2,000 colour photos need about 0.6 GB of key tables at k = 5: with 384 MB they were rebuilt
    chunk by chunk at every step (348 s per trajectory on one core of the 2-core Xeon), with 1.5 GB
    a trajectory took 12.6 s on two."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = 0
    return int(min(max(ram // 16, 384 * 2**20), 2 * 2**30))


def gpu_cache_bytes(device) -> int:
    free, total = torch.cuda.mem_get_info(device)
    return int(min(free, total) * 0.4)
