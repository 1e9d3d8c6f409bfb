"""
Kiwi's tests. Unit tests sit here; tests against real processes live in
L{tests.integration}.
"""
