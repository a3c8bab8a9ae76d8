"""Who listens on a TCP port: read from Linux's ``/proc``, before a secret is sent to it.

A port on 127.0.0.1 can be taken by any local user. Two secrets go to loopback ports: the
CLI's token to the supervisor, and the supervisor's per-runner key to each runner. Both are
sent only once the listening socket is known to belong to the process they are meant for:
its inode (``/proc/net/tcp``, ``tcp6``) is among that process's open files (``/proc/PID/fd``),
and the process runs under our own user.

Only the standard library: the CLI imports this on every command (~0.3 ms a check here).
"""

from __future__ import annotations

import os
import sys

__all__ = ["LINUX", "listening_inodes", "owner_of_listener", "holds_listener"]

#: where ``/proc`` tells; elsewhere there is nothing to check with, and nothing is checked
LINUX = sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")

_LISTEN = "0A"


def listening_inodes(port: int) -> set[int]:
    """The inodes of the sockets in LISTEN state on ``port``, any address, IPv4 or IPv6."""
    found: set[int] = set()
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)  # the header line
                for line in f:
                    fields = line.split()
                    # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    if len(fields) > 9 and fields[3] == _LISTEN and fields[1].endswith(want):
                        found.add(int(fields[9]))
        except OSError:
            continue
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _ours(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def holds_listener(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` (of our own user) holds the socket listening on ``port``;
    None when nothing listens there yet."""
    inodes = listening_inodes(port)
    if not inodes:
        return None
    return _ours(pid) and bool(inodes & _socket_inodes(pid))


def owner_of_listener(port: int, candidates: list[int]) -> int | None:
    """Which of ``candidates`` (of our own user) holds the socket listening on ``port``."""
    inodes = listening_inodes(port)
    for pid in candidates:
        if inodes and _ours(pid) and inodes & _socket_inodes(pid):
            return pid
    return None
