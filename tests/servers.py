"""Throwaway PostgreSQL and Redis servers for the tests: real servers, on 127.0.0.1 only, in a temporary folder.

Why real servers: the PostgreSQL side of the database interface (locks, isolation, LISTEN/NOTIFY, the same
Alembic history) and the shared rate limits can only be trusted against the real thing. Both run without
durability (a crash loses nothing a test needs) and are stopped, and their folder removed, when the session ends.

PostgreSQL refuses to run as root, and the tests run as root (CI, the developers' machines): the cluster then
belongs to an unprivileged system user (``pgtest``, created with ``useradd`` on first use), and ``initdb`` and
``postgres`` are started as that user (``subprocess.Popen(user=..., group=...)``). Connections use trust
authentication over TCP on loopback; the unix socket lives in the private temporary folder.

``find_postgres_bin`` and ``shutil.which("redis-server")`` return None on a machine without the servers: the
fixtures turn that into a skip, or a failure under ``CI=true``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg

PG_USER = "postgres"  # the cluster's superuser (a role name, not an OS user)
PG_PASSWORD = "pg-test-password"  # ignored by trust authentication; in the URLs so that hiding it is tested
OS_USER = "pgtest"
SPEED = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
# Read once, at import: the tests' autouse fixture removes every AGENT_* variable before each test.
PG_BIN_OVERRIDE = os.environ.get("AGENT_TEST_PG_BIN", "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: $AGENT_TEST_PG_BIN (then only it), else the PATH, else Debian's
    newest version."""
    if PG_BIN_OVERRIDE:
        candidates = [PG_BIN_OVERRIDE]
    else:
        on_path = shutil.which("initdb")
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: Path(p).parent.name.zfill(4),
                          reverse=True)
        candidates = [str(Path(on_path).resolve().parent) if on_path else "", *versions, "/usr/local/pgsql/bin"]
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    """None when not root (the cluster is ours); else the system user the cluster runs as, created if missing."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
                   capture_output=True, check=False)  # may race another session: look again either way
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        return pwd.getpwnam("nobody")


class PostgresServer:
    """One cluster: ``start()``, ``create_database``/``drop_database`` (through one admin connection), ``stop()``."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="agent-pg-"))
        self.data = self.folder / "data"
        self.log_path = self.folder / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._admin: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._user = _unprivileged_user()
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)

    def _as_owner(self) -> dict:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def url(self, database: str, *, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30) -> PostgresServer:
        initdb = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER, "-E", "UTF8",
             "--locale=C", "--no-sync"],
            capture_output=True, text=True, cwd=self.folder, **self._as_owner())
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        for _attempt in range(3):  # the free port may be taken between looking and binding
            self.port = free_port()
            settings = [*SPEED, "listen_addresses=127.0.0.1", f"unix_socket_directories={self.folder}",
                        "max_connections=300", "log_min_messages=warning"]
            command = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
            for setting in settings:
                command += ["-c", setting]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
                                             **self._as_owner())
            if self._wait_ready(timeout):
                return self
        raise RuntimeError(f"postgres did not start:\n{self.log()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                self._admin = psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, dbname="postgres",
                                              autocommit=True, connect_timeout=2)
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"postgres not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """A new database (a copy of ``template`` when given: a file copy, milliseconds); its URL."""
        statement = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        with self._lock:
            assert self._admin is not None
            self._admin.execute(statement)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Dropped even if a test left connections open (``FORCE`` ends them)."""
        with self._lock:
            assert self._admin is not None
            self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown (ends the sessions, no checkpoint wait)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


class RedisServer:
    """``redis-server`` on a free loopback port, without persistence, in its own temporary folder."""

    def __init__(self, binary: str):
        self.binary = binary
        self.folder = Path(tempfile.mkdtemp(prefix="agent-redis-"))
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> RedisServer:
        import redis

        for _attempt in range(3):
            self.port = free_port()
            with open(self.folder / "redis.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                     "no", "--dir", str(self.folder)], stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1) as client:
                        client.ping()
                    return self
                except redis.ConnectionError:
                    time.sleep(0.05)
            self.stop(remove=False)
        raise RuntimeError("redis-server did not start:\n" + (self.folder / "redis.log").read_text(errors="replace"))

    def flush(self) -> None:
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            client.flushall()

    def stop(self, *, remove: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)
