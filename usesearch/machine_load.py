"""How busy this machine is, for timings that depend on it (calibration's): the load
average per core, and the share of its cores other processes used over an interval
(their CPU time less this process's own, read by psutil). The load average lags a
minute and counts this process's own threads: a calibration timed beside one busy
process read 1.26 a core, under the 1.4 that flags a busy machine, and kept recall
0.93 for a target of 0.95 that the same index met in 28 ms on the quiet machine.
The cores are those this process may run on (its CPU affinity: a cpuset's, not the
host's); a container without its own ``/proc/stat`` (LXCFS) counts other containers on
those cores too, as they slow it alike. Light: no model or index library."""

from __future__ import annotations

import time

import psutil

Clock = tuple[float, float, float, int]  # (wall s, its cores' busy CPU s, this process's CPU s, its cores)


def load_per_core() -> float:
    """The machine's 1-minute load average per core."""
    return round(psutil.getloadavg()[0] / max(1, psutil.cpu_count() or 1), 2)


def machine_clock() -> Clock | None:
    """Now, for ``others_per_core``; None where the cores' CPU time is not readable:
    other processes' share then reads 0."""
    try:
        per_cpu = psutil.cpu_times(percpu=True)
        process = psutil.Process()
        ours = process.cpu_affinity() if hasattr(process, "cpu_affinity") else []  # (macOS: none)
        own = process.cpu_times()
    except (psutil.Error, OSError, NotImplementedError):
        return None
    cores = [per_cpu[n] for n in ours if n < len(per_cpu)] or per_cpu
    # Busy: all but idle and I/O wait; a guest's time is counted in user's already.
    spare = ("idle", "iowait", "guest", "guest_nice")
    busy = sum(sum(times) - sum(getattr(times, name, 0.0) for name in spare) for times in cores)
    return time.monotonic(), busy, own.user + own.system, max(1, len(cores))


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
