"""
Kiwi's benchmarks (issue 7): a C load client, two baselines and the runner
behind C{make bench}. Never part of C{make test}; see C{docs/performance.md}.
"""
