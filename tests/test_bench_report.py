"""
Tests for L{benchmarks.report}: how the workers target is judged.
"""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from benchmarks import report


def _workers_run(workers: int, rep: int, frames_per_s: float, client_util: float) -> dict[str, Any]:
    return {
        "scenario": "workers",
        "impl": "kiwi",
        "workers": workers,
        "rep": rep,
        "frames_per_s": frames_per_s,
        "loss": 0,
        "cpu": {"client_util": client_util},
    }


def _verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = report.summarize(runs)
    (target,) = [t for t in report.targets(summary, runs) if t["target"].startswith("workers")]
    return target


class WorkersTargetTests(unittest.SynchronousTestCase):
    """
    The workers target is met, missed, or not conclusive when the load
    client was already busy with one worker.
    """

    def test_met(self) -> None:
        """
        Two workers delivering 1.5 times as much meet the target.
        """
        target = _verdict([_workers_run(1, 1, 100.0, 0.1), _workers_run(2, 1, 160.0, 0.2)])
        self.assertIs(target["met"], True)

    def test_missed_idleClient(self) -> None:
        """
        Less than 1.5 times with an idle load client is a miss.
        """
        target = _verdict([_workers_run(1, 1, 100.0, 0.1), _workers_run(2, 1, 110.0, 0.1)])
        self.assertIs(target["met"], False)

    def test_busyClient_notConclusive(self) -> None:
        """
        Less than 1.5 times while the load client used more than half a
        core with one worker is reported as not conclusive, saying why.
        """
        target = _verdict([_workers_run(1, 1, 100.0, 0.74), _workers_run(2, 1, 75.0, 0.6)])
        self.assertIsNone(target["met"])
        self.assertEqual(target["measured_text"], "0.75x, load client 74% busy")
