"""Test hosts on one machine: network namespaces on a Linux bridge (issue 9, nodes on other hosts).

Each host is a namespace with one veth to the bridge `llb<tag>` in the root namespace, an address in a private /24
that only these test namespaces use, loopback up, and a default route to the bridge's address (where the control
plane listens in these tests). Cutting a host's link (`cut`) is `ip link set <its bridge-side veth> down`: its
processes keep running, unreachable, as on a host whose network failed.

`NetnsHosts` removes everything it made on exit, also when the test failed, and removes the leftovers of an earlier
run that was killed before it could (names carry the creating pid). Needs root (CAP_NET_ADMIN) and iproute2.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PREFIX = "llh"  # namespaces llh<pid><letter>-<i>, bridge llb<pid><letter>, bridge-side veths llv<pid><letter>-<i>
_SEQ = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


@dataclass(frozen=True)
class Host:
    name: str  # the namespace
    address: str
    veth: str  # its bridge-side end, in the root namespace


class NetnsHosts:
    """`with NetnsHosts(3) as hosts:` three hosts at 10.231.<subnet>.11.. on a bridge at .1."""

    def __init__(self, count: int, subnet: int = 231) -> None:
        if shutil.which("ip") is None:
            raise RuntimeError("iproute2's `ip` is missing: install the Debian package iproute2")
        if os.geteuid() != 0:
            raise RuntimeError("network-namespace test hosts need root (CAP_NET_ADMIN)")
        # pid + a letter per instance: a veth of the previous instance may still be going away (deletion is async)
        self.tag = f"{os.getpid()}{chr(97 + next(_SEQ) % 26)}"
        self.bridge = f"llb{self.tag}"
        self.gateway = f"10.{subnet}.{(os.getpid() + ord(self.tag[-1])) % 250 + 1}.1"
        self.prefix = self.gateway.rsplit(".", 1)[0]
        self.hosts = [Host(f"{PREFIX}{self.tag}-{i}", f"{self.prefix}.{11 + i}", f"llv{self.tag}-{i}")
                      for i in range(count)]
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> NetnsHosts:
        remove_stale()
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for h in self.hosts:
                _ip("netns", "add", h.name)
                _ip("link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.name)
                _ip("link", "set", h.veth, "master", self.bridge, "up")
                _ip("-n", h.name, "addr", "add", f"{h.address}/24", "dev", "eth0")
                _ip("-n", h.name, "link", "set", "eth0", "up")
                _ip("-n", h.name, "link", "set", "lo", "up")
                _ip("-n", h.name, "route", "add", "default", "via", self.gateway)
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def spawn(self, host: Host, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` inside `host` (its own process group), output to `log`; killed at close."""
        out = log.open("ab")
        p = subprocess.Popen(["ip", "netns", "exec", host.name, *argv], stdout=out, stderr=subprocess.STDOUT,
                             env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)
        self._procs.append(p)
        return p

    def cut(self, host: Host) -> None:
        """The host's network fails: its link to the bridge goes down (its processes keep running)."""
        _ip("link", "set", host.veth, "down")

    def mend(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    def close(self) -> None:
        for p in self._procs:
            _kill_group(p.pid)
        for h in self.hosts:
            _remove_namespace(h.name)
        _ip("link", "del", self.bridge, check=False)


def _kill_group(pgid: int) -> None:
    import signal

    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove_namespace(name: str) -> None:
    """Kill what still runs in the namespace, then delete it (its veth goes with it)."""
    r = _ip("netns", "pids", name, check=False)
    for pid in r.stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", name, check=False)


def remove_stale() -> list[str]:
    """Namespaces and bridges of earlier runs whose creating process is gone."""
    removed = []
    names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    for name in names:
        m = re.fullmatch(rf"{PREFIX}(\d+)[a-z]?-\d+", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _remove_namespace(name)
            removed.append(name)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        m = re.search(r"\d+: (llb(\d+)[a-z]?)[:@]", line)
        if m and not Path(f"/proc/{m.group(2)}").exists():
            _ip("link", "del", m.group(1), check=False)
            removed.append(m.group(1))
    return removed


def namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines()
            if line.startswith(PREFIX)]
