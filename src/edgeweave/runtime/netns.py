"""Kernel-shaped links (`--links netns`): one Linux network namespace per device, tc htb per link.

The in-process shaper (`links.py`) paces whole messages; this mode lets the kernel shape the
actual TCP stream instead (packets, congestion control, a real queue), at the price of needing
root. The topology is a star around a Linux bridge in the ROOT namespace:

    root namespace: bridge {prefix}{X}br, 10.231.X.1 (the source device) and 10.231.X.254 (control)
    {prefix}-{pid}-{i}: eth0 = 10.231.X.(i+2), a veth whose other end {prefix}{X}h{i} is a bridge port

The coordinator and the source device's worker stay in the root namespace, in the user's
process tree; every other device's worker is started with `exec_prefix(device)`. Each sender
shapes its own egress with htb: one class per destination (rate = ceil = that directed pair's
bandwidth) picked by a u32 filter on the destination address, and a fast default class for
everything else. The source's classes sit on the bridge and also match the source address, so
traffic from the control address (10.231.X.254) is never shaped. The kernel here has no
netem: latency is still added by the application (`LinkShaper(shape_bandwidth=False)`).

X comes from the pid so that concurrent runs use different subnets; namespace names carry
the pid and root-side interfaces carry it in their alias, so `cleanup_stale` removes exactly
the leftovers of runs whose process is gone (a crash, a SIGKILL) and never a live run's.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeweave.errors import UserError

SUBNET_PREFIX = "10.231"  # a private range that only exists inside this machine's namespaces
NS_IFNAME = "eth0"  # the device's end of its veth, inside its namespace
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,5}$")  # keeps every interface name within 15 characters

# htb parameters. A burst of at least one 64 KiB GSO packet keeps the shaping exact with the
# veth's segmentation offload (a 50 Mbit class then delivers ~95% of 50 Mbit/s as TCP payload,
# the rest being TCP/IP/Ethernet headers); the quantum only matters between busy classes.
_QUANTUM_BYTES = 60000
_MIN_BURST_BYTES = 65536
_BURST_SECONDS = 0.002
_FAST_RATE = "10gbit"
_FAST_BURST = "1m"
_MIN_RATE_BPS = 1000.0  # htb cannot do 0: a trace's outage becomes 1 kbit/s
_DEFAULT_MINOR = 0x2
_FIRST_MINOR = 0x10


def _run(cmd: Sequence[str], check: bool = True) -> str:
    """Run one command; a failure becomes a UserError naming the command and its complaint."""
    try:
        done = subprocess.run(list(cmd), check=check, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"cannot run {cmd[0]!r}: not installed (needed by --links netns)") from None
    except subprocess.CalledProcessError as exc:
        detail = " ".join((exc.stderr or exc.stdout or "").split()) or f"exit status {exc.returncode}"
        raise UserError(f"command failed: {' '.join(cmd)}: {detail}") from None
    return done.stdout


def require_root() -> None:
    """Refuse early, in one line, when namespaces and tc cannot be used."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        why = f" ({', '.join(missing)} not found)" if missing else ""
        raise UserError(
            "--links netns needs root (Linux network namespaces and tc); "
            f"run as root or use the default in-process shaper{why}"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = "ew") -> list[str]:
    """Delete namespaces and root-side interfaces left by dead runs with this prefix; returns their names.

    A run is dead when the pid in the names/aliases it created no longer exists, so a
    concurrent live run is left alone.
    """
    removed = []
    ns_name = re.compile(rf"^{re.escape(prefix)}-(\d+)-\d+$")
    for entry in json.loads(_run(["ip", "-j", "netns", "list"]) or "[]"):
        match = ns_name.match(entry.get("name", ""))
        if match and not _pid_alive(int(match.group(1))):
            _run(["ip", "netns", "del", entry["name"]], check=False)
            removed.append(entry["name"])
    alias = re.compile(rf"^{re.escape(prefix)}-(\d+)$")
    for entry in json.loads(_run(["ip", "-j", "link", "show"]) or "[]"):
        match = alias.match(entry.get("ifalias", ""))
        if match and entry.get("ifname", "").startswith(prefix) and not _pid_alive(int(match.group(1))):
            _run(["ip", "link", "del", entry["ifname"]], check=False)
            removed.append(entry["ifname"])
    return removed


def _used_subnets() -> set[int]:
    """Third octets of every 10.231.X.0/24 address in the root namespace (other runs' bridges)."""
    used = set()
    for link in json.loads(_run(["ip", "-j", "addr", "show"]) or "[]"):
        for addr in link.get("addr_info", []):
            parts = str(addr.get("local", "")).split(".")
            if len(parts) == 4 and ".".join(parts[:2]) == SUBNET_PREFIX:
                used.add(int(parts[2]))
    return used


def _rate_args(bps: float) -> list[str]:
    """htb rate = ceil = bps, with a burst of at least one GSO packet."""
    rate = max(float(bps), _MIN_RATE_BPS)
    burst = max(_MIN_BURST_BYTES, int(rate / 8 * _BURST_SECONDS))
    bits = f"{round(rate)}bit"
    return ["rate", bits, "ceil", bits, "burst", f"{burst}b", "cburst", f"{burst}b", "quantum", str(_QUANTUM_BYTES)]


@dataclass
class _Node:
    """Where one device lives: its namespace (None for the source), address and interfaces."""

    name: str
    namespace: str | None
    address: str
    egress: str  # the interface its outgoing traffic is shaped on
    host_end: str | None  # its veth's bridge port in the root namespace


class NetnsCluster:
    """Namespaces, veths, a bridge and htb classes for one run; everything is removed on exit.

    `rates` maps ordered device pairs to bits/s; pairs left out are not shaped. Use it as a
    context manager. Cleanup is idempotent and also registered with atexit; whatever a killed
    process leaves behind is removed by the next run's `cleanup_stale`.
    """

    def __init__(
        self,
        devices: Sequence[str],
        source: str,
        rates: Mapping[tuple[str, str], float],
        prefix: str = "ew",
    ):
        if not _PREFIX.match(prefix):
            raise ValueError(f"prefix {prefix!r}: 1-6 lowercase letters and digits, starting with a letter")
        if source not in devices:
            raise ValueError(f"source {source!r} is not one of the devices {list(devices)}")
        if len(set(devices)) != len(devices) or len(devices) > 250:
            raise ValueError("devices must be distinct, and at most 250")
        for a, b in rates:
            if a not in devices or b not in devices or a == b:
                raise ValueError(f"rates: ({a!r}, {b!r}) is not a pair of two different devices")
        self.devices = list(devices)
        self.source = source
        self.rates = {pair: float(bps) for pair, bps in rates.items()}
        self.prefix = prefix
        self.tag = f"{prefix}-{os.getpid()}"
        self._subnet: int | None = None
        self._bridge: str | None = None
        self._nodes: dict[str, _Node] = {}
        self._classes: dict[tuple[str, str], int] = {}
        self._started = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> NetnsCluster:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Build the topology; on any failure (or Ctrl-C) whatever was built is removed again."""
        if self._started:
            raise RuntimeError("a NetnsCluster is started once")
        require_root()
        self._started = True
        atexit.register(self.close)
        try:
            cleanup_stale(self.prefix)
            self._make_bridge()
            for i, name in enumerate(d for d in self.devices if d != self.source):
                self._make_device(i, name)
            for device in self.devices:
                self._make_root_qdisc(device)
            for (a, b), bps in self.rates.items():
                self._add_class(a, b, bps)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Delete the veths, namespaces and bridge; safe to call twice, finishes even through Ctrl-C."""
        if self._closed or not self._started:
            return
        self._closed = True
        atexit.unregister(self.close)
        commands = []
        for node in self._nodes.values():
            if node.host_end is not None:
                commands.append(["ip", "link", "del", node.host_end])
            if node.namespace is not None:
                commands.append(["ip", "netns", "del", node.namespace])
        if self._bridge is not None:
            commands.append(["ip", "link", "del", self._bridge])
        interrupted: BaseException | None = None
        for cmd in commands:
            for _attempt in range(3):
                try:
                    _run(cmd, check=False)
                    break
                except KeyboardInterrupt as exc:  # clean up first, then let the interrupt through
                    interrupted = exc
        if interrupted is not None:
            raise interrupted

    # -- building ------------------------------------------------------------------------------

    def _ip(self, host: int) -> str:
        return f"{SUBNET_PREFIX}.{self._subnet}.{host}"

    def _make_bridge(self) -> None:
        """The bridge and the source's address; tries subnets from the pid on until one is free."""
        used = _used_subnets()
        first = 1 + os.getpid() % 250
        for offset in range(250):
            subnet = 1 + (first - 1 + offset) % 250
            bridge = f"{self.prefix}{subnet}br"
            if subnet in used:
                continue
            try:
                _run(["ip", "link", "add", "name", bridge, "type", "bridge", "forward_delay", "0"])
            except UserError:
                continue  # another run took this subnet's bridge name just now
            self._subnet, self._bridge = subnet, bridge
            break
        else:
            raise UserError(f"no free subnet {SUBNET_PREFIX}.X.0/24 left for --links netns")
        _run(["ip", "link", "set", "dev", bridge, "alias", self.tag])
        _run(["ip", "addr", "add", f"{self._ip(1)}/24", "dev", bridge])
        _run(["ip", "addr", "add", f"{self._ip(254)}/24", "dev", bridge])
        _run(["ip", "link", "set", "dev", bridge, "up"])
        self._nodes[self.source] = _Node(self.source, None, self._ip(1), bridge, None)

    def _make_device(self, i: int, name: str) -> None:
        """Namespace, veth pair (one end on the bridge), address, interfaces up."""
        namespace, host_end = f"{self.tag}-{i}", f"{self.prefix}{self._subnet}h{i}"
        node = _Node(name, namespace, self._ip(i + 2), NS_IFNAME, None)
        _run(["ip", "netns", "add", namespace])
        self._nodes[name] = node  # from here on close() removes the namespace
        _run(["ip", "link", "add", "name", host_end, "type", "veth", "peer", "name", NS_IFNAME, "netns", namespace])
        node.host_end = host_end
        _run(["ip", "link", "set", "dev", host_end, "alias", self.tag])
        _run(["ip", "link", "set", "dev", host_end, "master", self._bridge])
        _run(["ip", "link", "set", "dev", host_end, "up"])
        inside = ["ip", "netns", "exec", namespace]
        _run([*inside, "ip", "addr", "add", f"{node.address}/24", "dev", NS_IFNAME])
        _run([*inside, "ip", "link", "set", "dev", NS_IFNAME, "up"])
        _run([*inside, "ip", "link", "set", "dev", "lo", "up"])

    def _tc(self, device: str, *args: str) -> None:
        node = self._nodes[device]
        _run([*self.exec_prefix(device), "tc", *args[:2], "dev", node.egress, *args[2:]])

    def _make_root_qdisc(self, device: str) -> None:
        """htb on the device's egress with a fast default class for unshaped traffic."""
        self._tc(device, "qdisc", "add", "root", "handle", "1:", "htb", "default", f"{_DEFAULT_MINOR:x}")
        fast = ["rate", _FAST_RATE, "ceil", _FAST_RATE, "burst", _FAST_BURST, "cburst", _FAST_BURST]
        self._tc(device, "class", "add", "parent", "1:", "classid", f"1:{_DEFAULT_MINOR:x}", "htb", *fast,
                 "quantum", str(_QUANTUM_BYTES))  # fmt: skip

    def _add_class(self, src: str, dst: str, bps: float) -> None:
        """One htb class for src -> dst and the u32 filter that sends dst's packets into it."""
        minor = _FIRST_MINOR + self.devices.index(dst)
        self._tc(src, "class", "add", "parent", "1:", "classid", f"1:{minor:x}", "htb", *_rate_args(bps))
        match = ["match", "ip", "dst", f"{self.address(dst)}/32"]
        if src == self.source:  # on the bridge: leave the control address's traffic unshaped
            match = ["match", "ip", "src", f"{self.address(src)}/32", *match]
        self._tc(src, "filter", "add", "parent", "1:", "protocol", "ip", "prio", "1", "u32", *match,
                 "flowid", f"1:{minor:x}")  # fmt: skip
        self._classes[(src, dst)] = minor

    # -- queries and changes -------------------------------------------------------------------

    def _node(self, device: str) -> _Node:
        if not self._started or self._closed:
            raise RuntimeError("the NetnsCluster is not running (use it inside its with block)")
        if device not in self._nodes:
            raise ValueError(f"unknown device {device!r} (devices: {', '.join(self.devices)})")
        return self._nodes[device]

    def address(self, device: str) -> str:
        """The device's IP address (the source's is on the bridge in the root namespace)."""
        return self._node(device).address

    @property
    def control_address(self) -> str:
        """A second root-namespace address whose traffic is never shaped: bind the coordinator here."""
        self._node(self.source)
        return self._ip(254)

    def namespace(self, device: str) -> str | None:
        """The device's namespace name; None for the source (root namespace)."""
        return self._node(device).namespace

    def exec_prefix(self, device: str) -> list[str]:
        """Command prefix that runs a program as `device` (empty for the source)."""
        namespace = self._node(device).namespace
        return [] if namespace is None else ["ip", "netns", "exec", namespace]

    def set_rate(self, src: str, dst: str, bps: float) -> None:
        """Change (or start) the shaping of src -> dst, e.g. to follow a bandwidth trace."""
        for device in (src, dst):
            self._node(device)
        if src == dst:
            raise ValueError("a device needs no link to itself")
        if (src, dst) not in self._classes:
            self._add_class(src, dst, bps)
        else:
            minor = self._classes[(src, dst)]
            self._tc(src, "class", "change", "parent", "1:", "classid", f"1:{minor:x}", "htb", *_rate_args(bps))
        self.rates[(src, dst)] = float(bps)

    def link_down(self, device: str) -> None:
        """Cut the device off (its bridge port goes down), for fault tests."""
        self._set_port(device, "down")

    def link_up(self, device: str, timeout_s: float = 5.0) -> None:
        """Reconnect a device cut off by `link_down`, and wait until its bridge port forwards again
        (the port comes back through the kernel's link and bridge states, not at once: a connection
        attempted right after `ip link set up` was seen to fail)."""
        self._set_port(device, "up")
        node = self._node(device)
        sys_dir = Path("/sys/class/net") / str(node.host_end)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _read(sys_dir / "operstate") == "up" and _read(sys_dir / "brport" / "state") in ("3", None):
                return  # 3: BR_STATE_FORWARDING (no brport folder: not a bridge port, nothing to wait for)
            time.sleep(0.02)

    def _set_port(self, device: str, state: str) -> None:
        node = self._node(device)
        if node.host_end is None:
            raise ValueError(f"{device!r} is the source: it lives in the root namespace and has no port to cut")
        _run(["ip", "link", "set", "dev", node.host_end, state])

    def __repr__(self) -> str:
        where = f"{SUBNET_PREFIX}.{self._subnet}.0/24" if self._subnet is not None else "not started"
        return f"NetnsCluster({self.devices}, source={self.source!r}, {where})"


def _read(path: Path) -> str | None:
    """A sysfs file's content, stripped, or None when it does not exist."""
    try:
        return path.read_text().strip()
    except OSError:
        return None
