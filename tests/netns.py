"""Worker hosts on one machine: each a network namespace (``ip netns``) with a veth link to a bridge,
and its own hostname (a UTS namespace), as separate machines on one LAN.

The root namespace is the server machine at ``Network.gateway``: PostgreSQL listens there, and
``Forward`` relays a port there to a server that listens on loopback only (this machine's
RabbitMQ), so a host's traffic crosses its link either way. ``Network.kill`` takes a host down at
once: SIGKILL to every process in its namespace, then its link unplugged.

Needs root and iproute2; ``available()`` says why not, for a clear failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, util-linux)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Host:
    name: str  # its hostname, which its workers name themselves after
    namespace: str
    address: str
    link: str  # the veth end on the bridge: unplugging it cuts the host off

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on this host: in its network namespace, under its own hostname."""
        return [
            "ip", "netns", "exec", self.namespace,
            "unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv,
        ]  # fmt: skip

    def start(self, argv: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(self.command(argv), env=env, stdout=out, stderr=subprocess.STDOUT)

    def pids(self) -> list[int]:
        listed = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True, timeout=30, check=False
        )
        return [int(pid) for pid in listed.stdout.split()]


class Network:
    """A bridge at ``gateway`` and ``hosts`` hosts on it, removed again by ``close``."""

    def __init__(self, hosts: int) -> None:
        self.tag = uuid.uuid4().hex[:4]  # interface names are at most 15 characters
        subnet = random.Random().randrange(16, 240)  # runs side by side get subnets of their own
        self.prefix = f"10.213.{subnet}"
        self.gateway = f"{self.prefix}.1"
        self.subnet = f"{self.prefix}.0/24"
        self.bridge = f"gb{self.tag}"
        self.hosts: list[Host] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for n in range(1, hosts + 1):
                self.hosts.append(self._add_host(n))
        except BaseException:
            self.close()
            raise

    def _add_host(self, n: int) -> Host:
        host = Host(f"host{n}", f"grpod-{self.tag}-{n}", f"{self.prefix}.{10 + n}", f"gv{self.tag}{n}")
        peer = f"gp{self.tag}{n}"
        _ip("netns", "add", host.namespace)
        _ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
        _ip("link", "set", host.link, "master", self.bridge, "up")
        _ip("link", "set", peer, "netns", host.namespace)
        _ip("-n", host.namespace, "link", "set", peer, "name", "eth0")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        return host

    def kill(self, host: Host, timeout: float = 30) -> int:
        """SIGKILL every process on ``host``, then unplug its link; how many processes it had."""
        pids = host.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while host.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        _ip("link", "set", host.link, "down")
        return len(pids)

    def close(self) -> None:
        for host in self.hosts:
            for pid in host.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", host.link)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.namespace)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)


@contextlib.contextmanager
def network(hosts: int) -> Iterator[Network]:
    built = Network(hosts)
    try:
        yield built
    finally:
        built.close()


class Forward:
    """Relays ``listen`` (host, port) to ``target``, in a thread; counts the bytes each client
    address sent, so a test can tell that traffic came from every host."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self.sent: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._relay, *self.listen))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            relays = asyncio.all_tasks(self._loop)
            for relay in relays:
                relay.cancel()
            self._loop.run_until_complete(asyncio.gather(*relays, return_exceptions=True))
            self._loop.close()

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        client = str(client_out.get_extra_info("peername")[0])
        try:
            server_in, server_out = await asyncio.open_connection(*self.target)
        except OSError:
            client_out.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # the relay stops
            await asyncio.gather(self._pipe(client_in, server_out, client), self._pipe(server_in, client_out, None))

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, client: str | None) -> None:
        # Either side closing closes the other: a killed host's connection ends at the server too.
        try:
            while data := await source.read(65536):
                if client is not None:
                    self.sent[client] += len(data)
                sink.write(data)
                await sink.drain()
        except OSError:
            pass  # reset by the other end: this connection's relay ends
        finally:
            sink.close()

    def __enter__(self) -> Forward:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"could not listen on {self.listen}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def log_tail(log: Path, lines: int = 40) -> str:
    """The end of a host process's log, for a failure message."""
    try:
        return "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""
