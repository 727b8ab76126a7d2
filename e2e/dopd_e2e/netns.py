"""A pod network on this machine for e2e tests that run real worker processes behind KWOK pods.

EndpointSlices refuse loopback addresses, and KWOK hands pods addresses from its `--cidr`, which
e2e/cluster/up.sh sets to 198.18.0.0/16 (RFC 2544's benchmarking range, never routed on the internet
and never used by real networks, unlike 10/8, 172.16/12 or 192.168/16). So each pod's process runs in a
network namespace of its own that holds the pod's address, the way a CNI plugin would wire it:

    root namespace            hub namespace                 pod namespaces
    dopde2e-host  <-veth->    up0 --+                       +-- eth0 198.18.0.7/15 (pod A)
    198.19.255.254/15                br0 (bridge) --p<n>-veth+-- eth0 198.18.0.8/15 (pod B) ...

All pods and the host share one L2 segment on the hub's bridge, so the router, Prometheus and the test
(in the root namespace) reach every pod, and pods reach each other (KV transfers), with no IP forwarding
and no firewall change in the root namespace. The bridge lives in its own namespace, so the only trace in
the root namespace is one veth and its on-link route to 198.18.0.0/15.

A pod's process also gets what a kubelet gives a container: its hostname is the pod's name (a UTS
namespace), and /etc/hosts maps that name to the pod's address (`ip netns exec` bind-mounts
/etc/netns/<ns>/hosts), so hostname lookups (gloo picks its interface that way) find the pod address.
Its resolv.conf names only its own loopback: a lookup fails at once, and no query ever leaves for the
machine's resolver. A pod's MAC address is derived from its IP address (as some CNI plugins do): KWOK
hands a deleted pod's address to the next pod, and with a new MAC behind an old address every neighbour
whose ARP cache still holds the old one would send into the void until that entry expires (seen: a
connect to the new pod timing out after 10 s).

One network per machine at a time (a lock file); `down()` removes every namespace, veth and file it made,
and `up()` first removes leftovers of a run that was killed. Needs root and iproute2. Used by
`dopd_e2e.kubelet` and e2e/test_drain.py; docs/drain.md describes the harness.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

TEST_NETWORK = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544; KWOK allocates from 198.18.0.0/16 in it
HOST_INTERFACE = ipaddress.ip_interface("198.19.255.254/15")  # outside KWOK's /16: no pod ever gets it
PREFIX = "dopde2e"
HUB = f"{PREFIX}-hub"
HOST_VETH = f"{PREFIX}-host"
LOCK_PATH = Path("/run/lock/dopd-e2e-netns.lock")
NETNS_ETC = Path("/etc/netns")


class NetnsUnavailable(RuntimeError):
    """The pod network cannot be built here (not root, no iproute2, another run holds it)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def mac_address(ip: ipaddress.IPv4Address) -> str:
    """A locally administered unicast MAC that is a function of the IP address (02:00 + its 4 bytes)."""
    return "02:00:" + ":".join(f"{b:02x}" for b in ip.packed)


@dataclass(frozen=True)
class PodNetns:
    """One pod's network namespace."""

    name: str
    address: ipaddress.IPv4Address
    hostname: str

    def exec_argv(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace with the pod's hostname (exec all the way down, so the PID is
        the process's own and a signal reaches it as the kubelet's would)."""
        return [
            "ip",
            "netns",
            "exec",
            self.name,
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.hostname,
            *argv,
        ]


class PodNetwork:
    """The hub, its bridge and the host's veth; pods join with `add_pod` and leave with `remove_pod`."""

    def __init__(self) -> None:
        self._lock: IO[str] | None = None
        self._pods: dict[str, PodNetns] = {}
        self._next_index = 0

    @property
    def host_address(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(HOST_INTERFACE.ip)

    def up(self) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("the pod network needs root (network namespaces, veth pairs)")
        if shutil.which("ip") is None or shutil.which("unshare") is None:
            raise NetnsUnavailable("the pod network needs iproute2 (`ip`) and util-linux (`unshare`)")
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK_PATH.open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NetnsUnavailable(
                f"another e2e run holds the {TEST_NETWORK} pod network ({LOCK_PATH}); run one at a time"
            ) from None
        self._lock = lock
        self._remove_leftovers()
        try:
            _ip("netns", "add", HUB)
            _ip("-n", HUB, "link", "set", "lo", "up")
            _ip("-n", HUB, "link", "add", "br0", "type", "bridge")
            _ip("-n", HUB, "link", "set", "br0", "up")
            _ip("link", "add", HOST_VETH, "type", "veth", "peer", "name", "up0", "netns", HUB)
            _ip("-n", HUB, "link", "set", "up0", "master", "br0", "up")
            _ip("addr", "add", str(HOST_INTERFACE), "dev", HOST_VETH)
            _ip("link", "set", HOST_VETH, "up")
        except RuntimeError:
            self.down()
            raise

    def add_pod(self, hostname: str, address: str) -> PodNetns:
        """A namespace holding `address` (which must be in 198.18.0.0/15) on eth0, bridged to the hub."""
        ip = ipaddress.IPv4Address(address)
        if ip not in TEST_NETWORK or ip == HOST_INTERFACE.ip:
            raise ValueError(
                f"pod address {ip} is outside the test network {TEST_NETWORK}: refusing to use it"
            )
        if self._lock is None:
            raise RuntimeError("PodNetwork.up() first")
        if any(p.address == ip for p in self._pods.values()):
            raise ValueError(f"pod address {ip} is already held by another pod namespace")
        index = self._next_index
        self._next_index += 1
        pod = PodNetns(f"{PREFIX}-{index}", ip, hostname)
        hub_side = f"p{index}"
        self._pods[pod.name] = pod
        _ip("netns", "add", pod.name)
        _ip("-n", pod.name, "link", "set", "lo", "up")
        _ip("-n", HUB, "link", "add", hub_side, "type", "veth", "peer", "name", "eth0", "netns", pod.name)
        _ip("-n", HUB, "link", "set", hub_side, "master", "br0", "up")
        _ip("-n", pod.name, "link", "set", "eth0", "address", mac_address(ip))
        _ip("-n", pod.name, "addr", "add", f"{ip}/{TEST_NETWORK.prefixlen}", "dev", "eth0")
        _ip("-n", pod.name, "link", "set", "eth0", "up")
        etc = NETNS_ETC / pod.name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{ip} {hostname}\n")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        return pod

    def remove_pod(self, pod: PodNetns) -> None:
        """Delete the namespace (its veth pair goes with it) and its /etc/netns files."""
        self._pods.pop(pod.name, None)
        _ip("netns", "del", pod.name, check=False)
        shutil.rmtree(NETNS_ETC / pod.name, ignore_errors=True)

    def down(self) -> None:
        """Remove everything `up` and `add_pod` made; safe to call twice and after a failed `up`."""
        for pod in list(self._pods.values()):
            self.remove_pod(pod)
        self._remove_leftovers()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _remove_leftovers(self) -> None:
        """Every namespace, /etc/netns entry and host veth of this harness, ours or a killed run's."""
        for name in _namespaces():
            if name.startswith(f"{PREFIX}-"):
                _ip("netns", "del", name, check=False)
        if NETNS_ETC.is_dir():
            for entry in NETNS_ETC.glob(f"{PREFIX}-*"):
                shutil.rmtree(entry, ignore_errors=True)
        _ip("link", "del", HOST_VETH, check=False)
        deadline = time.monotonic() + 10  # the kernel tears namespaces down asynchronously
        while _ip("link", "show", HOST_VETH, check=False).returncode == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{HOST_VETH} is still there 10 s after its namespace was deleted")
            time.sleep(0.1)
