"""A throwaway PostgreSQL cluster for ``--database postgres`` and the ``backends`` section (the approach of
``tests/servers.py``): ``initdb`` into a private temporary folder, ``postgres`` on a free 127.0.0.1 port with trust
authentication, started through ``Processes`` (its own process group, stopped with the run, SIGINT: a fast
shutdown) and removed afterwards.

PostgreSQL refuses to run as root: as root the cluster belongs to an unprivileged system user (``pgtest``, the
tests' user, created with ``useradd`` when missing). Durability is set to what agent_server's SQLite side gives
(``journal_mode=WAL``, ``synchronous=NORMAL``: a commit survives the process, not necessarily the machine): WAL
fsyncs stay on, but a commit does not wait for its own (``synchronous_commit=off``). ``--pg-setting`` adds or
overrides settings (e.g. ``fsync=off`` like the tests, or ``synchronous_commit=on`` for full durability).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .procs import Child, Processes, clean_env, free_port

PG_USER = "postgres"
OS_USER = "pgtest"
DEFAULT_SETTINGS = ("synchronous_commit=off", "max_connections=400", "shared_buffers=128MB",
                    "log_min_messages=warning")


def find_bin() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: $AGENT_BENCH_PG_BIN, the PATH, or Debian's newest version."""
    override = os.environ.get("AGENT_BENCH_PG_BIN", "")
    if override:
        candidates = [override]
    else:
        on_path = shutil.which("initdb")
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: Path(p).parent.name.zfill(4),
                          reverse=True)
        candidates = [str(Path(on_path).resolve().parent) if on_path else "", *versions]
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    return None


def _owner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
                       capture_output=True, check=False)
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        return pwd.getpwnam("nobody")


class Cluster:
    def __init__(self, procs: Processes, *, settings: tuple[str, ...] = ()):
        found = find_bin()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (no initdb/postgres on the PATH or in "
                               "/usr/lib/postgresql/*/bin; set AGENT_BENCH_PG_BIN)")
        self.bindir = found
        self.procs = procs
        self.settings = (*DEFAULT_SETTINGS, *settings)
        self.folder = Path(tempfile.mkdtemp(prefix="agent-bench-pg-"))
        self.port = 0
        self.child: Child | None = None
        self._user = _owner()
        self._databases: set[str] = set()
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)

    def _as_owner(self) -> dict:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    @property
    def version(self) -> str:
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname={database}"

    def start(self, timeout: float = 60) -> Cluster:
        data = self.folder / "data"
        initdb = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--locale=C",
             "--no-sync"], capture_output=True, text=True, cwd=self.folder, env=clean_env(), **self._as_owner())
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout[-2000:]}{initdb.stderr[-2000:]}")
        for _attempt in range(3):  # the free port may be taken between looking and binding
            self.port = free_port()
            argv = [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port)]
            for setting in ("listen_addresses=127.0.0.1", f"unix_socket_directories={self.folder}", *self.settings):
                argv += ["-c", setting]
            self.child = self.procs.spawn("postgres", argv, clean_env(), cwd=self.folder, stop_signal=signal.SIGINT,
                                          **self._as_owner())
            if self._wait_ready(timeout):
                return self
        raise RuntimeError(f"postgres did not start:\n{self.child.log_tail() if self.child else ''}")

    def _wait_ready(self, timeout: float) -> bool:
        import psycopg

        deadline = time.monotonic() + timeout
        assert self.child is not None
        while time.monotonic() < deadline:
            if self.child.proc.poll() is not None:
                return False
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"postgres not ready after {timeout}s:\n{self.child.log_tail()}")

    def create_database(self, name: str) -> str:
        """A new, empty database (dropped first if it exists); its URL."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        self._databases.add(name)
        return self.url(name)

    def stop(self) -> None:
        if self.child is not None:
            self.procs.stop(self.child, timeout=20)
            self.child = None
        shutil.rmtree(self.folder, ignore_errors=True)
