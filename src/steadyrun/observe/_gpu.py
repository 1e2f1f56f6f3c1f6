"""NVML helpers shared by :mod:`steadyrun.observe.resources` and :mod:`steadyrun.observe.monitor`.

Every call to NVML goes through here, so "no GPU" has one meaning everywhere: pynvml not
installed, no NVML library, no driver, or a device that does not support a query all give
empty lists and ``None`` fields, never an exception. Tests pass a fake module with
pynvml's interface instead of ``pynvml``.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as NVML reports it now.

    ``index`` is NVML's device index; memory figures are bytes, ``utilization`` the
    percent of time a kernel ran over NVML's last sample period, ``temperature`` degrees
    Celsius. A field is ``None`` when the device or driver does not support that query.
    """

    index: int
    name: str | None = None
    uuid: str | None = None
    memory_total: int | None = None
    memory_used: int | None = None
    utilization: float | None = None
    temperature: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NVMLSession:
    """An initialised NVML, or an unavailable one (``ok`` is False, ``error`` says why).

    ``nvml`` is a module with pynvml's interface; by default ``pynvml`` (package
    ``nvidia-ml-py``) is imported. Creating a session never raises for a missing library,
    driver or device; :meth:`close` (or leaving a ``with`` block) shuts NVML down again.
    """

    def __init__(self, nvml: Any = None) -> None:
        self.error: str | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._nvml: Any = None
        self._handles: list[tuple[int, Any]] = []
        if nvml is None:
            try:
                import pynvml as nvml  # type: ignore[no-redef]
            except ImportError:
                self.error = "pynvml is not installed (pip install nvidia-ml-py)"
                return
        self._errors = _error_types(nvml)
        try:
            nvml.nvmlInit()
        except self._errors as e:
            self.error = f"NVML is not available: {_text(e) or type(e).__name__}"
            return
        self._nvml = nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
            self._handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        except self._errors as e:
            self.error = f"NVML could not list devices: {_text(e) or type(e).__name__}"
            self._handles = []

    @property
    def ok(self) -> bool:
        """True when NVML was initialised (there may still be no device)."""
        return self._nvml is not None

    @property
    def indices(self) -> list[int]:
        return [i for i, _ in self._handles]

    def devices(self) -> list[GpuInfo]:
        """Every device's name, memory, utilisation and temperature; ``[]`` without NVML."""
        out = []
        for index, handle in self._handles:
            mem = self._call("nvmlDeviceGetMemoryInfo", handle)
            util = self._call("nvmlDeviceGetUtilizationRates", handle)
            sensor = getattr(self._nvml, "NVML_TEMPERATURE_GPU", 0)
            temp = self._call("nvmlDeviceGetTemperature", handle, sensor)
            out.append(GpuInfo(
                index=index,
                name=_text(self._call("nvmlDeviceGetName", handle)),
                uuid=_text(self._call("nvmlDeviceGetUUID", handle)),
                memory_total=_int(getattr(mem, "total", None)),
                memory_used=_int(getattr(mem, "used", None)),
                utilization=_float(getattr(util, "gpu", None)),
                temperature=_float(temp),
            ))
        return out

    def utilization(self) -> dict[int, float]:
        """Device index -> percent of time busy, for the devices that report it."""
        out = {}
        for index, handle in self._handles:
            value = _float(getattr(self._call("nvmlDeviceGetUtilizationRates", handle),
                                   "gpu", None))
            if value is not None:
                out[index] = value
        return out

    def process_memory(self) -> dict[int, dict[int, int]]:
        """pid -> {device index: bytes} for every process with a CUDA or graphics context.

        A process listed both as compute and graphics on one device is counted once (the
        larger figure). Pids are those of NVML's PID namespace: inside a container that
        does not share the host's, they do not match the container's own pids.
        """
        out: dict[int, dict[int, int]] = {}
        for index, handle in self._handles:
            for name in ("nvmlDeviceGetComputeRunningProcesses",
                         "nvmlDeviceGetGraphicsRunningProcesses"):
                for proc in self._call(name, handle) or ():
                    pid = _int(getattr(proc, "pid", None))
                    used = _int(getattr(proc, "usedGpuMemory", None)) or 0
                    if pid is None:
                        continue
                    per_device = out.setdefault(pid, {})
                    per_device[index] = max(per_device.get(index, 0), used)
        return out

    def close(self) -> None:
        """Shut NVML down (idempotent)."""
        if self._nvml is not None:
            with contextlib.suppress(*self._errors):
                self._nvml.nvmlShutdown()
            self._nvml = None
            self._handles = []

    def __enter__(self) -> NVMLSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str, *args: Any) -> Any:
        fn = getattr(self._nvml, name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except self._errors:
            return None


def _error_types(nvml: Any) -> tuple[type[BaseException], ...]:
    err = getattr(nvml, "NVMLError", None)
    return (err, OSError) if isinstance(err, type) else (OSError,)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
