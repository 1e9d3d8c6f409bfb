"""
Shared set-up for integration tests: a Kiwi process per test, clients that
are closed after it, and a broker address.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from kiwi.client import KiwiClient
from tests.integration import broker
from tests.integration.kiwiproc import KiwiProcess
from tests.integration.wsclient import Client


class IntegrationTestCase(unittest.TestCase):
    """
    Starts what a test asks for and cleans it all up afterwards: clients
    first, then Kiwi (whose exit must be clean).
    """

    timeout = 120

    def setUp(self) -> None:
        self._clients: list[Client] = []
        self._kiwi_clients: list[KiwiClient] = []
        self._kiwis: list[KiwiProcess] = []

    @property
    def bootstrap(self) -> str:
        return broker.bootstrap_servers()

    async def start_kiwi(
        self, config: dict[str, Any] | str, log_level: str = "info", env: dict[str, str] | None = None
    ) -> KiwiProcess:
        """
        Start Kiwi with C{config} (and C{env} added to its environment) and
        stop it when the test ends.
        """
        kiwi = KiwiProcess(config, log_level=log_level, env=env)
        self._kiwis.append(kiwi)
        self.addCleanup(self._stop_kiwi, kiwi)
        await kiwi.start()
        return kiwi

    async def _stop_kiwi(self, kiwi: KiwiProcess) -> None:
        for client in self._clients:
            await client.close()
        self._clients = []
        for kiwi_client in self._kiwi_clients:
            await kiwi_client.close()
        self._kiwi_clients = []
        code = await kiwi.stop()
        if code not in (0, None):
            raise AssertionError(f"Kiwi exited with {code}:\n{kiwi.output}")
        if "Traceback" in kiwi.output:
            raise AssertionError(f"Kiwi logged a traceback:\n{kiwi.output}")

    async def connect(self, kiwi: KiwiProcess, path: str = "/", **options: Any) -> Client:
        """
        A client connected to C{kiwi}, closed when the test ends; see
        L{Client.connect} for C{options} (headers, TLS).
        """
        assert kiwi.port is not None
        client = await Client.connect(kiwi.port, path, **options)
        self._clients.append(client)
        return client

    async def kiwi_client(self, port: int, connect: bool = True, **options: Any) -> KiwiClient:
        """
        A L{kiwi.client.KiwiClient} for C{ws://127.0.0.1:port/} (connected
        unless C{connect} is false), closed when the test ends.
        """
        options.setdefault("min_delay", 0.2)
        options.setdefault("max_delay", 2.0)
        client = KiwiClient(f"ws://127.0.0.1:{port}/", **options)
        self._kiwi_clients.append(client)
        self.addCleanup(client.close)
        if connect:
            await client.connect()
        return client

    def kafka_config(self, *topics: str, **kafka: Any) -> dict[str, Any]:
        """
        A configuration with one Kafka source per topic (id = topic).
        """
        settings: dict[str, Any] = {"bootstrap_servers": [self.bootstrap]}
        settings.update(kafka)
        return {
            "sources": [{"type": "kafka", "topic": topic} for topic in topics],
            "kafka": settings,
        }

    async def create_topic(self, partitions: int = 1) -> str:
        topic = broker.unique_topic()
        await deferToThread(broker.create_topic, self.bootstrap, topic, partitions)
        return topic

    async def produce(self, topic: str, records: list[tuple[bytes | None, bytes | None, int | None]]) -> None:
        await deferToThread(broker.produce, self.bootstrap, topic, records)
