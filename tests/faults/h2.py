"""Just enough HTTP/2 for the proxy to lose the answer of *chosen* gRPC calls.

The proxy's blackhole loses every answer on a connection and leaves it corrupt. Real faults are
often narrower — one request commits, its answer is lost (a leader change, a timeout on a slow
fsync), and the connection lives on. To do that the proxy must know which request is which:

* client -> server: split the byte stream into frames (after the 24-byte connection preface)
  and decode every request's header block with HPACK (the `hpack` package; the decoder sees
  every block, so its dynamic table stays in sync) to read `:path`, e.g.
  `/etcdserverpb.KV/Txn`. The bytes are forwarded untouched.
* server -> client: split into frames and drop every frame of a stream chosen for loss
  (HEADERS, CONTINUATION, DATA, RST_STREAM, WINDOW_UPDATE); connection-level frames (stream 0:
  SETTINGS, PING, GOAWAY, WINDOW_UPDATE) and every other stream pass.

The client then sees nothing for that call (its deadline passes and it retries, maybe on the
same connection) while the server applied it. Limit: a dropped response header block that
inserted entries into the server's HPACK table would leave the client's table behind; gRPC
servers send the same few response headers on every call, so only the first call on a
connection inserts anything — choose a request after it (the tests do). If it happened, the
client would see a compression error and reconnect: still a lost answer.
"""

from __future__ import annotations

from collections.abc import Callable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS, _CONTINUATION = 0x1, 0x9
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20


class FrameSplitter:
    """Feeds bytes in, yields whole frames (raw bytes, type, flags, stream id)."""

    def __init__(self, preface: bytes = b"") -> None:
        self._buf = bytearray()
        self._preface = preface

    @property
    def started(self) -> bool:
        """The preface (if any) has been seen whole: what follows are frames."""
        return not self._preface

    def feed(self, data: bytes) -> list[tuple[bytes, int, int, int]]:
        self._buf += data
        out: list[tuple[bytes, int, int, int]] = []
        if self._preface:
            n = min(len(self._buf), len(self._preface))
            if bytes(self._buf[:n]) != self._preface[:n]:
                raise ValueError("not an HTTP/2 connection preface")
            if len(self._buf) < len(self._preface):
                return out
            out.append((bytes(self._buf[: len(self._preface)]), -1, 0, 0))
            del self._buf[: len(self._preface)]
            self._preface = b""
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[0:3], "big")
            if len(self._buf) < 9 + length:
                break
            ftype, flags = self._buf[3], self._buf[4]
            stream = int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF
            out.append((bytes(self._buf[: 9 + length]), ftype, flags, stream))
            del self._buf[: 9 + length]
        return out


def _header_fragment(frame: bytes, ftype: int, flags: int) -> bytes:
    payload = frame[9:]
    if ftype == _HEADERS:
        pad = 0
        if flags & _PADDED:
            pad, payload = payload[0], payload[1:]
        if flags & _PRIORITY:
            payload = payload[5:]
        if pad:
            payload = payload[:-pad]
    return payload


class RequestWatcher:
    """Client -> server: calls `on_request(stream_id, path)` for every new request."""

    def __init__(self, on_request: Callable[[int, str], None]) -> None:
        import hpack

        self._frames = FrameSplitter(PREFACE)
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 1 << 20
        self._on_request = on_request
        self._block: bytearray | None = None
        self._block_stream = 0

    @property
    def is_h2(self) -> bool | None:
        """True once the client's HTTP/2 preface was seen whole; None until then."""
        return True if self._frames.started else None

    def feed(self, data: bytes) -> None:
        for frame, ftype, flags, stream in self._frames.feed(data):
            if ftype == _HEADERS:
                self._block, self._block_stream = bytearray(), stream
            if ftype in (_HEADERS, _CONTINUATION) and self._block is not None:
                self._block += _header_fragment(frame, ftype, flags)
                if flags & _END_HEADERS:
                    headers = self._decoder.decode(bytes(self._block), raw=True)
                    self._block = None
                    path = next((v for k, v in headers if k == b":path"), b"")
                    self._on_request(self._block_stream, path.decode("latin-1"))


class AnswerFilter:
    """Server -> client: drops the frames of the streams in `lost` (a set the request side
    fills), returns the bytes to deliver and how many were dropped."""

    def __init__(self, lost: set[int]) -> None:
        self._frames = FrameSplitter()
        self._lost = lost

    def feed(self, data: bytes) -> tuple[bytes, int]:
        keep, dropped = bytearray(), 0
        for frame, _ftype, _flags, stream in self._frames.feed(data):
            if stream and stream in self._lost:
                dropped += len(frame)
            else:
                keep += frame
        return bytes(keep), dropped
