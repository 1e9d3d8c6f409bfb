"""
Kiwi: a WebSocket gateway between real-time event sources and clients.
"""

__version__ = "0.1.0"
