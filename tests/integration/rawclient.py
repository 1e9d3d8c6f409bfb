"""
A WebSocket client that completes the handshake, sends commands, and then
never reads: the worst kind of slow client.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
import time


class StalledClient:
    """
    A blocking socket with a tiny receive buffer. Use from a thread.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET / HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during handshake")
            response += chunk
        if not response.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(response.decode(errors="replace"))

    def send(self, command: dict[str, object]) -> None:
        """
        Send one masked text frame.
        """
        payload = json.dumps(command).encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)

    def wait_dropped(self, timeout: float) -> bool:
        """
        Start reading at last: discard everything until the server closes
        or resets the connection. Return whether it did so within
        C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                if not self.sock.recv(65536):
                    return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def handshake_request(port: int, path: str = "/", headers: dict[str, str] | None = None) -> bytes:
    """
    The bytes of a WebSocket opening handshake for C{path}.
    """
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def exchange(
    port: int, request: bytes, tls_ca: str | None = None, timeout: float = 10.0, source: str = "127.0.0.1"
) -> tuple[str, dict[str, str], bytes]:
    """
    Send C{request} and read the response head and body (by
    Content-Length, or until the server closes). Blocking: use from a
    thread.

    @param tls_ca: Connect with TLS, trusting this CA file.
    @param source: The loopback address to connect from.
    @return: The status line, the headers (lower-case names) and the body.
    """
    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    try:
        if tls_ca is not None:
            context = ssl.create_default_context(cafile=tls_ca)
            # As browsers do: offer HTTP/2 and HTTP/1.1 over ALPN.
            context.set_alpn_protocols(["h2", "http/1.1"])
            sock = context.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed before the response head: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if lines[0].split(" ")[1:2] == ["101"]:
            return lines[0], headers, body
        length = int(headers.get("content-length", "-1"))
        while length < 0 or len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
        return lines[0], headers, body
    finally:
        sock.close()


def wait_closed(port: int, request: bytes | None, timeout: float = 30.0) -> tuple[float, bytes]:
    """
    Connect, send C{request} (if any) and wait until the server closes the
    connection. Blocking: use from a thread.

    @return: How long that took (seconds) and what the server sent.
    """
    import time

    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    received = b""
    try:
        if request:
            sock.sendall(request)
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    return time.monotonic() - started, received


def open_websocket(port: int, source: str, timeout: float = 10.0) -> tuple[str, socket.socket]:
    """
    Complete a WebSocket handshake from C{source} and keep the connection
    open (the caller closes the socket). Blocking: use from a thread.

    @return: The response's status line and the socket.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    sock.sendall(handshake_request(port))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1"), sock
