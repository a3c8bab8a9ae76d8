"""This machine's own addresses and names: the Host header a LAN client sends (the DNS
rebinding guard admits them on a LAN bind), and the URL that works from elsewhere."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["display_url", "is_loopback", "is_wildcard", "lan_address", "own_names"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """A bind on every address (0.0.0.0, ::)."""
    return host.strip("[]") in ("0.0.0.0", "::", "")


def _addresses() -> list[str]:
    import psutil

    found = []
    up = {name for name, st in psutil.net_if_stats().items() if st.isup}
    for name, addrs in psutil.net_if_addrs().items():
        if name not in up:
            continue
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                found.append(a.address.split("%", 1)[0])  # an IPv6 scope: not in a Host header
    return found


def own_names(bind: str) -> set[str]:
    """Every name a client elsewhere may use for this machine: the address bound (and on a
    wildcard bind, every address of an interface that is up), the host name and its FQDN;
    IPv6 addresses as a Host header writes them, in brackets. Lower-case."""
    names = {bind.strip("[]")}
    if is_wildcard(bind):
        names.update(_addresses())
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name)
    out = set()
    for n in names:
        n = n.lower()
        out.add(f"[{n}]" if ":" in n else n)
    return out


def lan_address() -> str | None:
    """An address of this machine other machines can reach: the first IPv4 address that is not
    loopback (else IPv6); None when there is none."""
    v6 = None
    for a in _addresses():
        ip = ipaddress.ip_address(a)
        if ip.is_loopback or ip.is_link_local:
            continue
        if ip.version == 4:
            return a
        v6 = v6 or a
    return v6


def display_url(url: str) -> str:
    """``url`` with a wildcard host (0.0.0.0, [::]) replaced by a LAN address of this machine:
    the URL a client elsewhere can use (the wildcard works only here)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.hostname is None or not is_wildcard(parts.hostname):
        return url
    lan = lan_address()
    if lan is None:
        return url
    host = f"[{lan}]" if ":" in lan else lan
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
