"""A fault-injecting TCP proxy for Raft links: cut, delay and drop, in user space.

The kernels of the test machines have no `tc netem` and no nftables, so slow
and lossy links, and (in the 127.0.0.1 fallback) partitions too, are made here.
One `FaultProxy` runs an asyncio loop in a daemon thread of the test process
and serves any number of listeners; each listener stands in front of ONE node's
Raft port and forwards to the port the node really binds. A listener may live
in another network namespace: its sockets are created there (`setns` on the
creating thread, then back), and a socket keeps its namespace for life.

Every proxied connection knows its target node (the listener's) and, as soon
as it can be known, its initiator (`Initiators`): from the source address when
every node has its own (netns), or from pysyncobj's handshake otherwise. The
`FaultPolicy` then decides per connection and per chunk:

- a connection between two nodes that are cut apart is refused, or, if it
  existed when the cut came, aborted (RST both ways) at once;
- a chunk is held `delay_ms` before it is written (per direction, order kept,
  the link stays pipelined: the delay is latency, not a throughput cap);
- with probability `drop_rate` a chunk is lost, and because a TCP stream
  cannot lose bytes in the middle, so is the connection (aborted both ways).
  pysyncobj then reconnects and Raft retransmits: this is what a lost message
  means to it.

Guarantees: nothing from an initiator that is cut from the target is forwarded
beyond pysyncobj's first handshake frame (a random key, before the initiator
has said who it is); every socket and task is closed by `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import io
import os
import pickle
import random
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from node.raft.cipher import InvalidMessage, RaftCipher, cipher_for_secret

__all__ = ["FaultPolicy", "FaultProxy", "Initiators", "SlowLink", "socket_in_netns"]

CHUNK_BYTES_MAX = 65_536
QUEUED_CHUNKS_MAX = 1_024
"""Per direction of a connection: chunks read but not yet due; the reader waits beyond."""
HANDSHAKE_BYTES_MAX = 1_048_576
"""An initiator that has not said who it is within this many bytes stays unknown."""
HANDSHAKE_FRAMES_MAX = 2
"""pysyncobj's address is the first frame (no secret) or the second (after the random key)."""
CONNECT_TIMEOUT_S = 5.0
START_TIMEOUT_S = 10.0
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class SlowLink:
    """What a slow node does to each of its links."""

    delay_ms: int
    drop_rate: float

    def __post_init__(self) -> None:
        assert self.delay_ms >= 0, self.delay_ms
        assert 0.0 <= self.drop_rate <= 1.0, self.drop_rate


NO_FAULT = SlowLink(0, 0.0)


class FaultPolicy:
    """The faults in force, shared by every listener; safe to change from any thread.

    `None` as a node means "initiator not identified": it is cut whenever any cut
    is in force (safe side), and only its target's slowness applies to it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._isolated: set[str] = set()
        self._cut_pairs: set[frozenset[str]] = set()
        self._slow: dict[str, SlowLink] = {}

    def isolate(self, node: str) -> None:
        with self._lock:
            self._isolated.add(node)

    def cut(self, node_a: str, node_b: str) -> None:
        assert node_a != node_b, node_a
        with self._lock:
            self._cut_pairs.add(frozenset((node_a, node_b)))

    def set_slow(self, node: str, link: SlowLink) -> None:
        with self._lock:
            if link == NO_FAULT:
                self._slow.pop(node, None)
            else:
                self._slow[node] = link

    def heal(self) -> None:
        with self._lock:
            self._isolated.clear()
            self._cut_pairs.clear()
            self._slow.clear()

    def is_isolated(self, node: str) -> bool:
        with self._lock:
            return node in self._isolated

    def is_cut(self, initiator: str | None, target: str) -> bool:
        with self._lock:
            if target in self._isolated:
                return True
            if initiator is None:
                return bool(self._isolated or self._cut_pairs)
            return (initiator in self._isolated
                    or frozenset((initiator, target)) in self._cut_pairs)

    def link(self, initiator: str | None, target: str) -> SlowLink:
        """The combined slowness of both ends: delays add, losses compound."""
        with self._lock:
            ends = [self._slow.get(target, NO_FAULT)]
            if initiator is not None:
                ends.append(self._slow.get(initiator, NO_FAULT))
        delay_ms = sum(end.delay_ms for end in ends)
        kept = 1.0
        for end in ends:
            kept *= 1.0 - end.drop_rate
        return SlowLink(delay_ms, 1.0 - kept)


class _HandshakeUnpickler(pickle.Unpickler):
    """Loads only what pysyncobj's handshake frames hold: str, bytes, tuples."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 spells bytes
            import _codecs
            return _codecs.encode
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a handshake")


class Initiators:
    """Who opened a proxied connection.

    `by_source_host`: the node of each source IP (netns: every node has its own).
    `by_raft_address`: the node of each advertised Raft address ``host:port``,
    matched against the address pysyncobj sends when it connects; `secret` is
    the cluster's Raft password (None when the cluster has none), needed to
    decrypt that frame.
    """

    def __init__(self, by_source_host: Mapping[str, str] | None = None,
                 by_raft_address: Mapping[str, str] | None = None,
                 secret: str | None = None) -> None:
        self._by_source_host = dict(by_source_host or {})
        self._by_raft_address = dict(by_raft_address or {})
        self._cipher: RaftCipher | None = cipher_for_secret(secret) if secret else None

    @property
    def reads_handshake(self) -> bool:
        return bool(self._by_raft_address)

    def add_node(self, node: str, source_host: str | None = None,
                 raft_addresses: tuple[str, ...] = ()) -> None:
        """Learn a node added while the proxy runs (a replacement): its source address
        and/or the Raft addresses it announces. Safe from any thread (dict stores)."""
        if source_host is not None:
            assert source_host not in self._by_source_host, source_host
            self._by_source_host[source_host] = node
        for address in raft_addresses:
            assert address not in self._by_raft_address, address
            self._by_raft_address[address] = node

    def from_source(self, host: str) -> str | None:
        return self._by_source_host.get(host)

    def from_frame(self, frame: bytes) -> str | None:
        """The node whose Raft address this pysyncobj frame (length prefix removed)
        announces, or None when it announces none of them (e.g. the random key)."""
        try:
            data = self._cipher.decrypt(frame) if self._cipher is not None else frame
            message = _HandshakeUnpickler(io.BytesIO(data)).load()
        except (InvalidMessage, pickle.UnpicklingError, EOFError, ValueError,
                TypeError, AttributeError, IndexError, KeyError):
            return None
        if isinstance(message, tuple) and len(message) == 2:  # (their random key, address)
            message = message[1]
        return self._by_raft_address.get(message) if isinstance(message, str) else None


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def _in_netns(netns: str | None) -> Iterator[None]:
    """Run the block with the CALLING THREAD in network namespace `netns`."""
    if netns is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
        try:
            _libc_setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            # A thread stuck in a test namespace would open later sockets there: fail loudly.
            _libc_setns(home)
    finally:
        os.close(home)


def socket_in_netns(netns: str | None) -> socket.socket:
    """A non-blocking TCP socket that belongs to namespace `netns` (None: the current one)."""
    with _in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


@dataclasses.dataclass(slots=True)
class _Listener:
    listen: tuple[str, int]
    upstream: tuple[str, int]
    target_node: str
    netns: str | None
    server: asyncio.Server | None = None


@dataclasses.dataclass(eq=False, slots=True)
class _Connection:
    target: str
    initiator: str | None
    writers: list[asyncio.StreamWriter]
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    closed: bool = False

    def abort(self) -> None:
        """RST both sides (no graceful close: a cut link does not say goodbye)."""
        if self.closed:
            return
        self.closed = True
        for writer in self.writers:
            writer.transport.abort()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class FaultProxy:
    """Listeners in front of Raft ports, with faults from a `FaultPolicy`.

    Start it, `add_listener` for each port, change faults through `policy` and
    call `enforce()` so that connections a new cut crosses are aborted at once;
    `close()` (idempotent) stops everything.
    """

    def __init__(self, policy: FaultPolicy, initiators: Initiators,
                 rng: random.Random | None = None) -> None:
        self.policy = policy
        self._initiators = initiators
        self._rng = rng or random.Random()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="chaos-tcp-proxy", daemon=True)
        self._listeners: list[_Listener] = []
        self._connections: set[_Connection] = set()
        self._started = False
        self._closed = False

    # --- control, from any thread -----------------------------------------------------------

    def start(self) -> None:
        assert not self._started
        self._started = True
        self._thread.start()

    def add_listener(self, listen: tuple[str, int], upstream: tuple[str, int],
                     target_node: str, netns: str | None = None) -> None:
        """Listen on `listen` (inside `netns`) and forward to `upstream` (from inside
        `netns` too) as links to `target_node`. Returns once it is listening."""
        listener = _Listener(listen, upstream, target_node, netns)
        self._call(self._open_listener(listener))

    def enforce(self) -> int:
        """Abort every proxied connection that the policy now cuts; returns how many."""
        return self._call(self._enforce())

    def links(self) -> list[tuple[str | None, str]]:
        """(initiator, target) of every open proxied connection; None: not identified
        (yet). For tests and diagnostics."""
        return self._call(self._links())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started and self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(
                    START_TIMEOUT_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._started and not self._closed, "proxy not running"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(START_TIMEOUT_S)

    # --- the loop thread --------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _links(self) -> list[tuple[str | None, str]]:
        return [(c.initiator, c.target) for c in self._connections if not c.closed]

    async def _open_listener(self, listener: _Listener) -> None:
        sock = socket_in_netns(listener.netns)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(listener.listen)
            sock.listen(128)
            listener.server = await asyncio.start_server(
                lambda r, w: self._accept(listener, r, w), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._listeners.append(listener)

    async def _enforce(self) -> int:
        aborted = 0
        for connection in list(self._connections):
            if self.policy.is_cut(connection.initiator, connection.target):
                connection.abort()
                aborted += 1
        return aborted

    async def _shutdown(self) -> None:
        for listener in self._listeners:
            if listener.server is not None:
                listener.server.close()
        for connection in list(self._connections):
            connection.abort()
        tasks = [task for c in self._connections for task in c.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=START_TIMEOUT_S)
        for listener in self._listeners:
            if listener.server is not None:
                await listener.server.wait_closed()

    async def _accept(self, listener: _Listener, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        initiator = self._initiators.from_source(peer[0]) if peer else None
        identify = initiator is None and self._initiators.reads_handshake
        if (self.policy.is_isolated(listener.target_node) if identify
                else self.policy.is_cut(initiator, listener.target_node)):
            writer.transport.abort()  # refused: the target is unreachable from here
            return
        upstream_sock = socket_in_netns(listener.netns)
        try:
            await asyncio.wait_for(self._loop.sock_connect(upstream_sock, listener.upstream),
                                   CONNECT_TIMEOUT_S)
            up_reader, up_writer = await asyncio.open_connection(sock=upstream_sock)
        except (OSError, TimeoutError):
            upstream_sock.close()
            writer.transport.abort()
            return
        connection = _Connection(listener.target_node, initiator, [writer, up_writer])
        self._connections.add(connection)
        connection.tasks = [
            asyncio.create_task(self._pump(connection, reader, up_writer, identify)),
            asyncio.create_task(self._pump(connection, up_reader, writer, False)),
        ]
        try:
            await asyncio.wait(connection.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connection.abort()
            self._connections.discard(connection)

    async def _pump(self, connection: _Connection, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, identify: bool) -> None:
        """One direction: read, (identify,) maybe drop, hold until due, write in order."""
        due: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUED_CHUNKS_MAX)
        sender = asyncio.create_task(self._send_when_due(due, writer))
        handshake = _FrameReader() if identify else None
        try:
            while not connection.closed:
                data = await reader.read(CHUNK_BYTES_MAX)
                if not data:
                    break
                if handshake is not None and not handshake.done:
                    for frame in handshake.feed(data):
                        connection.initiator = self._initiators.from_frame(frame)
                        if connection.initiator is not None:
                            handshake.done = True
                            break
                pending = handshake is not None and not handshake.done
                # Until the initiator has said who it is, only a cut of the target applies.
                if (self.policy.is_isolated(connection.target) if pending
                        else self.policy.is_cut(connection.initiator, connection.target)):
                    return  # cut: the caller aborts both sides
                link = self.policy.link(connection.initiator, connection.target)
                if link.drop_rate and self._rng.random() < link.drop_rate:
                    return  # lost: the stream cannot skip bytes, so the connection goes
                await due.put((time.monotonic() + link.delay_ms / 1000.0, data))
            await due.put(None)
            await sender
        finally:
            sender.cancel()

    @staticmethod
    async def _send_when_due(due: asyncio.Queue[tuple[float, bytes] | None],
                             writer: asyncio.StreamWriter) -> None:
        while (item := await due.get()) is not None:
            release_at, data = item
            wait_s = release_at - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


class _FrameReader:
    """Splits the start of a pysyncobj stream into frames (native int32 length + payload)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._frames_seen = 0
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= 4 and self._frames_seen < HANDSHAKE_FRAMES_MAX:
            (length,) = struct.unpack("i", self._buffer[:4])
            if length < 0 or length > HANDSHAKE_BYTES_MAX:
                self.done = True
                break
            if len(self._buffer) < 4 + length:
                break
            frames.append(bytes(self._buffer[4:4 + length]))
            del self._buffer[:4 + length]
            self._frames_seen += 1
        if self._frames_seen >= HANDSHAKE_FRAMES_MAX or len(self._buffer) > HANDSHAKE_BYTES_MAX:
            self.done = True  # the caller checks the frames returned now, then gives up
        return frames
