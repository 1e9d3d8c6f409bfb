"""
Writing straight to a TCP socket when Twisted has nothing buffered for it.

Twisted's C{transport.write} always buffers, registers the socket for
writability and writes on a later reactor iteration: per client and per
turn that is two C{epoll_ctl} calls and a second pass over the connection.
When nothing is waiting in the transport, the kernel can usually take the
data at once, as asyncio's transports do.

This is the only module that uses Twisted internals (the buffer attributes
of L{twisted.internet.abstract.FileDescriptor} and the transport's socket).
Anything it does not recognise, TLS among them, goes through the ordinary
C{transport.write}; so does whatever the kernel does not take (a partial
send, C{EAGAIN}) and every error (a reset peer is then noticed by Twisted
as usual). C{server.direct_write: false} turns it off.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import abstract

_RETRY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR}


def can_write_directly(transport: Any) -> bool:
    """
    Whether C{transport} is a plain TCP transport with an empty buffer.
    """
    if not isinstance(transport, abstract.FileDescriptor):
        return False
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket):
        return False
    return bool(
        transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_writeDisconnected", False)
        and not transport.dataBuffer
        and not getattr(transport, "_tempDataBuffer", True)
    )


def write(transport: Any, data: bytes) -> int:
    """
    Write C{data}: as much as the kernel takes at once when possible, the
    rest through C{transport.write}.

    @return: How many bytes went straight to the socket.
    """
    if not can_write_directly(transport):
        transport.write(data)
        return 0
    try:
        sent: int = transport.socket.send(data)
    except OSError as e:
        if e.errno not in _RETRY:
            # Let Twisted meet the error in its own write path and close
            # the connection the usual way.
            transport.write(data)
            return 0
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])
    return sent
