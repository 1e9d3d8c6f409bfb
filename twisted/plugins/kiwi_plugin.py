"""
Registers C{twistd kiwi}. Imports nothing heavy: twistd loads every plugin
just to list them.
"""

from twisted.application.service import ServiceMaker

kiwi = ServiceMaker(
    "Kiwi",
    "kiwi.tap",
    "WebSocket gateway for Kafka topics and other event sources.",
    "kiwi",
)
