"""
C{server.workers}: several worker processes sharing one listening socket.

The twistd process becomes a supervisor: it binds the socket itself, starts
C{N} workers (each a C{twistd -n kiwi} with its own sources and Kafka
consumers) that adopt the socket, restarts a worker that dies, forwards
SIGHUP to every worker, and on SIGTERM stops them all. The kernel spreads
new connections over the workers.

Each worker also serves its HTTP endpoints on a private loopback port,
written to C{worker-<i>.port} in a run directory; the worker that answers
C{/metrics} or C{/health} on the shared port asks its siblings there, so
both cover every worker (metrics carry a C{worker} label).

The only module that looks inside Twisted's endpoint objects (to bind the
same address as the strports description names).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from kiwi.logs import logger

RESTART_DELAY_S = 1.0

LISTEN_FD = 3
"""
The file descriptor number at which workers find the shared socket.
"""


def worker_count(value: int | str) -> int:
    """
    C{server.workers} as a number (C{auto}: one per core).
    """
    if value == "auto":
        return os.cpu_count() or 1
    return int(value)


def _endpoint_address(reactor: Any, description: str) -> tuple[int, str, int, int, bool]:
    """
    (family, interface, port, backlog, tls) of a tcp or ssl description.

    @raise ValueError: for any other kind of endpoint.
    """
    endpoint = serverFromString(reactor, description)
    if isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint, SSL4ServerEndpoint)):
        interface = endpoint._interface
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        return family, interface, endpoint._port, endpoint._backlog, isinstance(endpoint, SSL4ServerEndpoint)
    raise ValueError(f"server.workers > 1 needs a tcp: or ssl: endpoint, not {description!r}")


def check_endpoint(reactor: Any, description: str) -> str | None:
    """
    Why C{description} cannot be shared by workers, or C{None}.
    """
    try:
        _endpoint_address(reactor, description)
    except ValueError as e:
        return str(e)
    return None


def bind_shared_socket(reactor: Any, description: str) -> socket.socket:
    """
    Bind and listen on the address C{description} names, for workers to
    adopt.
    """
    family, interface, port, backlog, _ = _endpoint_address(reactor, description)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A worker's side of the shared socket: adopts an inherited listening
    file descriptor. TLS, if any, is added by the listener on top.
    """

    def __init__(self, reactor: Any, description: str, fd: int) -> None:
        self._reactor = reactor
        self._description = description
        self._fd = fd

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        family = _endpoint_address(self._reactor, self._description)[0]
        port = self._reactor.adoptStreamPort(self._fd, family, factory)
        # The port holds its own duplicate of the descriptor.
        os.close(self._fd)
        return succeed(port)


class PortFile(Service):
    """
    In a worker: serve the site on a private loopback port as well, and
    write that port to C{worker-<index>.port} in the run directory.
    """

    log = logger()
    name = "worker-port"

    def __init__(self, reactor: Any, site: Any, directory: str, index: int) -> None:
        self._reactor = reactor
        self._site = site
        self._path = os.path.join(directory, f"worker-{index}.port")
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self._port = self._reactor.listenTCP(0, self._site, interface="127.0.0.1")
        assert self._port is not None
        temporary = self._path + ".tmp"
        with open(temporary, "w") as f:
            f.write(str(cast(IPv4Address, self._port.getHost()).port))
        os.replace(temporary, self._path)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        try:
            os.unlink(self._path)
        except OSError:
            pass
        if self._port is None:
            return succeed(None)
        port, self._port = self._port, None
        return Deferred.fromCoroutine(_await(port.stopListening()))


async def _await(result: object) -> None:
    if isinstance(result, Deferred):
        await result


def sibling_ports(directory: str, own_index: int) -> dict[int, int]:
    """
    The private HTTP ports of the other workers, by index.
    """
    ports: dict[int, int] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return ports
    for name in names:
        if not (name.startswith("worker-") and name.endswith(".port")):
            continue
        try:
            index = int(name[len("worker-") : -len(".port")])
            with open(os.path.join(directory, name)) as f:
                port = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if index != own_index:
            ports[index] = port
    return ports


class _WorkerProcess(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.transport: Any = None

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.worker_ended(self, reason)


class Supervisor(Service):
    """
    The twistd process when C{server.workers} > 1.
    """

    log = logger()
    name = "supervisor"

    def __init__(
        self,
        reactor: Any,
        config_path: str,
        description: str,
        workers: int,
        log_level: str,
        shutdown_timeout_s: float,
    ) -> None:
        self._reactor = reactor
        self._config_path = os.path.abspath(config_path)
        self._description = description
        self._count = workers
        self._log_level = log_level
        self.shutdown_timeout_s = shutdown_timeout_s
        self._socket: socket.socket | None = None
        self._directory = ""
        self._workers: dict[int, _WorkerProcess] = {}
        self._stopping = False
        self._exited: dict[int, Deferred[None]] = {}

    def startService(self) -> None:
        super().startService()
        self._socket = bind_shared_socket(self._reactor, self._description)
        host, port = self._socket.getsockname()[:2]
        self._directory = tempfile.mkdtemp(prefix="kiwi-workers-")
        self.log.info(
            "Kiwi listening on {host}:{port} ({description}, {count} workers)",
            host=host,
            port=port,
            description=self._description,
            count=self._count,
        )
        for index in range(self._count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if self._stopping or self._socket is None:
            return
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        args = [
            twistd if os.path.exists(twistd) else "twistd",
            "-n",
            "--pidfile=",
            "kiwi",
            "--config",
            self._config_path,
            "--log-level",
            self._log_level,
            "--worker",
            f"{index}:{self._directory}",
        ]
        process = _WorkerProcess(self, index)
        self._workers[index] = process
        self._exited[index] = Deferred()
        self._reactor.spawnProcess(
            process,
            args[0],
            args,
            env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2, LISTEN_FD: self._socket.fileno()},
        )
        self.log.info("started worker {index}", index=index)

    def worker_ended(self, process: _WorkerProcess, reason: Failure) -> None:
        index = process.index
        # A worker that was killed could not remove its port file.
        try:
            os.unlink(os.path.join(self._directory, f"worker-{index}.port"))
        except OSError:
            pass
        exited = self._exited.pop(index, None)
        if self._workers.get(index) is process:
            del self._workers[index]
        if exited is not None:
            exited.callback(None)
        if self._stopping:
            return
        self.log.error(
            "worker {index} exited ({reason}); restarting it in {delay}s",
            index=index,
            reason=reason.getErrorMessage(),
            delay=RESTART_DELAY_S,
        )
        self._reactor.callLater(RESTART_DELAY_S, self._spawn, index)

    def signal_workers(self, signum: int) -> None:
        """
        Send C{signum} to every worker (SIGHUP: reload).
        """
        for process in list(self._workers.values()):
            try:
                process.transport.signalProcess(signal.Signals(signum).name[3:])
            except Exception:
                pass

    def reload(self) -> None:
        """
        Ask every running worker to reload its configuration. A worker
        still starting (no port file yet) is skipped: it reads the file as
        it is now anyway, and a SIGHUP before its handlers exist would kill
        it.
        """
        ready = sibling_ports(self._directory, own_index=-1)
        self.log.info("asking {count} workers to reload", count=len(ready))
        for index, process in list(self._workers.items()):
            if index in ready:
                process.transport.signalProcess("HUP")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        waiting = list(self._exited.values())
        self.signal_workers(signal.SIGTERM)
        if waiting:
            done = DeferredList(waiting)
            done.addTimeout(self.shutdown_timeout_s, self._reactor)
            try:
                await done
            except Exception:
                self.log.error("workers did not stop in time; killing them")
                self.signal_workers(signal.SIGKILL)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        shutil.rmtree(self._directory, ignore_errors=True)


def merge_expositions(texts: dict[str, str]) -> bytes:
    """
    One Prometheus exposition from several workers' own, each sample keeping
    (or gaining) a C{worker} label.
    """
    from prometheus_client.core import Metric
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    for worker, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type)
                families[family.name] = merged
            for sample in family.samples:
                labels = dict(sample.labels)
                labels.setdefault("worker", worker)
                merged.add_sample(sample.name, labels, sample.value, sample.timestamp)

    class _Fixed:
        def collect(self) -> list[Metric]:
            return list(families.values())

    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    return generate_latest(registry)


def merge_health(bodies: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """
    One C{/health} body from every worker's: totals, plus each worker's own.
    """
    workers = {worker: body if body is not None else {"status": "unreachable"} for worker, body in bodies.items()}
    reachable = [body for body in bodies.values() if body is not None]
    return {
        "status": "ok" if len(reachable) == len(bodies) else "degraded",
        "connections": sum(body.get("connections", 0) for body in reachable),
        "workers": workers,
    }


def json_or_none(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class AcrossWorkers:
    """
    In a worker: answers a C{GET} for every worker at once, by asking the
    siblings' private ports (with C{?local=1}) and merging their answers
    with its own. A request with C{?local=1} gets only this worker's.
    """

    TIMEOUT_S = 2.0

    def __init__(self, reactor: Any, directory: str, index: int) -> None:
        self._reactor = reactor
        self._directory = directory
        self.index = index

    async def fetch(self, path: str) -> dict[str, bytes | None]:
        """
        C{path}'s body from every sibling, by worker index (C{None} when one
        did not answer).
        """
        from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody

        class QuietPool(HTTPConnectionPool):
            class _factory(_HTTP11ClientFactory):
                noisy = False

        agent = Agent(self._reactor, connectTimeout=self.TIMEOUT_S, pool=QuietPool(self._reactor, persistent=False))
        ports = sibling_ports(self._directory, self.index)

        async def one(port: int) -> bytes | None:
            try:
                request = agent.request(b"GET", f"http://127.0.0.1:{port}{path}?local=1".encode())
                request.addTimeout(self.TIMEOUT_S, self._reactor)
                response = await request
                body: bytes = await readBody(response)
                return body
            except Exception:
                return None

        results: dict[str, bytes | None] = {}
        for index, port in sorted(ports.items()):
            results[str(index)] = await one(port)
        return results
