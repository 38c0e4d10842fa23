"""CPU time from /proc: one process, a process tree, this client, the whole machine; and
:class:`CpuMeter`, which snapshots them so a round's cost can be split between the measured
server, the fake upstream, this client and everything else ("foreign" CPU)."""

from __future__ import annotations

import contextlib
import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def _kids() -> dict[int, list[int]]:
    """Parent pid -> child pids of every live process (from each /proc/PID/stat's ppid field)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{d}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and every live descendant, seconds (for servers that fork workers or
    are started through a shell; a child that already exited is not counted)."""
    kids = _kids()
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += proc_cpu_s(p)
        todo += kids.get(p, [])
    return total


def self_cpu_s() -> float:
    """This process's user + system CPU seconds."""
    t = os.times()
    return t.user + t.system


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def established_to(port: int, pid: int | None = None) -> int:
    """ESTABLISHED TCP connections to 127.0.0.1:port (from /proc/net/tcp); with pid, only that process's sockets."""
    inodes: set[str] | None = None
    if pid is not None:
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    n = 0
    want = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if len(parts) > 9 and parts[2] == want and parts[3] == "01" and (inodes is None or parts[9] in inodes):
                n += 1
    return n


Snap = tuple[float, float, float, float, float]


class CpuMeter:
    """CPU seconds of the measured server (``gateway``), the fake upstream and this client, plus the
    machine's busy time and the wall clock, between two :meth:`snap` calls. ``tree``: count the
    server's descendants too (a peer started through a launcher or with workers)."""

    def __init__(self, gateway_pid: int, fake_pid: int | None, tree: bool = False) -> None:
        self.gw, self.fake, self.tree = gateway_pid, fake_pid, tree

    def snap(self) -> Snap:
        return (
            tree_cpu_s(self.gw) if self.tree else proc_cpu_s(self.gw),
            proc_cpu_s(self.fake) if self.fake else 0.0,
            self_cpu_s(),
            machine_busy_s(),
            time.perf_counter(),
        )

    @staticmethod
    def delta(s0: Snap, s1: Snap) -> dict[str, float]:
        """Seconds between two snaps: gateway, fake, client, busy (machine), wall."""
        d = [b - a for a, b in zip(s0, s1, strict=True)]
        return {"gateway": d[0], "fake": d[1], "client": d[2], "busy": d[3], "wall": d[4]}
