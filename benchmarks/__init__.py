"""
Benchmarks that print figures; run each as C{python -m benchmarks.<name>}.
"""
