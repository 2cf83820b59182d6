"""CPU packages as devices: /proc/stat utilization, /proc/cpuinfo clocks, RAPL energy and power.

One device per physical package (socket). Everything is read from injectable roots (``/proc``,
``/sys``), so tests run on captured trees. RAPL (Linux powercap, ``intel-rapl:N`` zones; AMD's
driver exposes the same layout) gives a cumulative ``energy_uj`` counter that wraps at
``max_energy_range_uj``; power is the energy delta over the tick. Without RAPL (most VMs, or no
permission to read ``energy_uj``), power, energy and cap are absent, never zero.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accelpilot.collectors.device import (
    Availability,
    Capabilities,
    DeviceBackend,
    DeviceInfo,
    Reading,
)


@dataclass
class _Package:
    package_id: int
    cpus: list[int]
    rapl_zone: Path | None = None
    max_energy_uj: int | None = None
    last_energy_uj: int | None = None
    energy_j: float = 0.0
    last_busy_idle: tuple[int, int] | None = None


class CpuBackend(DeviceBackend):
    name = "cpu"

    def __init__(
        self,
        host_id: str,
        *,
        proc_root: Path = Path("/proc"),
        sys_root: Path = Path("/sys"),
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.host_id = host_id
        self.proc = proc_root
        self.sys = sys_root
        self.clock_ns = clock_ns
        self._packages: list[_Package] | None = None
        self._last_read_ns: int | None = None

    # -- discovery ----------------------------------------------------------------------------
    def _probe(self) -> Availability:
        if not (self.proc / "stat").exists():
            return Availability(False, f"{self.proc / 'stat'} not readable (not Linux?)")
        return Availability(True, "")

    def _topology(self) -> list[_Package]:
        if self._packages is not None:
            return self._packages
        by_pkg: dict[int, list[int]] = {}
        cpu_dir = self.sys / "devices/system/cpu"
        for entry in sorted(cpu_dir.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
            pkg_file = entry / "topology/physical_package_id"
            pkg = int(pkg_file.read_text()) if pkg_file.exists() else 0
            by_pkg.setdefault(pkg, []).append(int(entry.name[3:]))
        if not by_pkg:  # no sysfs topology: every CPU of /proc/stat in one package
            by_pkg[0] = [i for i, _ in enumerate(self._proc_stat_lines()[1:])]
        packages = [_Package(pkg, cpus) for pkg, cpus in sorted(by_pkg.items())]
        for zone in sorted((self.sys / "class/powercap").glob("intel-rapl:[0-9]*")):
            if ":" in zone.name[len("intel-rapl:") :]:
                continue  # a subzone (core, uncore, dram)
            idx = int(zone.name.split(":")[1])
            if idx < len(packages) and os.access(zone / "energy_uj", os.R_OK):
                packages[idx].rapl_zone = zone
                packages[idx].max_energy_uj = _read_int(zone / "max_energy_range_uj")
        self._packages = packages
        return packages

    def discover(self) -> list[DeviceInfo]:
        model = self._cpuinfo_field("model name") or "unknown CPU"
        vendor = (self._cpuinfo_field("vendor_id") or "unknown").replace("Genuine", "")
        vendor = {"AuthenticAMD": "amd", "Intel": "intel"}.get(vendor, vendor.lower())
        devices = []
        for i, pkg in enumerate(self._topology()):
            cap_uw = (
                _read_int(pkg.rapl_zone / "constraint_0_max_power_uw") if pkg.rapl_zone else None
            )
            devices.append(
                DeviceInfo(
                    device_id=f"{self.host_id}/cpu{i}",
                    backend=self.name,
                    kind="cpu",
                    vendor=vendor,
                    model=model,
                    index=i,
                    uuid=None,
                    memory_total_bytes=None,
                    capabilities=Capabilities(
                        max_clock_sm_mhz=self._max_freq_mhz(pkg.cpus[0]),
                        extra={
                            "logical_cpus": len(pkg.cpus),
                            "rapl": pkg.rapl_zone is not None,
                            "rapl_max_power_w": cap_uw / 1e6 if cap_uw else None,
                        },
                    ),
                )
            )
        return devices

    # -- sampling -----------------------------------------------------------------------------
    def read(self) -> Reading:
        packages = self._topology()
        now_ns = self.clock_ns()
        dt_s = (now_ns - self._last_read_ns) / 1e9 if self._last_read_ns is not None else None
        self._last_read_ns = now_ns
        per_cpu = self._cpu_times()
        mhz = self._cpu_mhz()
        util, clocks, power, energy, cap = [], [], [], [], []
        for pkg in packages:
            busy = sum(per_cpu[c][0] for c in pkg.cpus if c in per_cpu)
            idle = sum(per_cpu[c][1] for c in pkg.cpus if c in per_cpu)
            if pkg.last_busy_idle is not None:
                d_busy, d_idle = busy - pkg.last_busy_idle[0], idle - pkg.last_busy_idle[1]
                util.append(100.0 * d_busy / (d_busy + d_idle) if d_busy + d_idle > 0 else 0.0)
            else:
                util.append(None)
            pkg.last_busy_idle = (busy, idle)
            freqs = [mhz[c] for c in pkg.cpus if c in mhz]
            clocks.append(sum(freqs) / len(freqs) if freqs else None)
            p, e = self._rapl(pkg, dt_s)
            power.append(p)
            energy.append(e)
            limit = (
                _read_int(pkg.rapl_zone / "constraint_0_power_limit_uw") if pkg.rapl_zone else None
            )
            cap.append(limit / 1e6 if limit else None)
        return Reading(
            metrics={
                "util_compute_pct": util,
                "clock_sm_mhz": clocks,
                "power_w": power,
                "energy_j": energy,
                "cap_w": cap,
            }
        )

    def _rapl(self, pkg: _Package, dt_s: float | None) -> tuple[float | None, float | None]:
        if pkg.rapl_zone is None:
            return None, None
        now = _read_int(pkg.rapl_zone / "energy_uj")
        if now is None:
            return None, None
        if pkg.last_energy_uj is None:
            pkg.last_energy_uj = now
            return None, pkg.energy_j
        delta = now - pkg.last_energy_uj
        if delta < 0 and pkg.max_energy_uj:  # the counter wrapped
            delta += pkg.max_energy_uj
        pkg.last_energy_uj = now
        pkg.energy_j += delta / 1e6
        power = (delta / 1e6) / dt_s if dt_s else None
        return power, pkg.energy_j

    def _proc_stat_lines(self) -> list[str]:
        return [ln for ln in (self.proc / "stat").read_text().splitlines() if ln.startswith("cpu")]

    def _cpu_times(self) -> dict[int, tuple[int, int]]:
        """Per logical CPU: (busy, idle) jiffies. idle = idle + iowait; guest is inside user."""
        out = {}
        for line in self._proc_stat_lines()[1:]:
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]] + [0] * max(0, 8 - len(vals))
            user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
            out[int(name[3:])] = (user + nice + system + irq + softirq + steal, idle + iowait)
        return out

    def _cpu_mhz(self) -> dict[int, float]:
        out, cpu = {}, None
        for line in (self.proc / "cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "processor":
                cpu = int(value)
            elif key == "cpu MHz" and cpu is not None:
                out[cpu] = float(value)
        return out

    def _cpuinfo_field(self, name: str) -> str | None:
        try:
            text = (self.proc / "cpuinfo").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
        return None

    def _max_freq_mhz(self, cpu: int) -> float | None:
        khz = _read_int(self.sys / f"devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq")
        return khz / 1000 if khz else None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
