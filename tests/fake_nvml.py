"""A fake of pynvml's module interface, for the GPU paths (no GPU on these machines)."""

from __future__ import annotations

from types import SimpleNamespace


class FakeNVML:
    """Devices described by dicts; ``processes`` maps a device index to ``[(pid, bytes)]``
    (compute contexts), ``graphics`` the same for graphics contexts. ``fail_init`` makes
    ``nvmlInit`` raise like a machine without the NVML library; ``unsupported`` names
    queries that raise ``NVMLError_NotSupported``."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's own spelling
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801
        pass

    def __init__(self, devices: list[dict] | None = None, *, processes=None, graphics=None,
                 fail_init: bool = False, unsupported: tuple[str, ...] = ()) -> None:
        self.devices = devices or []
        self.processes = processes or {}
        self.graphics = graphics or {}
        self.fail_init = fail_init
        self.unsupported = unsupported
        self.inits = 0
        self.shutdowns = 0

    def _check(self, name: str) -> None:
        if name in self.unsupported:
            raise self.NVMLError_NotSupported("Not Supported")

    def nvmlInit(self) -> None:  # noqa: N802
        if self.fail_init:
            raise self.NVMLError_LibraryNotFound("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:  # noqa: N802 - old pynvml returns bytes
        self._check("name")
        return self.devices[h]["name"].encode()

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return f"GPU-fake-{h}"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:  # noqa: N802
        d = self.devices[h]
        return SimpleNamespace(total=d["total"], used=d["used"], free=d["total"] - d["used"])

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:  # noqa: N802
        self._check("utilization")
        return SimpleNamespace(gpu=self.devices[h]["util"], memory=0)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:  # noqa: N802
        self._check("temperature")
        return self.devices[h]["temp"]

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list:  # noqa: N802
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self.processes.get(h, [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int) -> list:  # noqa: N802
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self.graphics.get(h, [])]


def two_gpus(**kwargs) -> FakeNVML:
    """Two fake 80 GiB devices."""
    gib = 1024**3
    return FakeNVML([
        {"name": "NVIDIA H100 80GB HBM3", "total": 80 * gib, "used": 10 * gib, "util": 40,
         "temp": 55},
        {"name": "NVIDIA H100 80GB HBM3", "total": 80 * gib, "used": 30 * gib, "util": 90,
         "temp": 71},
    ], **kwargs)
