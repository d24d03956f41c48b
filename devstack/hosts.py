"""The project's own test hosts: network namespaces on one machine, each with its own interface, address and
loopback, joined by a bridge, made and removed with `ip` (Debian's iproute2; needs root).

This machine (the root namespace) has an address on the bridge too, so a test reaches every host as a client from
outside would. Cutting a host sets its cable down: the root side of its veth pair, so nothing crosses to or from
it, while its processes keep running, as when a switch port or a link fails.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from dataclasses import dataclass

_LOGGER = logging.getLogger(__name__)

# Every namespace, bridge and veth this module makes starts with this, so what a crashed run left can be found.
PREFIX = "shop"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `ip <args>`; a failure raises with what ip said."""
    binary = shutil.which("ip") or "/usr/sbin/ip"
    run = subprocess.run([binary, *args], capture_output=True, text=True)
    if check and run.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {run.stderr.strip() or run.returncode}")
    return run


@dataclass(frozen=True)
class Host:
    """One test host: its namespace, its address, and the root side of its cable."""

    name: str
    namespace: str
    address: str
    cable: str

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run on this host."""
        return ["ip", "netns", "exec", self.namespace, *argv]


class Network:
    """Hosts named `names` on 10.<net>.<subnet>.0/24: the bridge and this machine at .1, the hosts from .10 in the
    order given. `tag` (a few characters) keeps the names of two networks on one machine apart."""

    def __init__(self, tag: str, names: list[str], subnet: str = "10.213.7.0/24"):
        self.tag = tag
        self.subnet = ipaddress.ip_network(subnet)
        first = self.subnet.network_address
        self.gateway_address = str(first + 1)
        self.bridge = f"{PREFIX}{tag}br"
        self.hosts: dict[str, Host] = {}
        self._made: list[tuple[str, str]] = []
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            ip("addr", "add", f"{self.gateway_address}/{self.subnet.prefixlen}", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for n, name in enumerate(names):
                self._add(name, str(first + 10 + n))
        except Exception:
            self.close()
            raise

    def _add(self, name: str, address: str) -> None:
        namespace, cable, inside = f"{PREFIX}{self.tag}-{name}", f"{PREFIX}{self.tag}{name}", f"{PREFIX}{self.tag}{name}i"
        if len(cable) > 14:
            raise ValueError(f"host name {name!r} too long for an interface name")
        ip("netns", "add", namespace)
        self._made.append(("netns", namespace))
        ip("link", "add", cable, "type", "veth", "peer", "name", inside)
        self._made.append(("link", cable))
        ip("link", "set", inside, "netns", namespace)
        ip("-n", namespace, "link", "set", inside, "name", "eth0")
        ip("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "route", "add", "default", "via", self.gateway_address)
        ip("link", "set", cable, "master", self.bridge)
        ip("link", "set", cable, "up")
        self.hosts[name] = Host(name, namespace, address, cable)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def cut(self, name: str) -> None:
        """Takes the host off the network: its cable down."""
        ip("link", "set", self.hosts[name].cable, "down")

    def restore(self, name: str) -> None:
        """Puts the host back on the network."""
        ip("link", "set", self.hosts[name].cable, "up")

    def close(self) -> None:
        """Removes every namespace, cable and the bridge this network made."""
        for kind, name in reversed(self._made):
            ip(kind, "del", name, check=False)
        self._made.clear()


def remove_leftovers(tag: str = "") -> list[str]:
    """Removes the namespaces and links of networks of `tag` (of every tag if empty) a stopped run left behind."""
    removed = []
    for line in ip("netns", "list").stdout.splitlines():
        namespace = line.split()[0] if line.strip() else ""
        if namespace.startswith(f"{PREFIX}{tag}"):
            ip("netns", "del", namespace, check=False)
            removed.append(namespace)
    for line in ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(f"{PREFIX}{tag}"):
            ip("link", "del", name, check=False)
            removed.append(name)
    return removed
