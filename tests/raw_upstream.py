"""An upstream that answers with exactly the bytes a test scripts: what no well-behaved server would send.

The demo upstream runs under uvicorn, which refuses to send a status of 999, a header with a control
character, or an answer cut before its status line. This one writes raw bytes on a real socket, in a
thread, and records every request it read, so tests can count what reached "the model server".
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

# One answer: the bytes to write, in pieces (a pause of `piece_delay` between them); None closes the
# connection without a byte, as a crashing server would.
Script = Callable[[bytes], list[bytes] | None]


# Every answer closes its connection, so each request arrives on a fresh one (no pooled connection to reuse).
CLOSE = "Connection: close"


def http_response(status: int, body: bytes, *headers: str, content_type: str = "application/json") -> list[bytes]:
    head = [f"HTTP/1.1 {status} Whatever", f"Content-Type: {content_type}", f"Content-Length: {len(body)}", CLOSE]
    head += headers
    return [("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body]


def sse_response(*events: bytes, headers: tuple[str, ...] = ()) -> list[bytes]:
    head = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Transfer-Encoding: chunked", CLOSE, *headers]
    pieces = [("\r\n".join(head) + "\r\n\r\n").encode("latin-1")]
    pieces += [b"%x\r\n%s\r\n" % (len(event), event) for event in events]
    return [*pieces, b"0\r\n\r\n"]


class RawUpstream:
    def __init__(self, script: Script, piece_delay: float = 0.0) -> None:
        self.script = script
        self.piece_delay = piece_delay
        self.requests: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer_once, args=(connection,), daemon=True).start()

    def _answer_once(self, connection: socket.socket) -> None:
        with connection, suppress(OSError):
            connection.settimeout(10)
            request = _read_request(connection)
            if not request:
                return
            self.requests.append(request)
            for index, piece in enumerate(self.script(request) or ()):
                if index and self.piece_delay:
                    time.sleep(self.piece_delay)
                connection.sendall(piece)

    def chat_requests(self) -> list[bytes]:
        return [request for request in self.requests if request.startswith(b"POST /v1/chat/completions")]

    @contextmanager
    def running(self) -> Iterator[RawUpstream]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stopping.set()
            self._thread.join(5)
            self._server.close()


def _read_request(connection: socket.socket) -> bytes:
    """One HTTP/1.1 request (head and Content-Length body); b"" when the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return b""
        body += chunk
    return head + b"\r\n\r\n" + body


def chat_only(answer: Script) -> Script:
    """`answer` for chat completions; health probes and model lists get a plain 200."""

    def script(request: bytes) -> list[bytes] | None:
        if request.startswith(b"GET "):
            return http_response(200, b'{"status":"ok"}')
        return answer(request)

    return script
