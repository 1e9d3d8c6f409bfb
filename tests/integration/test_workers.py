"""
server.workers: several processes behind one listening socket.
"""

from __future__ import annotations

import os
import signal

from tests.integration.base import IntegrationTestCase
from tests.integration.broker import free_port
from tests.integration.polling import wait_until


class WorkersTests(IntegrationTestCase):
    """
    A supervisor with two workers, seen from clients and operators.
    """

    timeout = 180

    async def test_workers_shareSocketAndAggregate(self) -> None:
        """
        Clients are served by both workers; /health and /metrics cover every
        worker; a worker that dies is restarted; SIGHUP reloads every
        worker; SIGTERM stops everything with exit 0.
        """
        port = free_port()
        config = {
            "sources": [{"type": "counter", "id": "tick", "interval_ms": 20, "min": 0}],
            "server": {"listen": f"tcp:{port}:interface=127.0.0.1", "workers": 2},
        }
        kiwi = await self.start_kiwi(config)
        self.assertEqual(kiwi.port, port)

        async def both_workers() -> dict:
            health = await kiwi.health()
            return health if len(health.get("workers", {})) == 2 else {}

        import time

        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        deadline = time.monotonic() + 30
        while not await both_workers():
            self.assertLess(time.monotonic(), deadline, kiwi.output)
            await deferLater(reactor, 0.1, lambda: None)

        clients = [await self.connect(kiwi) for _ in range(8)]
        for client in clients:
            await client.subscribe("tick")
        for client in clients:
            await client.wait_for(lambda c=client: len(c.results("tick")) >= 2, 10)
        health = await kiwi.health()
        self.assertEqual(health["connections"], 8)
        per_worker = [w["connections"] for w in health["workers"].values()]
        self.assertEqual(sum(per_worker), 8)

        _, _, body = await kiwi.get("/metrics")
        text = body.decode()
        self.assertIn('kiwi_connections{worker="0"}', text)
        self.assertIn('kiwi_connections{worker="1"}', text)

        # Kill one worker: the supervisor starts a new one.
        pids = [int(p) for p in os.popen(f"pgrep -f 'worker 0:'").read().split()]
        self.assertTrue(pids)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        await kiwi.wait_output("worker 0 exited")
        await kiwi.wait_output("started worker 0", after=kiwi.output.index("worker 0 exited"))

        # Once the new worker serves, SIGHUP reaches both workers.
        deadline = time.monotonic() + 30
        while True:
            health = await both_workers()
            if health and all(w.get("status") == "ok" for w in health["workers"].values()):
                break
            self.assertLess(time.monotonic(), deadline, kiwi.output)
            await deferLater(reactor, 0.1, lambda: None)
        mark = len(kiwi.output)
        kiwi.signal("HUP")
        await wait_until(
            lambda: kiwi.output[mark:].count("config applied") >= 2, 30, what=lambda: f"two reloads:\n{kiwi.output}"
        )
