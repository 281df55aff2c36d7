"""A throw-away PostgreSQL server for tests and benches: Debian's package, never a mock.

``initdb`` into a temporary folder as the ``postgres`` user (the server refuses to run as root),
listening on a free port of 127.0.0.1 and on a unix socket in that folder. ``available()``
says whether the machine has the server (``apt-get install postgresql``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

_USER = "postgres"


def _bin(name: str) -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/" + name))
    return found[-1] if found else shutil.which(name)


def available() -> bool:
    return _bin("initdb") is not None and _bin("pg_ctl") is not None


def _as_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", _USER, "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresServer:
    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="meshelect-pg-")
        self.data = os.path.join(self.folder, "data")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._databases = 0

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.folder, _USER)
        subprocess.run(
            _as_user([_bin("initdb") or "initdb", "-D", self.data, "-U", _USER, "-A", "trust"]),
            check=True,
            capture_output=True,
        )
        options = "-h 127.0.0.1 -p %d -k %s -c max_connections=50" % (self.port, self.folder)
        subprocess.run(
            _as_user(
                [
                    _bin("pg_ctl") or "pg_ctl",
                    "-D",
                    self.data,
                    "-o",
                    options,
                    "-w",
                    "-l",
                    os.path.join(self.folder, "log"),
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        return self

    def url(self, database: str = "postgres") -> str:
        return "postgresql://%s@127.0.0.1:%d/%s" % (_USER, self.port, database)

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self._databases += 1
        name = "t%d_%d" % (os.getpid(), self._databases)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE %s" % name)
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            _as_user([_bin("pg_ctl") or "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
        for _ in range(50):
            try:
                shutil.rmtree(self.folder)
                return
            except OSError:
                time.sleep(0.1)
