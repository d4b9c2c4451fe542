"""A private PostgreSQL server for tests, on loopback in a temporary folder.

Import the fixture into a test module (``from postgres import postgres  #
noqa: F401``). One server runs per test session, started by the first test
that uses it; each test gets a database
of its own, owned by the password-protected role ``nightbox``, and reaches
it through ``Postgres.dsn`` over TCP on 127.0.0.1. The server refuses to
run as root, so a root test run starts it as the ``postgres`` system user.
``make test`` installs PostgreSQL when it is missing.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from appliance.bus.broker import free_port

ROLE = "nightbox"
# The system user that runs the server when the tests run as root.
SYSTEM_USER = "postgres"
SUPERUSER = "postgres"
_COMMAND_TIMEOUT_S = 120.0
_database_numbers = itertools.count(1)


def find_postgres_bin() -> Path | None:
    """Return the folder with initdb and pg_ctl, newest version first, or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: _version_key(Path(path).parent.parent.name),
        reverse=True,
    )
    found = shutil.which("initdb")
    if found:
        candidates.append(found)
    for candidate in candidates:
        folder = Path(candidate).resolve().parent
        if os.access(folder / "pg_ctl", os.X_OK):
            return folder
    return None


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


class PostgresServer:
    """One PostgreSQL server with its data and socket under ``folder``."""

    def __init__(self, bin_dir: Path, folder: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = folder
        self.data_dir = folder / "data"
        self.socket_dir = folder
        self.log_path = folder / "server.log"
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.password = secrets.token_urlsafe(18)
        self._system_user = SYSTEM_USER if os.geteuid() == 0 else None

    def _command(self, program: str, *arguments: str) -> None:
        command = [str(self.bin_dir / program), *arguments]
        if self._system_user is not None:
            command = ["runuser", "-u", self._system_user, "--", *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            pytest.fail(
                f"{program} failed with exit code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\nserver log:\n{log[-4000:]}"
            )

    def initialise(self) -> None:
        """Create the cluster: local socket logins trusted, TCP by password."""
        if self._system_user is not None:
            try:
                account = pwd.getpwnam(self._system_user)
            except KeyError:
                pytest.fail(
                    f"the tests run as root, and PostgreSQL must run as the "
                    f"{self._system_user!r} system user, which does not exist; "
                    "install Debian's postgresql package, which creates it"
                )
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self._command(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-locale",
            # A test cluster need not survive a power cut.
            "--no-sync",
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses={self.host} "
            "-c fsync=off"
        )
        self._command(
            "pg_ctl",
            "--pgdata",
            str(self.data_dir),
            "--log",
            str(self.log_path),
            "--options",
            options,
            "--wait",
            "start",
        )

    def stop(self) -> None:
        """Stop the server with a fast shutdown: sessions end, commits stay."""
        self._command(
            "pg_ctl", "--pgdata", str(self.data_dir), "--mode", "fast", "--wait", "stop"
        )

    def restart(self) -> None:
        """Stop the server and start it again on the same port."""
        self.stop()
        self.start()

    def accepts_connections(self) -> bool:
        """Whether the server is up and accepts a superuser login."""
        try:
            with self.admin():
                return True
        except psycopg.OperationalError:
            return False

    def stop_if_running(self) -> None:
        """Stop the server unless it is already stopped."""
        if self.accepts_connections():
            self.stop()

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """Return a superuser connection over the unix socket, in autocommit."""
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            autocommit=True,
        )

    def create_role(self) -> None:
        """Create the login role ``nightbox`` with the server's password."""
        with self.admin() as connection:
            connection.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(self.password)
                )
            )

    def create_database(self, name: str) -> None:
        """Create an empty database owned by ``nightbox``."""
        with self.admin() as connection:
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(ROLE)
                )
            )

    def drop_database(self, name: str) -> None:
        """Drop a database, ending any session still connected to it."""
        with self.admin() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )

    def dsn(self, dbname: str, password: str | None = None) -> str:
        """Return the URL of ``dbname`` for the role ``nightbox`` over TCP."""
        secret = self.password if password is None else password
        return f"postgresql://{ROLE}:{secret}@{self.host}:{self.port}/{dbname}"


@dataclass
class Postgres:
    """A fresh database on the test server, as a test uses it."""

    server: PostgresServer
    dbname: str

    @property
    def dsn(self) -> str:
        """``postgresql://nightbox:<password>@127.0.0.1:<port>/<database>``."""
        return self.server.dsn(self.dbname)

    @property
    def password(self) -> str:
        """The password of the role ``nightbox``."""
        return self.server.password

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        """Return an autocommit connection to the test's database, as ``nightbox``."""
        return psycopg.connect(self.dsn, autocommit=True)

    def query(self, statement: str) -> list[tuple[object, ...]]:
        """Run one query in the test's database and return all its rows."""
        with self.connect() as connection:
            return connection.execute(statement).fetchall()

    def stop(self) -> None:
        """Stop the server. Connections fail until :meth:`start`."""
        self.server.stop()

    def start(self) -> None:
        """Start the server again after :meth:`stop`."""
        self.server.start()

    def restart(self) -> None:
        """Stop and start the server, ending every open session."""
        self.server.restart()


_SERVER_KEY = pytest.StashKey[PostgresServer]()


def _shared_server(config: pytest.Config) -> PostgresServer:
    """Return the session's server, starting it on first use.

    The server is stopped and its folder removed when the test session ends.
    """
    if _SERVER_KEY in config.stash:
        return config.stash[_SERVER_KEY]
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin "
            "or on PATH); run 'make test', which installs it"
        )
    # A short folder under /tmp, because a unix socket path is limited to
    # 107 bytes and pytest's temporary folders can be longer.
    folder = Path(tempfile.mkdtemp(prefix="nightbox-pg-"))
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    server = PostgresServer(bin_dir, folder)
    server.initialise()
    server.start()
    config.add_cleanup(server.stop_if_running)
    server.create_role()
    config.stash[_SERVER_KEY] = server
    return server


@pytest.fixture
def postgres(request: pytest.FixtureRequest) -> Iterator[Postgres]:
    """A new, empty database on the session's server, dropped after the test."""
    server = _shared_server(request.config)
    name = f"nightbox_{next(_database_numbers)}"
    server.create_database(name)
    try:
        yield Postgres(server, name)
    finally:
        # A test may stop the server; the next test needs it running.
        if not server.accepts_connections():
            server.start()
        server.drop_database(name)
