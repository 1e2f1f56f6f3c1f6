"""What each executor has and what the engine's running attempts hold of it.

One :class:`CapacityLedger` per executor keeps the CPUs, memory and GPU indices that
admitted attempts reserved, so that the requests of running attempts never exceed the
executor's :class:`~steadyrun.executors.base.Capacity`. It also holds the number of
attempts the executor said it would start right now (``free_slots()``): the engine
opens each pass with :meth:`CapacityLedger.open_pass` and never admits more than that,
so every admitted attempt really starts when it is launched (its time limit and pid
are then true from the launch on).
"""

from __future__ import annotations

from dataclasses import dataclass

from steadyrun.executors.base import Capacity
from steadyrun.task import Resources

_EPS = 1e-9  # float CPU requests that add up to the capacity still fit


@dataclass(frozen=True)
class CapacityUse:
    """What an executor has (``cpus``, ``memory`` bytes, ``gpus`` count) and how much of
    it running attempts requested."""

    executor: str
    cpus_used: float
    cpus: float
    memory_used: int
    memory: int
    gpus_used: int
    gpus: int


class CapacityLedger:
    """The reservations of one executor's running attempts (see the module docs).

    Not thread-safe for writers: only the engine's loop admits and releases. Readers
    (:meth:`use`) from another thread may see a pass half-done, never an error.
    """

    def __init__(self, capacity: Capacity, name: str = "executor") -> None:
        self.capacity = capacity
        self.name = name
        self.cpus_used = 0.0
        self.memory_used = 0
        self.free_gpus: list[int] = sorted(capacity.gpus)
        self._slots: int | None = None  # attempts still startable in this pass

    def open_pass(self, free_slots: int | None) -> None:
        """Start a pass of admissions: at most ``free_slots`` more (None: no limit but
        capacity), as the executor's ``free_slots()`` said just now."""
        self._slots = None if free_slots is None else max(0, int(free_slots))

    def fits(self, request: Resources) -> bool:
        """True when ``request`` fits what is free now and this pass has a slot left."""
        if self._slots is not None and self._slots <= 0:
            return False
        return (self.cpus_used + request.cpus <= self.capacity.cpus + _EPS
                and self.memory_used + request.memory_bytes <= self.capacity.memory
                and request.gpus <= len(self.free_gpus))

    def admit(self, request: Resources) -> list[int] | None:
        """Reserve ``request`` and one slot of this pass; return the GPU indices handed
        out (lowest first), or None (nothing reserved) when it does not fit."""
        return self.take(request) if self.fits(request) else None

    def take(self, request: Resources) -> list[int]:
        """Reserve ``request`` that :meth:`fits` just accepted (no second check); return
        the GPU indices handed out, lowest first."""
        self.cpus_used += request.cpus
        self.memory_used += request.memory_bytes
        gpus = self.free_gpus[:request.gpus]
        del self.free_gpus[:request.gpus]
        if self._slots is not None:
            self._slots -= 1
        return gpus

    def release(self, request: Resources, gpus: list[int]) -> None:
        """Give back what an ended attempt reserved with :meth:`admit`."""
        self.cpus_used -= request.cpus  # float drift is absorbed by the check's tolerance
        self.memory_used -= request.memory_bytes
        if gpus:
            self.free_gpus = sorted(self.free_gpus + gpus)

    def use(self) -> CapacityUse:
        """A plain copy of what is requested against what there is."""
        cap = self.capacity
        return CapacityUse(executor=self.name, cpus_used=self.cpus_used, cpus=cap.cpus,
                           memory_used=self.memory_used, memory=cap.memory,
                           gpus_used=len(cap.gpus) - len(self.free_gpus),
                           gpus=len(cap.gpus))


__all__ = ["CapacityLedger", "CapacityUse"]
