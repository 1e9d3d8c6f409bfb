"""
Kiwi's benchmarks: each module starts what it needs (broker, Kiwi, clients),
prints its figures and says whether they meet the targets. Run them from the
repository root with the venv: C{make bench} (the issue 7 runner with a C load
client and two baselines), C{make bench-flow} (C{benchmarks.slow_clients}),
C{.venv/bin/python -m benchmarks.plugins}. Never part of C{make test}; see
C{docs/performance.md}.
"""
