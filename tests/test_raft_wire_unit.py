"""node/raft/wire.py: bounded frames, linear buffering, no multi-part AppendEntries (in-process)."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pysyncobj.tcp_connection
import pysyncobj.tcp_server
import pysyncobj.transport
import pysyncobj.version
import pytest
from pysyncobj import SyncObjConf, pickle
from pysyncobj.node import TCPNode
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE

from ledger import commands as c
from ledger.codec import encode_entry
from node.host import REQUEST_BYTES_MAX
from node.raft import cipher as raft_cipher
from node.raft import wire as raft_wire
from node.raft.replica import RaftSettings, raft_conf
from node.raft.wire import (
    APPEND_ENTRIES_BATCH_BYTES,
    ENTRY_BLOB_BYTES_MAX,
    FRAME_BYTES_MAX,
    PRE_AUTH_FRAME_BYTES_MAX,
    RAFT_COMMAND_BYTES_MAX,
    BoundedTcpConnection,
    BoundedTransport,
)
from node.services.wallet_service import TRANSFERS_PER_BATCH_MAX
from tests.cluster_harness import allocate_ports, wait_until

SECRET = "test-secret-0123456789"
RECV_BYTES = 2**16  # pysyncobj's default recvBufferSize, which raft_conf keeps


@pytest.fixture(autouse=True)
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Undo the patch after each test: other tests of this process get the library as is.
    monkeypatch.setattr(pysyncobj.tcp_server, "TcpConnection",
                        pysyncobj.tcp_server.TcpConnection)
    monkeypatch.setattr(pysyncobj.transport, "TcpConnection",
                        pysyncobj.transport.TcpConnection)
    monkeypatch.setattr(raft_wire, "_installed", raft_wire._installed)
    raft_wire.install()


class Wire:
    """A BoundedTcpConnection on one end of a socket pair; the test writes the other end."""

    def __init__(self, encrypted: bool = True) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        self.poller = createPoller("auto")
        self.messages: list[Any] = []
        self.closed = threading.Event()
        self.conn = BoundedTcpConnection(
            poller=self.poller, socket=self.ours, timeout=60.0,
            sendBufferSize=RECV_BYTES, recvBufferSize=RECV_BYTES,
            onMessageReceived=self.messages.append, onDisconnected=self.closed.set)
        self.encryptor = raft_cipher.cipher_for_secret(SECRET) if encrypted else None
        self.conn.encryptor = self.encryptor
        self.max_buffered = 0

    def frame(self, message: Any, rand_key: bytes | None = None) -> bytes:
        """A frame as a pysyncobj peer sends it."""
        if rand_key is not None:
            message = (rand_key, message)
        data = raft_wire.encode_payload(message, self.encryptor, int(time.monotonic()))
        return struct.pack("i", len(data)) + data

    def feed(self, data: bytes) -> None:
        """Write `data` to the connection and let it read, as its tick thread would."""
        view = memoryview(data)
        while view and not self.closed.is_set():
            try:
                sent = self.theirs.send(view)
            except BlockingIOError:
                sent = 0
            except (BrokenPipeError, ConnectionResetError):
                return
            view = view[sent:]
            self.poll()

    def poll(self) -> None:
        self.poller.poll(0)
        self.max_buffered = max(self.max_buffered, self.conn.buffered_bytes)

    def handshake(self) -> bytes:
        """The incoming side of pysyncobj's key exchange; returns our random key."""
        self.feed(self.frame(os.urandom(32)))
        assert len(self.messages) == 1 and not self.conn.authenticated
        self.conn.sendRandKey = self.messages.pop()
        self.conn.recvRandKey = os.urandom(32)
        self.feed(self.frame("127.0.0.1:1", rand_key=self.conn.recvRandKey))
        assert self.messages.pop() == "127.0.0.1:1"
        assert self.conn.authenticated
        return bytes(self.conn.recvRandKey)

    def close(self) -> None:
        self.conn.disconnect()
        self.theirs.close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    opened = Wire()
    try:
        yield opened
    finally:
        opened.close()


# -- bounds ----------------------------------------------------------------------------------


def test_a_2_gib_length_prefix_before_authentication_closes_the_connection_at_once(
    wire: Wire,
) -> None:
    wire.feed(struct.pack("i", 2**31 - 1) + b"\0" * (4 * PRE_AUTH_FRAME_BYTES_MAX))
    assert wire.closed.is_set()
    assert wire.conn.state == CONNECTION_STATE.DISCONNECTED
    assert wire.max_buffered <= 4 + RECV_BYTES
    assert wire.messages == []


def test_a_frame_just_over_the_pre_authentication_bound_is_refused_before_it_is_buffered(
    wire: Wire,
) -> None:
    dropped_before = raft_wire.counters.connections_dropped_oversize
    wire.feed(struct.pack("i", PRE_AUTH_FRAME_BYTES_MAX + 1) + b"\0" * 1000)
    assert wire.closed.is_set()
    assert wire.max_buffered < 1004
    assert raft_wire.counters.connections_dropped_oversize == dropped_before + 1


def test_a_negative_length_prefix_closes_the_connection(wire: Wire) -> None:
    wire.feed(struct.pack("i", -5) + b"\0" * 100)
    assert wire.closed.is_set()
    assert wire.messages == []


def test_the_closing_is_logged_with_the_peer(wire: Wire, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="node.raft.wire"):
        wire.feed(struct.pack("i", 2**31 - 1))
    (record,) = [r for r in caplog.records if "over the bound" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert getattr(record, "peer", None) is not None
    assert record.frame_bytes == 2**31 - 1  # type: ignore[attr-defined]


def test_garbage_that_fails_decryption_is_logged_and_closes_the_connection(
    wire: Wire, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="node.raft.wire"):
        wire.feed(struct.pack("i", 100) + b"x" * 100)
    assert wire.closed.is_set() and wire.messages == []
    assert any("failed decryption" in r.getMessage() for r in caplog.records)


def test_a_replayed_first_frame_does_not_authenticate_the_connection(wire: Wire) -> None:
    wire.feed(wire.frame(os.urandom(32)))
    assert len(wire.messages) == 1
    assert not wire.conn.authenticated
    # Still bounded as a stranger: a big frame after a (replayable) first frame is refused.
    wire.feed(struct.pack("i", PRE_AUTH_FRAME_BYTES_MAX + 1))
    assert wire.closed.is_set()


def test_after_authentication_a_large_frame_is_accepted_and_one_over_the_bound_is_not(
    wire: Wire,
) -> None:
    key = wire.handshake()
    big = {"type": "append_entries", "entries": [(os.urandom(3 * 2**20), 7, 1)]}
    wire.feed(wire.frame(big, rand_key=key))
    assert wire.messages == [big]
    wire.feed(struct.pack("i", FRAME_BYTES_MAX + 1))
    assert wire.closed.is_set()


def test_several_frames_in_one_read_are_all_delivered_in_order(wire: Wire) -> None:
    key = wire.handshake()
    frames = b"".join(wire.frame({"n": n}, rand_key=key) for n in range(50))
    wire.feed(frames)
    assert wire.messages == [{"n": n} for n in range(50)]
    assert wire.conn.buffered_bytes == 0


def test_without_a_secret_there_is_no_pre_authentication_bound() -> None:
    plain = Wire(encrypted=False)
    try:
        big = {"type": "append_entries", "entries": [(os.urandom(2**20), 7, 1)]}
        plain.feed(plain.frame(big))
        assert plain.messages == [big]
        plain.feed(struct.pack("i", FRAME_BYTES_MAX + 1))
        assert plain.closed.is_set()
    finally:
        plain.close()


# -- linear buffering ------------------------------------------------------------------------


def test_a_frame_fed_in_10_000_small_chunks_is_buffered_in_one_growing_buffer(
    wire: Wire,
) -> None:
    key = wire.handshake()
    payload = {"type": "append_entries", "entries": [(os.urandom(2**20), 7, 1)]}
    frame = wire.frame(payload, rand_key=key)
    chunk_bytes = len(frame) // 10_000 + 1
    buffers = set()
    for start in range(0, len(frame), chunk_bytes):
        wire.feed(frame[start:start + chunk_bytes])
        if wire.conn.buffered_bytes:
            buffers.add(id(wire.conn._inbox))
    # The buffer object is appended to, never rebuilt per chunk (`bytes +=` made a new one
    # per read, copying everything received so far: quadratic).
    assert len(buffers) == 1
    assert wire.messages == [payload]
    assert wire.conn.buffered_bytes == 0


def test_the_library_connection_rebuilds_its_buffer_on_every_read() -> None:
    """What the test above guards against: pysyncobj's own TcpConnection (0.3.17)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    poller = createPoller("auto")
    conn = pysyncobj.tcp_connection.TcpConnection(poller=poller, socket=ours, timeout=60.0)
    try:
        seen = set()
        theirs.send(struct.pack("i", 10**6))
        for _ in range(20):
            theirs.send(b"\0" * 100)
            poller.poll(0)
            seen.add(id(conn._TcpConnection__readBuffer))
        assert len(seen) > 1
        assert len(conn._TcpConnection__readBuffer) == 4 + 20 * 100  # buffered, unchecked
    finally:
        conn.disconnect()
        theirs.close()


def test_the_consumed_front_of_the_buffer_is_dropped(wire: Wire) -> None:
    key = wire.handshake()
    frames = [wire.frame({"n": n, "pad": os.urandom(2000)}, rand_key=key) for n in range(400)]
    stream = b"".join(frames)
    for start in range(0, len(stream), 3000):  # frames straddle the reads
        wire.feed(stream[start:start + 3000])
        assert len(wire.conn._inbox) <= 2 * max(raft_wire.READ_COMPACT_BYTES_MIN,
                                                wire.conn.buffered_bytes) + RECV_BYTES
    assert [m["n"] for m in wire.messages] == list(range(400))


# -- sending ---------------------------------------------------------------------------------


def drain(conn: Any, poller: Any, theirs: socket.socket, polls: int) -> int:
    """Poll `polls` times while the other end reads everything; bytes still unsent."""
    for _ in range(polls):
        with contextlib.suppress(BlockingIOError):
            while theirs.recv(2**20):
                pass
        poller.poll(0)
    return int(conn.getSendBufferSize())


def test_a_large_send_leaves_at_socket_speed_without_waiting_for_the_next_message(
    wire: Wire,
) -> None:
    wire.conn.send({"blob": os.urandom(4 * 2**20)})
    assert wire.conn.getSendBufferSize() > 0  # more than the socket takes at once
    assert drain(wire.conn, wire.poller, wire.theirs, polls=200) == 0


def test_the_library_connection_sends_the_rest_only_with_the_next_message() -> None:
    """What the test above guards against: pysyncobj's own TcpConnection (0.3.17)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    poller = createPoller("auto")
    conn = pysyncobj.tcp_connection.TcpConnection(poller=poller, socket=ours, timeout=60.0)
    try:
        poller.poll(0)  # the first WRITE event: nothing to send, WRITE is unsubscribed
        conn.send({"blob": os.urandom(4 * 2**20)})
        assert drain(conn, poller, theirs, polls=200) > 0
    finally:
        conn.disconnect()
        theirs.close()


# -- multi-part AppendEntries ----------------------------------------------------------------


class _Recorder(BoundedTransport):
    """A BoundedTransport without sockets: what reaches the SyncObj is recorded."""

    def __init__(self) -> None:  # no TCPTransport.__init__: nothing to bind or connect
        self.delivered: list[Any] = []
        self._onMessageReceivedCallback = lambda node, message: self.delivered.append(message)


def transmission(part: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return dict({"type": "append_entries", "transmission": part, "data": data, "term": 3,
                 "commit_index": 9, "prevLogIdx": 9, "prevLogTerm": 3}, **extra)


@pytest.mark.parametrize("parts", [
    pytest.param(["start", "process", "finish"], id="complete"),
    pytest.param(["start", "finish"], id="missing part"),
    pytest.param(["process", "finish"], id="no start"),
    pytest.param(["start", "finish", "finish"], id="finish twice (the library's early finish)"),
    pytest.param(["finish"], id="finish alone"),
])
def test_multi_part_transmissions_are_never_handed_to_the_syncobj(parts: list[str]) -> None:
    recorder = _Recorder()
    entry = pickle.dumps((b"\x00" + pickle.dumps((0, (b"blob",), {})), 10, 3))
    refused_before = raft_wire.counters.transmission_parts_refused
    third = len(entry) // 3 + 1
    for n, part in enumerate(parts):
        recorder._onMessageReceived(TCPNode("127.0.0.1:1"),
                                    transmission(part, entry[n * third:(n + 1) * third]))
    recorder._onMessageReceived(TCPNode("127.0.0.1:1"), {"type": "append_entries", "term": 3,
                                                         "commit_index": 9, "entries": []})
    assert recorder.delivered == [{"type": "append_entries", "term": 3, "commit_index": 9,
                                   "entries": []}]
    assert raft_wire.counters.transmission_parts_refused == refused_before + len(parts)


def test_a_transmission_part_is_not_sent() -> None:
    recorder = _Recorder()
    assert recorder.send(TCPNode("127.0.0.1:1"), transmission("start", b"x")) is False


def test_the_batch_size_keeps_the_largest_command_in_one_message() -> None:
    conf = raft_conf(RaftSettings(), SECRET, "127.0.0.1:1", "/nonexistent")
    assert conf.appendEntriesBatchSizeBytes == APPEND_ENTRIES_BATCH_BYTES
    # pysyncobj splits an entry only when len(command) >= appendEntriesBatchSizeBytes.
    worst = b"\x00" + pickle.dumps((0, (b"\xff" * ENTRY_BLOB_BYTES_MAX,), {}))
    assert len(worst) <= RAFT_COMMAND_BYTES_MAX < APPEND_ENTRIES_BATCH_BYTES


def test_the_largest_legitimate_entry_is_under_the_entry_limit() -> None:
    longest = c.DebitForTransfer("a" * 64, "b" * 64, -(2**63), "USD", uuid.uuid4().bytes, 4095)
    blob = encode_entry(c.Entry(2**62, (longest,) * TRANSFERS_PER_BATCH_MAX))
    assert len(blob) * 2 <= ENTRY_BLOB_BYTES_MAX
    assert REQUEST_BYTES_MAX <= ENTRY_BLOB_BYTES_MAX
    raft_wire.check_entry_size(blob)
    with pytest.raises(raft_wire.EntryTooLarge):
        raft_wire.check_entry_size(b"\0" * (ENTRY_BLOB_BYTES_MAX + 1))


def test_the_largest_legitimate_frame_is_under_the_frame_bound() -> None:
    """An AppendEntries as big as the batch size allows, of incompressible entries,
    encoded the way a node sends it (`raft_wire.encode_payload`)."""
    command = b"\x00" + pickle.dumps((0, (os.urandom(ENTRY_BLOB_BYTES_MAX),), {}))
    entries = [(command, 10**9 + n, 10**6) for n in range(
        APPEND_ENTRIES_BATCH_BYTES // len(command) + 1)]
    entries.append((command, 2 * 10**9, 10**6))  # the one that crosses the batch size
    message = (os.urandom(32), {"type": "append_entries", "term": 10**6,
                                "commit_index": 10**9, "entries": entries,
                                "prevLogIdx": 10**9, "prevLogTerm": 10**6})
    data = raft_wire.encode_payload(message, raft_cipher.cipher_for_secret(SECRET), 1)
    assert len(data) <= FRAME_BYTES_MAX


# -- the pin ---------------------------------------------------------------------------------


def test_install_refuses_another_pysyncobj(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pysyncobj.version, "VERSION", "0.3.18")
    with pytest.raises(RuntimeError, match=r"0\.3\.17"):
        raft_wire.install()


def test_the_library_still_has_the_read_path_we_override() -> None:
    """Fails on an upgrade that renames or restructures TcpConnection's read path."""
    library = pysyncobj.tcp_connection.TcpConnection
    for name in ("_TcpConnection__processRead", "_TcpConnection__processParseMessage",
                 "_TcpConnection__tryReadBuffer", "_TcpConnection__processConnection"):
        assert callable(getattr(library, name, None)), name
    assert pysyncobj.tcp_server.TcpConnection is BoundedTcpConnection
    assert pysyncobj.transport.TcpConnection is BoundedTcpConnection


def test_a_transport_refuses_to_start_without_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_wire, "_installed", False)
    with pytest.raises(RuntimeError, match="install"):
        BoundedTransport(None, None, [])


def test_two_real_syncobjs_replicate_a_large_entry_through_bounded_connections(
    tmp_path: Any,
) -> None:
    """End to end in-process: key exchange, a 3 MiB entry, whole on the follower (before the
    send fix, the 3 MiB entry left at a heartbeat's pace and elections kept restarting it)."""
    from pysyncobj import SyncObj, SyncObjConsumer, replicated

    class Store(SyncObjConsumer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.blobs: list[bytes] = []

        @replicated  # type: ignore[untyped-decorator]
        def put(self, blob: bytes) -> int:
            self.blobs.append(blob)
            return len(self.blobs)

    base = allocate_ports(2)
    addresses = [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]
    stores = [Store(), Store()]
    groups = [SyncObj(address, [a for a in addresses if a != address],
                      conf=SyncObjConf(password=SECRET, appendEntriesUseBatch=False,
                                       appendEntriesBatchSizeBytes=APPEND_ENTRIES_BATCH_BYTES,
                                       raftMinTimeout=1.0, raftMaxTimeout=2.5),
                      consumers=[store], transportClass=BoundedTransport)
              for address, store in zip(addresses, stores, strict=True)]
    try:
        wait_until(lambda: any(g._isLeader() for g in groups)
                   and all(g._getLeader() is not None for g in groups), "a leader", 30)
        blob = os.urandom(3 * 2**20)
        leader = next(n for n, g in enumerate(groups) if g._isLeader())
        assert stores[leader].put(blob, sync=True, timeout=30) == 1
        wait_until(lambda: all(s.blobs == [blob] for s in stores), "both to hold the entry", 30)
    finally:
        for group in groups:
            group.destroy()
