"""
C{python -m benchmarks [--quick]}: see L{benchmarks.runner}.
"""

import sys

from benchmarks.runner import main

sys.exit(main())
