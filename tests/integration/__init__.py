"""
Integration tests: a real broker, a real C{twistd -n kiwi} process and real
WebSocket clients, all on loopback.
"""
