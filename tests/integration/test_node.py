"""
The JavaScript client's own tests (C{clients/js/test/}), run with Node's
test runner from the trial suite, so that C{make test} covers them.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class NodeTestRunnerTests(unittest.TestCase):
    """
    C{node --test clients/js/test/} passes.
    """

    timeout = 300

    async def test_jsClient_nodeTestsPass(self) -> None:
        """
        Node (20 or later) runs the JavaScript client's unit tests and every
        one of them passes.
        """
        node = shutil.which("node") or shutil.which("nodejs")
        self.assertIsNotNone(node, "Node.js 20+ is needed to test clients/js (apt-get install nodejs)")
        assert node is not None
        result = await deferToThread(
            subprocess.run,
            [node, "--test", os.path.join("clients", "js", "test") + os.sep],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertIn("# fail 0", output)
        self.assertRegex(output, r"# pass [1-9]")
