"""Hardware probes. No GPU here: NVML parsing is tested with recorded NVML answers (a fake,
named as such: the shapes below are what pynvml returns on an NVIDIA machine)."""

from __future__ import annotations

import os
from types import SimpleNamespace

from smackctl.hardware import (
    parse_nvml_device,
    parse_nvml_processes,
    probe_gpus,
    probe_machine,
    tree_rss,  # fmt: skip
)

# Recorded shapes of pynvml answers (nvmlDeviceGetMemoryInfo, ...GetComputeRunningProcesses)
H100_MEMORY = SimpleNamespace(total=85_520_809_984, free=84_936_949_760, used=583_860_224)
PROCS = [SimpleNamespace(pid=4242, usedGpuMemory=1_234_567_168),
         SimpleNamespace(pid=4243, usedGpuMemory=10_485_760),
         SimpleNamespace(pid=99, usedGpuMemory=5_000_000_000)]  # fmt: skip


def test_parse_device_recorded() -> None:
    gpu = parse_nvml_device(0, b"NVIDIA H100 80GB HBM3", H100_MEMORY)
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert (gpu.total, gpu.free, gpu.used) == (85_520_809_984, 84_936_949_760, 583_860_224)
    assert parse_nvml_device(1, "str name", H100_MEMORY).name == "str name"


def test_parse_processes_sums_only_our_tree() -> None:
    assert parse_nvml_processes(PROCS, {4242, 4243}) == 1_234_567_168 + 10_485_760
    assert parse_nvml_processes(PROCS, {1}) == 0


def test_withheld_usage_is_unknown_not_zero() -> None:
    withheld = [SimpleNamespace(pid=4242, usedGpuMemory=None)]
    assert parse_nvml_processes(withheld, {4242}) is None


def _gpus_the_driver_lists() -> list[str]:
    """What nvidia-smi lists (the driver's own tool), none where there is no driver."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return [ln for ln in out.stdout.splitlines() if ln.startswith("GPU ")]


def test_the_gpus_probed_are_the_drivers() -> None:
    """No GPU without a driver: no error and no invented one; with one, the same count."""
    listed = _gpus_the_driver_lists()
    assert len(probe_gpus()) == len(listed)
    m = probe_machine()
    assert m.cores_logical >= 1 and m.ram_total > m.ram_available > 0
    assert len(m.gpus) == len(listed)


def test_tree_rss_of_this_process() -> None:
    rss = tree_rss(os.getpid())
    assert rss is not None and rss > 10 * 1024**2
    assert tree_rss(2**22 + 12345) is None  # a pid that does not exist
