"""
Everything Kiwi does with Twisted's and Autobahn's internals, in one place.

Writing straight to a TCP socket when Twisted has nothing buffered for it:
Twisted's C{transport.write} always buffers, registers the socket for
writability and writes on a later reactor iteration: per client and per
turn that is two C{epoll_ctl} calls and a second pass over the connection.
When nothing is waiting in the transport, the kernel can usually take the
data at once, as asyncio's transports do. This uses the buffer attributes
of L{twisted.internet.abstract.FileDescriptor} and the transport's socket.
Anything it does not recognise, TLS among them, goes through the ordinary
C{transport.write}; so does whatever the kernel does not take (a partial
send, C{EAGAIN}) and every error (a reset peer is then noticed by Twisted
as usual). C{server.direct_write: false} turns it off.

Sharing framed messages between connections: Autobahn's
C{prepareMessage} frames a message once; its bytes (C{payloadHybi}) can be
written to any connection that neither compresses (C{_perMessageCompress})
nor has Autobahn's own queued writes pending (C{send_queue}), without
C{sendPreparedMessage}'s per-call work (it formats a debug line each time).
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


def framed_bytes(prepared: Any) -> bytes:
    """
    The wire bytes of a message from Autobahn's C{prepareMessage}.
    """
    data: bytes = prepared.payloadHybi
    return data


def shares_framed_bytes(protocol: Any) -> bool:
    """
    Whether L{framed_bytes} can be written to C{protocol}'s transport as
    they are: not when the connection compresses, nor while Autobahn has
    writes of its own queued.
    """
    return getattr(protocol, "_perMessageCompress", None) is None and not getattr(protocol, "send_queue", None)
