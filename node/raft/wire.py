"""Bounded, linear framing on the Raft ports, and no multi-part AppendEntries (pysyncobj 0.3.17).

pysyncobj's `TcpConnection` reads a signed 4-byte length prefix and then
buffers the whole frame, up to 2 GiB, with `bytes +=` (quadratic) on the
group's tick thread, and only then decrypts it: anyone who reaches a Raft port
could stall a partition (one connection streaming under a 2 GiB prefix stopped
writes for 40 s and caused elections elsewhere) without knowing the secret.
`BoundedTcpConnection` replaces the read path:

- **Bounds, checked on the length prefix, before the frame is buffered.**
  Until the connection is authenticated, every frame must be at most
  `PRE_AUTH_FRAME_BYTES_MAX` (the handshake is a random key and an address,
  a few hundred bytes); afterwards at most `FRAME_BYTES_MAX`. A negative
  length, or one over the bound, closes the connection at once, with a
  warning naming the peer (rate-limited). "Authenticated" means a frame
  decrypted with the cluster secret AND carrying this connection's fresh
  random key (pysyncobj's replay guard): a replayed handshake frame does not
  count. Without a secret (insecure dev mode) nothing can be authenticated;
  only `FRAME_BYTES_MAX` applies.
- **Linear buffering.** One `bytearray` per connection with a read offset;
  bytes are appended, a frame is cut out once (one copy), and the consumed
  front is dropped only when it is at least half the buffer (amortised O(1)
  per byte). A read never asks for more than the rest of the frame being
  received, and reading stops once a frame is complete, so the buffer holds
  at most one frame plus one receive (`recvBufferSize`) of the next.
- **Encoding** (`encode_payload`): the pickled message, encrypted with
  node.raft.cipher (AES-256-GCM) when the cluster has a secret; pysyncobj also
  zlib-compressed each one, which cost more CPU than anything else about a
  small message. Decoding (`_decode`) checks what the library checked: the
  timestamp never goes back on a connection and each message carries the
  connection's random key; any failure closes the connection (warning,
  rate-limited). Only an authenticated (decrypted) frame is unpickled.
- **Sending** puts the frame in the library's write buffer, and a frame the
  socket could not take at once keeps the connection polled for writability
  (the library waited for the next message to send the rest: about 200 KiB per
  heartbeat).

Multi-part AppendEntries ('transmission' start/process/finish): the leader
splits an entry whose command is at least `appendEntriesBatchSizeBytes` into
parts that carry neither offset nor total, and flags 'finish' by comparing the
part's end with the length of the *command* instead of the pickled entry
(which pickle protocol 2 makes up to twice as long): followers unpickled
truncated data several times per 10,000-transfer batch ("pickle data was
truncated" 27 times in 6 batches), each time throwing out of the tick. The
parts cannot be made safe from the transport alone (the sender knows no
offsets and marks the end wrongly), and the library lets us avoid them: a
part is sent only for an entry whose command is >= `appendEntriesBatchSizeBytes`.
So `raft_conf()` sets it to `APPEND_ENTRIES_BATCH_BYTES`, above the largest
command a node can propose (`RAFT_COMMAND_BYTES_MAX`, enforced at propose time
by `check_entry_size`), and every entry travels whole inside one frame. Should
a part still appear, `BoundedTransport` does not send it, and a follower drops
any part it receives without handing it to the SyncObj (warning, counted): the
follower then lags (its leader keeps resending) rather than apply a spliced
entry. Snapshot chunks ('serialized', `logCompactionBatchSize`) are unchanged.

`install()` makes pysyncobj create `BoundedTcpConnection`s; it is pinned to
pysyncobj 0.3.17, whose private read path it overrides, and refuses others.
"""

from __future__ import annotations

import errno
import logging
import pickle
import socket
import struct
import threading
import time
from typing import Any, Final

import pysyncobj.tcp_connection
import pysyncobj.tcp_server
import pysyncobj.transport
import pysyncobj.version
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

from node.raft import cipher as raft_cipher

log = logging.getLogger(__name__)

SUPPORTED_PYSYNCOBJ_VERSION: Final = "0.3.17"
"""The pysyncobj release whose TcpConnection read path this module overrides."""

KIB: Final = 1024
MIB: Final = 1024 * KIB

PRE_AUTH_FRAME_BYTES_MAX: Final = 64 * KIB
"""Largest frame accepted before the connection is authenticated. The handshake frames
(a 32-byte random key; the node's address) are under 300 bytes once encrypted."""

ENTRY_BLOB_BYTES_MAX: Final = 4 * MIB
"""Largest Raft entry (encoded `ledger.v1.Entry`) a node proposes. The largest legitimate
one is a TransferBatch of TRANSFERS_PER_BATCH_MAX transfers with the longest fields, one
request kept in one entry: 1.75 MB (tests/test_raft_wire_unit.py measures it). A request
is itself at most REQUEST_BYTES_MAX (4 MiB) on gRPC."""

RAFT_COMMAND_BYTES_MAX: Final = 2 * ENTRY_BLOB_BYTES_MAX + 4 * KIB
"""Largest command in the Raft log: pysyncobj pickles the call with protocol 2, which
writes bytes as a latin-1 string in UTF-8, so every byte >= 0x80 takes two."""

APPEND_ENTRIES_BATCH_BYTES: Final = RAFT_COMMAND_BYTES_MAX + 1
"""pysyncobj's `appendEntriesBatchSizeBytes`: above every command, so that no entry is ever
split into a multi-part transmission. A batch stops at the first entry that brings it to
this size, so one AppendEntries carries less than twice it in commands."""

FRAME_BYTES_MAX: Final = 64 * MIB
"""Largest frame accepted from an authenticated peer. The largest legitimate one is an
AppendEntries carrying under APPEND_ENTRIES_BATCH_BYTES + RAFT_COMMAND_BYTES_MAX (16 MiB)
of commands, pickled again (at most twice, plus a few dozen bytes per entry)
and encrypted (node.raft.cipher: 37 bytes more;
Fernet's base64 made it 4/3): about 33 MiB in the worst case. Measured: 15 MiB for two
4 MiB entries of random bytes, 4.5 MiB for 8 MiB
of 118,207 tiny entries (tests/test_raft_wire_unit.py encodes such a frame)."""

READ_COMPACT_BYTES_MIN: Final = 64 * KIB
"""The consumed front of a connection's buffer is dropped once it is this long and at least
half the buffer (both: each byte is moved at most about once)."""

WARNINGS_PER_WINDOW_MAX: Final = 10
WARNING_WINDOW_S: Final = 10.0
"""Warnings of one kind logged per window; the rest are counted in the next one logged."""

_LENGTH_PREFIX = struct.Struct("i")  # pysyncobj's: native signed 32-bit, native order

_installed = False


class EntryTooLarge(ValueError):
    """A proposed entry exceeds ENTRY_BLOB_BYTES_MAX: it would have to be split on the wire."""


def check_entry_size(blob: bytes) -> None:
    """Refuse to propose an entry bigger than every follower accepts (see module docstring)."""
    if len(blob) > ENTRY_BLOB_BYTES_MAX:
        raise EntryTooLarge(f"a Raft entry of {len(blob)} bytes is over the "
                            f"{ENTRY_BLOB_BYTES_MAX}-byte limit (ENTRY_BLOB_BYTES_MAX)")


class WireCounters:
    """Process-wide counts of what the Raft wire refused (read by node.metrics at scrape)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connections_dropped_oversize = 0
        self.transmission_parts_refused = 0

    def count_oversize(self) -> None:
        with self._lock:
            self.connections_dropped_oversize += 1

    def count_transmission_part(self) -> None:
        with self._lock:
            self.transmission_parts_refused += 1


counters = WireCounters()


class _RateLimitedWarning:
    """At most WARNINGS_PER_WINDOW_MAX warnings per window; how many were left out is said."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window_start_s = 0.0
        self._logged = 0
        self._suppressed = 0

    def __call__(self, msg: str, **fields: Any) -> None:
        with self._lock:
            now_s = time.monotonic()
            if now_s - self._window_start_s >= WARNING_WINDOW_S:
                self._window_start_s = now_s
                self._logged = 0
            if self._logged >= WARNINGS_PER_WINDOW_MAX:
                self._suppressed += 1
                return
            self._logged += 1
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            fields["suppressed_before"] = suppressed
        log.warning(msg, extra=fields)


_warn_oversize = _RateLimitedWarning()
_warn_undecodable = _RateLimitedWarning()
_warn_transmission = _RateLimitedWarning()


class BoundedTcpConnection(TcpConnection):  # type: ignore[misc]
    """pysyncobj's TcpConnection with bounded frames and linear buffering (module docstring)."""

    recvLastTimestamp: int  # the library's: the last message's timestamp on this connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._inbox = bytearray()
        self._inbox_start = 0
        self._authenticated = False
        self._peer_name: str | None = None
        super().__init__(*args, **kwargs)
        self._recv_bytes_max = int(self._TcpConnection__recvBufferSize)

    # -- state ---------------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet handed on as a message."""
        return len(self._inbox) - self._inbox_start

    def frame_bytes_max(self) -> int:
        if self.encryptor is not None and not self._authenticated:
            return PRE_AUTH_FRAME_BYTES_MAX
        return FRAME_BYTES_MAX

    def _reset_inbox(self) -> None:
        self._inbox = bytearray()
        self._inbox_start = 0
        self._authenticated = False
        self._peer_name = None

    def connect(self, host: str, port: int) -> bool:
        self._reset_inbox()
        return bool(super().connect(host, port))

    def disconnect(self) -> None:
        self._reset_inbox()
        super().disconnect()

    def peer(self) -> str:
        """The peer's address (looked up once per connection, for log lines)."""
        if self._peer_name is None:
            try:
                name = self._TcpConnection__socket.getpeername()
            except (AttributeError, OSError):
                return "unknown"
            self._peer_name = (f"{name[0]}:{name[1]}" if isinstance(name, tuple)
                               else str(name) or "unnamed socket")
        return self._peer_name

    # -- sending -----------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        """Frame the message (`encode_payload`), then keep polling for writability while
        bytes are left.

        pysyncobj asks the poller for WRITE events only from a WRITE event: what one
        `send()` could not hand to the socket at once waited for the next message
        (a heartbeat, every 0.1 s), so a 2 MB entry took a second to leave, and with
        the library's default election timeout a 3 MB one kept being cut off by
        elections (tests/test_raft_wire_unit.py shows the library waiting).
        """
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        payload = encode_payload(message, self.encryptor, int(time.monotonic()))
        self._TcpConnection__writeBuffer += _LENGTH_PREFIX.pack(len(payload)) + payload
        self._TcpConnection__trySendBuffer()
        fileno = self.fileno()
        if (fileno is not None and self.getSendBufferSize() > 0
                and self.state != CONNECTION_STATE.DISCONNECTED):
            self._TcpConnection__poller.subscribe(
                fileno, self._TcpConnection__processConnection,
                POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)

    # -- the library's read path, replaced -------------------------------------------------

    def _pending_frame_length(self) -> int | None:
        """Payload length of the frame at the front (None: prefix not complete yet).
        Closes the connection, and returns -1, if the prefix breaks the bound."""
        if self.buffered_bytes < _LENGTH_PREFIX.size:
            return None
        (length,) = _LENGTH_PREFIX.unpack_from(self._inbox, self._inbox_start)
        bound = self.frame_bytes_max()
        if 0 <= length <= bound:
            return int(length)
        counters.count_oversize()
        _warn_oversize("Raft connection closed: frame length over the bound",
                       peer=self.peer(), frame_bytes=length, frame_bytes_max=bound,
                       authenticated=self._authenticated)
        self.disconnect()
        return -1

    def _TcpConnection__processRead(self) -> bool:
        """One receive; True to read again. Never reads past the frame being received, and
        stops once a frame is complete (the poller is level-triggered: the rest waits)."""
        recv_bytes = self._recv_bytes_max
        length = self._pending_frame_length()
        if length is not None:
            if length < 0:
                return False
            missing = _LENGTH_PREFIX.size + length - self.buffered_bytes
            if missing <= 0:
                return False
            recv_bytes = min(recv_bytes, missing)
        sock = self._TcpConnection__socket
        try:
            incoming = sock.recv(recv_bytes)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if not incoming or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.disconnect()
            return False
        self._inbox += incoming
        length = self._pending_frame_length()
        if length is None:
            return True
        return length >= 0 and self.buffered_bytes < _LENGTH_PREFIX.size + length

    def _next_frame(self) -> bytes | None:
        """Cut the complete frame at the front out of the buffer (None: none complete)."""
        length = self._pending_frame_length()
        if length is None or length < 0:
            return None
        end = self._inbox_start + _LENGTH_PREFIX.size + length
        if end > len(self._inbox):
            return None
        with memoryview(self._inbox) as view:
            frame = bytes(view[self._inbox_start:end])
        self._inbox_start = end
        if end == len(self._inbox):
            self._inbox.clear()
            self._inbox_start = 0
        elif end >= READ_COMPACT_BYTES_MIN and 2 * end >= len(self._inbox):
            del self._inbox[:end]
            self._inbox_start = 0
        return frame

    def _TcpConnection__processParseMessage(self) -> Any:
        frame = self._next_frame()
        if frame is None:
            return None
        keyed = self.encryptor is not None and self.recvRandKey is not None
        try:
            message = self._decode(memoryview(frame)[_LENGTH_PREFIX.size:])
        except Exception as exc:  # anything a hostile frame can raise: close, never crash
            _warn_undecodable("Raft connection closed: a frame failed decryption or decoding",
                              peer=self.peer(), frame_bytes=len(frame) - _LENGTH_PREFIX.size,
                              authenticated=self._authenticated, error=type(exc).__name__)
            self.disconnect()
            return None
        if keyed:
            self._authenticated = True
        return message

    def _decode(self, payload: memoryview) -> Any:
        """The message of one frame's payload (the inverse of `encode_payload`), checked as
        the library checks it: a timestamp that never goes back on this connection, and
        this connection's random key (the guard against replayed frames)."""
        data: bytes | memoryview = payload
        if self.encryptor is not None:
            token = bytes(payload)
            timestamp: int = self.encryptor.extract_timestamp(token)
            data = self.encryptor.decrypt(token)
            if timestamp < self.recvLastTimestamp:
                raise ValueError("the message's timestamp is older than the previous one")
            self.recvLastTimestamp = timestamp
        message = pickle.loads(data)
        if self.recvRandKey:
            rand_key, message = message
            if rand_key != self.recvRandKey:
                raise ValueError("the message does not carry this connection's random key")
        return message


def encode_payload(message: Any, encryptor: Any | None, now_s: int) -> bytes:
    """A frame's payload: the pickled message, encrypted when the cluster has a secret.

    pysyncobj also zlib-compressed every message (level 3) before encrypting it: a
    deflate state set up per message, the largest CPU cost of a small one (bench/RESULTS.md).
    Raft traffic between a cluster's nodes is not short of bandwidth, so it is not
    compressed.
    """
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return encryptor.encrypt_at_time(data, now_s) if encryptor is not None else data


def is_transmission_part(message: Any) -> bool:
    """A part of pysyncobj's multi-part AppendEntries (never sent by a node of ours)."""
    return (isinstance(message, dict) and message.get("type") == "append_entries"
            and message.get("transmission") is not None)


class BoundedTransport(TCPTransport):  # type: ignore[misc]
    """TCPTransport that neither sends nor accepts multi-part AppendEntries."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not _installed:
            raise RuntimeError("node.raft.wire.install() must run before any Raft group is "
                               "created: its connections would buffer unbounded frames")
        super().__init__(*args, **kwargs)

    def send(self, node: Any, message: Any) -> bool:
        if is_transmission_part(message):
            log.error("multi-part AppendEntries not sent: an entry is over "
                      "APPEND_ENTRIES_BATCH_BYTES (check_entry_size was bypassed)",
                      extra={"peer": str(getattr(node, "id", node))})
            return False
        return bool(super().send(node, message))

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        if is_transmission_part(message):
            counters.count_transmission_part()
            _warn_transmission("multi-part AppendEntries part refused (never applied)",
                               peer=str(getattr(node, "id", node)),
                               part=str(message.get("transmission")))
            return
        super()._onMessageReceived(node, message)


def pysyncobj_version_supported() -> bool:
    return str(pysyncobj.version.VERSION) == SUPPORTED_PYSYNCOBJ_VERSION


def install() -> None:
    """Make pysyncobj create `BoundedTcpConnection`s (server side and client side),
    encrypting with node.raft.cipher's AES-256-GCM.

    Patches the `TcpConnection` name in `pysyncobj.tcp_server` (accepted connections)
    and `pysyncobj.transport` (connections to peers). Call before creating any
    SyncObj; idempotent. Raises RuntimeError for any pysyncobj other than 0.3.17,
    whose private read path (`__processRead`, `__processParseMessage`, `__readBuffer`,
    `__socket`) this module overrides.
    """
    global _installed
    if not pysyncobj_version_supported():
        raise RuntimeError(
            f"node.raft.wire.install() supports pysyncobj {SUPPORTED_PYSYNCOBJ_VERSION} only, "
            f"found {pysyncobj.version.VERSION}: it overrides TcpConnection's private read "
            "path. Re-read pysyncobj/tcp_connection.py and the 'transmission' code of "
            "syncobj.py, then update SUPPORTED_PYSYNCOBJ_VERSION and the tests")
    for hook in ("_TcpConnection__processRead", "_TcpConnection__processParseMessage",
                 "_TcpConnection__tryReadBuffer", "_TcpConnection__processConnection"):
        if not callable(getattr(pysyncobj.tcp_connection.TcpConnection, hook, None)):
            raise RuntimeError(f"pysyncobj's TcpConnection has no {hook}: node.raft.wire "
                               "cannot bound its frames")
    pysyncobj.tcp_server.TcpConnection = BoundedTcpConnection
    pysyncobj.transport.TcpConnection = BoundedTcpConnection
    raft_cipher.install()  # AES-256-GCM instead of Fernet, on the same connections
    _installed = True
