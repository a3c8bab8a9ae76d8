"""What the machine has: cores, RAM, NVIDIA GPUs, and what a process tree uses.

Probing is split from parsing: ``parse_nvml_*`` take plain values so they are tested with
recorded NVML answers. Anything unknown stays ``None`` — nothing is invented.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "GpuInfo",
    "MachineInfo",
    "physical_cores",
    "probe_gpus",
    "probe_machine",
    "process_tree_vram",
    "parse_vm_hwm",
    "tree_peak_rss",
    "tree_rss",
]


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class MachineInfo:
    cores_physical: int
    cores_logical: int
    ram_total: int
    ram_available: int
    gpus: list[GpuInfo] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def physical_cores() -> int:
    """Read once: psutil parses sysfs for it (~170 µs), and the scheduler asks per request."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _nvml() -> Any | None:
    """pynvml, initialised, or None when there is no NVIDIA driver (the normal case here)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, …: no GPU is normal
        return None
    return pynvml


def parse_nvml_device(index: int, name: bytes | str, mem: Any) -> GpuInfo:
    """One device from ``nvmlDeviceGetName`` and ``nvmlDeviceGetMemoryInfo`` answers."""
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return GpuInfo(
        index=index, name=name, total=int(mem.total), free=int(mem.free), used=int(mem.used)
    )


def parse_nvml_processes(procs: list[Any], pids: set[int]) -> int | None:
    """VRAM used by ``pids`` from ``nvmlDeviceGetComputeRunningProcesses`` answers.

    ``usedGpuMemory`` is None when the driver withholds it (e.g. in some containers):
    then the figure is unknown, not zero.
    """
    total = 0
    seen = False
    for p in procs:
        if p.pid in pids:
            if p.usedGpuMemory is None:
                return None
            total += int(p.usedGpuMemory)
            seen = True
    return total if seen else 0


def probe_gpus() -> list[GpuInfo]:
    nv = _nvml()
    if nv is None:
        return []
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        out.append(parse_nvml_device(i, nv.nvmlDeviceGetName(h), nv.nvmlDeviceGetMemoryInfo(h)))
    return out


def process_tree_vram(pid: int) -> int | None:
    """VRAM used by a process and its children across all GPUs; None without NVML."""
    nv = _nvml()
    if nv is None:
        return None
    pids = _tree_pids(pid)
    total = 0
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        used = parse_nvml_processes(list(nv.nvmlDeviceGetComputeRunningProcesses(h)), pids)
        if used is None:
            return None
        total += used
    return total


def _tree_pids(pid: int) -> set[int]:
    try:
        p = psutil.Process(pid)
        return {pid, *(c.pid for c in p.children(recursive=True))}
    except psutil.Error:
        return set()


def tree_rss(pid: int) -> int | None:
    """Resident memory of a process and all its children, or None if it is gone."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def parse_vm_hwm(status: str) -> int | None:
    """Peak resident memory ("VmHWM") from the text of /proc/PID/status, in bytes."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            value, unit = line.split()[1:3]
            return int(value) * {"kB": 1024, "mB": 1024**2}.get(unit, 1)
    return None


def tree_peak_rss(pid: int) -> int | None:
    """Peak resident memory of a process and its children over their lives (the kernel's
    high-water mark on Linux; the current RSS elsewhere), or None if it is gone."""
    pids = _tree_pids(pid)
    total = 0
    for p in pids:
        try:
            peak = parse_vm_hwm(Path(f"/proc/{p}/status").read_text())
        except OSError:
            peak = None
        if peak is None:
            return tree_rss(pid) if pids else None
        total += peak
    return total or None


def probe_machine() -> MachineInfo:
    vm = psutil.virtual_memory()
    return MachineInfo(
        cores_physical=physical_cores(),
        cores_logical=psutil.cpu_count() or 1,
        ram_total=vm.total,
        ram_available=vm.available,
        gpus=probe_gpus(),
    )
