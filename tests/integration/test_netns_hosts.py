"""The test hosts of issue 9 (tests/integration/hosts.py): three network namespaces on a bridge reach the root
namespace and each other over TCP, a cut link makes a host unreachable while its processes run on, and nothing is
left behind, also when the test body fails."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.hosts import NetnsHosts, namespaces

pytestmark = [pytest.mark.integration, pytest.mark.hosts]

SERVE = "import http.server,sys; http.server.HTTPServer((sys.argv[1], 8000), http.server.SimpleHTTPRequestHandler)" \
        ".serve_forever()"


def _wait_http(url: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def test_hosts_reach_the_control_plane_and_each_other_and_a_cut_link_isolates_one(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hi")
    with NetnsHosts(3) as hosts:
        a, b, c = hosts.hosts
        assert {a.name, b.name, c.name} <= set(namespaces())
        # a server on host a, bound to a's address: reached from the root namespace and from host b
        hosts.spawn(a, [sys.executable, "-c", SERVE, a.address], tmp_path / "a.log", cwd=tmp_path)
        _wait_http(f"http://{a.address}:8000/hello.txt")
        assert httpx.get(f"http://{a.address}:8000/hello.txt", timeout=3).text == "hi"
        probe = hosts.spawn(b, [sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen("
                                f"'http://{a.address}:8000/hello.txt', timeout=5).read().decode())"],
                            tmp_path / "b.log")
        assert probe.wait(timeout=30) == 0 and (tmp_path / "b.log").read_text().strip().endswith("hi")
        # a server in the root namespace on the bridge address (where the control plane listens) is reached from c
        root = socket.socket()
        root.bind((hosts.gateway, 0))
        root.listen()
        port = root.getsockname()[1]
        dial = hosts.spawn(c, [sys.executable, "-c", f"import socket; socket.create_connection(('{hosts.gateway}', "
                                                     f"{port}), timeout=5).close()"], tmp_path / "c.log")
        assert dial.wait(timeout=30) == 0
        root.close()
        # the link of host a fails: unreachable, though its server still runs
        hosts.cut(a)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{a.address}:8000/hello.txt", timeout=2)
        hosts.mend(a)
        _wait_http(f"http://{a.address}:8000/hello.txt")
    assert not {a.name, b.name, c.name} & set(namespaces())


def test_namespaces_are_removed_when_the_test_body_fails() -> None:
    made: list[str] = []
    with pytest.raises(RuntimeError, match="body failed"), NetnsHosts(2) as hosts:
        made = [h.name for h in hosts.hosts]
        assert set(made) <= set(namespaces())
        raise RuntimeError("body failed")
    assert made and not set(made) & set(namespaces())
