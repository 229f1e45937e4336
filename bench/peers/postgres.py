"""A throwaway PostgreSQL instance for the peer benchmark: found, started, always removed.

`find_binaries()` looks for the server programs (`initdb`, `postgres`) and never
installs anything: when they are missing it raises `PostgresMissing`, whose
message says how to install them. `PostgresInstance` is a context manager that
creates a fresh cluster in a new temporary directory, starts one `postgres`
process bound to 127.0.0.1 on a free port (its unix socket in the temporary
directory, so nothing outside it is touched), loads `schema.sql`, and on exit
stops the server (fast shutdown, then SIGKILL after a bounded wait) and removes
the directory, on success, failure and Ctrl-C alike.

PostgreSQL refuses to run as root. When this process is root, the server
programs run as the unprivileged `nobody` user (`PG_RUN_AS_USER`), set by the
kernel at exec time (`subprocess.Popen(user=..., group=..., extra_groups=[])`):
no `su`/`runuser` in between, so the postmaster is our direct child and its pid
is the one we stop. The temporary directory is created by us and handed to that
user (chown), so it must live where that user can reach it (`/tmp` by default).

Durability is the caller's choice through `settings`; `DURABLE_SETTINGS` are
PostgreSQL's crash-safe defaults made explicit (fsync on, synchronous_commit on,
full_page_writes on), with checkpoints spaced out so that none falls inside a
measured run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.sql"
SEARCH_DIRS = (Path("/usr/local/bin"), *sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                                               reverse=True))
"""Where server programs are looked for after $PATH (Debian puts them in
/usr/lib/postgresql/<major>/bin, off the PATH)."""
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, postgres) were not found on $PATH, in /usr/local/bin "
    "or in /usr/lib/postgresql/*/bin. Install them, e.g. `apt-get install postgresql` "
    "(Debian/Ubuntu), `dnf install postgresql-server` (Fedora/RHEL) or `brew install "
    "postgresql@15` (macOS), or download them from https://www.postgresql.org/download/ ; "
    "or set PG_BIN_DIR to their directory. This script installs nothing itself.")
PG_RUN_AS_USER = "nobody"
"""Unprivileged user the server runs as when we are root (PostgreSQL refuses root)."""
DATABASE = "postgres"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
INITDB_TIMEOUT_S = 120.0
DURABLE_SETTINGS: Mapping[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_sync_method": "fdatasync",
    "shared_buffers": "256MB",
    "max_connections": "200",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
}


class PostgresMissing(Exception):
    """The PostgreSQL server binaries are not installed; the message says how to get them."""


class PostgresFailed(Exception):
    """The instance could not be created or started; the message has the server's log."""


@dataclass(frozen=True, slots=True)
class PgBinaries:
    initdb: Path
    postgres: Path

    @property
    def version(self) -> str:
        done = subprocess.run([str(self.postgres), "--version"], capture_output=True,
                              text=True, timeout=30, check=False)
        return done.stdout.strip()


def find_binaries(env: Mapping[str, str] | None = None,
                  search_dirs: Sequence[Path] = SEARCH_DIRS) -> PgBinaries:
    """initdb and postgres from $PG_BIN_DIR, $PATH or `search_dirs`; else PostgresMissing."""
    env = os.environ if env is None else env
    candidates: list[Path] = []
    if env.get("PG_BIN_DIR"):
        candidates.append(Path(env["PG_BIN_DIR"]))
    candidates += [Path(p) for p in env.get("PATH", "").split(os.pathsep) if p]
    candidates += search_dirs
    for directory in candidates:
        initdb, postgres = directory / "initdb", directory / "postgres"
        if all(p.is_file() and os.access(p, os.X_OK) for p in (initdb, postgres)):
            return PgBinaries(initdb, postgres)
    raise PostgresMissing(INSTALL_HINT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass(frozen=True, slots=True)
class RunAs:
    """Who the server programs run as: ourselves, or PG_RUN_AS_USER when we are root."""

    uid: int | None
    gid: int | None

    @staticmethod
    def for_this_process() -> RunAs:
        if os.geteuid() != 0:
            return RunAs(None, None)
        entry = pwd.getpwnam(PG_RUN_AS_USER)
        return RunAs(entry.pw_uid, entry.pw_gid)

    @property
    def extra_groups(self) -> list[int] | None:
        """No supplementary groups when switching user (root's would be inherited)."""
        return None if self.uid is None else []


class PostgresInstance:
    """One fresh PostgreSQL cluster in a temporary directory, for the life of a `with` block.

    Guarantees: after `__exit__` (whatever ended the block) no server process of
    ours is running and the directory is gone. `settings` are passed to the
    server in its postgresql.conf (DURABLE_SETTINGS if None); `set_setting` changes
    one at runtime (ALTER SYSTEM + reload) for settings that allow it.
    """

    def __init__(self, binaries: PgBinaries, settings: Mapping[str, str] | None = None,
                 parent_dir: Path | None = None) -> None:
        self.binaries = binaries
        self.settings = dict(DURABLE_SETTINGS if settings is None else settings)
        self.parent_dir = parent_dir
        self.run_as = RunAs.for_this_process()
        self.root: Path | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> PostgresInstance:
        try:
            self._create()
            self._start()
            self.load_schema()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _create(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="raftwallet-pg-", dir=self.parent_dir))
        if self.run_as.uid is not None:
            assert self.run_as.gid is not None
            os.chown(self.root, self.run_as.uid, self.run_as.gid)
            if not _reachable_by_others(self.root.parent):
                raise PostgresFailed(
                    f"{self.root.parent} is not reachable by the user {PG_RUN_AS_USER!r} the "
                    "server runs as (we are root; PostgreSQL refuses to run as root): choose "
                    "a parent directory such as /tmp")
        done = subprocess.run(
            [str(self.binaries.initdb), "-D", str(self.data_dir), "-U", SUPERUSER,
             "--auth=trust", "--encoding=UTF8", "--locale=C"],
            capture_output=True, text=True, timeout=INITDB_TIMEOUT_S, check=False,
            cwd=self.root, user=self.run_as.uid, group=self.run_as.gid,
            extra_groups=self.run_as.extra_groups)
        if done.returncode != 0:
            raise PostgresFailed(f"initdb failed ({done.returncode}):\n{done.stdout}\n"
                                 f"{done.stderr}")
        # In postgresql.conf rather than as -c options: a command-line option would
        # outrank ALTER SYSTEM, and set_setting must be able to change them.
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# raftwallet bench.peers\n")
            for name, value in self.settings.items():
                conf.write(f"{name} = '{value}'\n")

    def _start(self) -> None:
        assert self.root is not None and self.process is None
        self.port = free_port()
        args = [str(self.binaries.postgres), "-D", str(self.data_dir),
                "-c", "listen_addresses=127.0.0.1", "-p", str(self.port),
                "-c", f"unix_socket_directories={self.root}"]
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, start_new_session=True, user=self.run_as.uid,
                group=self.run_as.gid, extra_groups=self.run_as.extra_groups)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PostgresFailed(f"postgres exited ({self.process.returncode}) at start:\n"
                                     f"{self.log_tail()}")
            try:
                with psycopg.connect(self.conninfo, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() >= deadline:
                    raise PostgresFailed(f"postgres not accepting connections after "
                                         f"{START_TIMEOUT_S:.0f} s:\n{self.log_tail()}") from None
                time.sleep(0.1)

    def close(self) -> None:
        """Stop the server (SIGINT: fast shutdown; SIGKILL after STOP_TIMEOUT_S), remove all."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # The whole session: the postmaster and its backends.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)
        root, self.root = self.root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    # -- use ---------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    @property
    def conninfo(self) -> str:
        """libpq connection string: TCP to 127.0.0.1 (what the load generators use)."""
        return (f"host=127.0.0.1 port={self.port} dbname={DATABASE} user={SUPERUSER} "
                "application_name=raftwallet-bench")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except (OSError, AssertionError):
            return "(no log)"

    def load_schema(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(SCHEMA_PATH.read_bytes())

    def set_setting(self, name: str, value: str) -> None:
        """Change a reloadable server setting for every new and existing session."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(name), sql.Literal(value)))
            conn.execute("SELECT pg_reload_conf()")
        # The reload is asynchronous: wait (bounded) until new sessions see the value.
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.show(name) != value:
            if time.monotonic() >= deadline:
                raise PostgresFailed(f"{name} still not {value!r} after a reload")
            time.sleep(0.05)
        self.settings[name] = value

    def show(self, name: str) -> str:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute(sql.SQL("SHOW {}").format(
                sql.Identifier(name))).fetchone()
        assert row is not None
        return str(row[0])


def _reachable_by_others(directory: Path) -> bool:
    """Every directory from / down to `directory` can be traversed by any user."""
    return all(os.stat(part).st_mode & 0o001 for part in (directory, *directory.parents))
