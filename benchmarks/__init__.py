"""
Benchmarks: each module starts what it needs, prints its figures and says
whether they meet the targets. Run them from the repository root with the
venv, e.g. C{.venv/bin/python -m benchmarks.slow_clients}.
"""
