"""
The built package carries the twistd plugin, so that C{twistd kiwi} works
from a normal (non-editable) install too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WheelTests(TestCase):
    """
    What a wheel of Kiwi contains.
    """

    def test_wheel_hasTwistdPlugin(self) -> None:
        """
        The wheel has C{twisted/plugins/kiwi_plugin.py}, the WIT files and
        the dashboard's static files, and no C{__init__.py} under
        C{twisted/} that would shadow Twisted's own package.
        """
        out = self.mktemp()
        os.makedirs(out)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, ROOT],
            check=True,
            capture_output=True,
            timeout=300,
        )
        [wheel] = [name for name in os.listdir(out) if name.endswith(".whl")]
        names = set(zipfile.ZipFile(os.path.join(out, wheel)).namelist())
        self.assertIn("twisted/plugins/kiwi_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertTrue(any(name.startswith("kiwi/plugins/wit/") and name.endswith(".wit") for name in names))
        self.assertTrue(any(name.startswith("kiwi/static/") for name in names))
        self.assertIn("kiwi/tap.py", names)
