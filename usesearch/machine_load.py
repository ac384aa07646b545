"""How busy this machine is, for timings that depend on it (calibration's): the load
average per core, and the share of its cores other processes used over an interval
(Linux's ``/proc/stat`` less this process's own CPU time). The load average lags a
minute and counts this process's own threads: a calibration timed beside one busy
process read 1.26 a core, under the 1.4 that flags a busy machine, and kept recall
0.93 for a target of 0.95 that the same index met in 28 ms on the quiet machine.
The cores are those this process may run on (``sched_getaffinity``: a cpuset's, not the
host's); a container without its own ``/proc/stat`` (LXCFS) counts other containers on
those cores too, as they slow it alike. Light: no model or index library."""

from __future__ import annotations

import os
import time

Clock = tuple[float, float, float, int]  # (wall s, its cores' busy CPU s, this process's CPU s, its cores)


def load_per_core() -> float:
    """The machine's 1-minute load average per core."""
    return round(os.getloadavg()[0] / max(1, os.cpu_count() or 1), 2) if hasattr(os, "getloadavg") else 0.0


def machine_clock() -> Clock | None:
    """Now, for ``others_per_core``; None where the machine's CPU time is not readable
    (not Linux): other processes' share then reads 0."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            lines = [line.split() for line in stat if line.startswith("cpu")]
        hz = os.sysconf("SC_CLK_TCK")
        # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
        busy = {fields[0]: sum(map(int, fields[1:9])) - int(fields[4]) - int(fields[5]) for fields in lines}
        ours = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    if "cpu" not in busy or hz <= 0:
        return None
    per_cpu = [f"cpu{n}" for n in ours]
    if per_cpu and len(per_cpu) < len(busy) - 1 and all(name in busy for name in per_cpu):  # a cpuset's cores
        ticks, cores = sum(busy[name] for name in per_cpu), len(per_cpu)
    else:
        ticks, cores = busy["cpu"], max(1, len(busy) - 1 or os.cpu_count() or 1)
    own = os.times()
    return time.monotonic(), ticks / hz, own.user + own.system, cores


def others_per_core(since: Clock | None) -> float:
    """The share of each core that other processes used since ``since`` (``machine_clock``):
    the machine's busy CPU time less this process's, over the wall time and the cores."""
    now = machine_clock()
    if since is None or now is None or now[0] <= since[0]:
        return 0.0
    others = (now[1] - since[1]) - (now[2] - since[2])
    return round(max(0.0, others / ((now[0] - since[0]) * max(1, since[3]))), 2)


def others_now(seconds: float = 0.25) -> float:
    """Other processes' share of each core over the next ``seconds``."""
    since = machine_clock()
    if since is None:
        return 0.0
    time.sleep(seconds)
    return others_per_core(since)
