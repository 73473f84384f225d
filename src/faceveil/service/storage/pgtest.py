"""A throwaway PostgreSQL server with pgvector, for the tests and the storage benchmark.

Where the server comes from, and why: the service needs pgvector (``CREATE EXTENSION vector``). Debian 12
ships ``postgresql-15`` but no pgvector package, and nothing outside the package registries can be fetched
here, so pgvector cannot be built from source either. The PyPI package ``pgserver`` (0.1.4, the ``test``
extra) bundles a PostgreSQL 16.2 build *with* pgvector 0.6.2 (HNSW) in its wheel: its binaries are what
this helper runs. It does not use pgserver's own ``get_server()``: as root that one adds a system user
(``useradd pgserver``), widens the permissions of every ancestor folder of the data and of the venv, and
keeps a global lock file and PID list; this helper only runs ``initdb``/``pg_ctl`` from the wheel in a
temporary folder, listening on a Unix socket in that folder only (no TCP), with settings for a disposable
server (``fsync=off``: a test server need not survive a power cut; a killed *client* still rolls back).

PostgreSQL refuses to run as root. Under root (CI, this machine) the server runs as an unprivileged user
(``$FACEVEIL_PG_USER``, default ``nobody``) with no supplementary groups; the data folder is created in
``/tmp`` and given to that user. If the wheel's folder is not reachable by that user (a venv under
``/root``, mode 0700), the binaries are copied into the temporary folder rather than opening up the
venv's parents.

An existing server can be used instead: ``$FACEVEIL_TEST_PG_URL`` (a ``postgresql://`` URL of a database
whose user may create databases and the ``vector`` extension).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from faceveil.service.storage.base import StorageError

#: settings of a throwaway server (no durability across an OS crash; small, quick to start)
DEFAULT_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "256MB",
    "max_connections": "50",
    "listen_addresses": "",
}


class NoServer(StorageError):
    """No PostgreSQL with pgvector can be started here (why is in the message)."""


def bundled_prefix() -> Path:
    """The PostgreSQL installation inside the ``pgserver`` wheel (bin/, lib/, share/)."""
    # located, not imported: importing pgserver sets up its own lock files and runtime folders
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise NoServer("the PyPI package pgserver is not installed (pip install -e '.[test]')")
    prefix = Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall"
    if not (prefix / "bin" / "postgres").is_file():
        raise NoServer(f"pgserver has no PostgreSQL binaries at {prefix}")
    if not (prefix / "share" / "postgresql" / "extension" / "vector.control").is_file():
        raise NoServer(f"pgserver's PostgreSQL at {prefix} has no pgvector")
    return prefix


def _reachable_by_others(path: Path) -> bool:
    """Whether any user can traverse to ``path`` (o+x on every ancestor)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _copy_install(prefix: Path, dest: Path) -> Path:
    """Copy the wheel's PostgreSQL to ``dest`` in the wheel's own layout (the binaries find their
    libraries at ``$ORIGIN/../../../pgserver.libs``); returns the copied prefix."""
    site = prefix.parent.parent
    new = dest / "pgserver" / "pginstall"
    for sub in ("bin", "lib", "share"):
        shutil.copytree(prefix / sub, new / sub, symlinks=True)
    if (site / "pgserver.libs").is_dir():
        shutil.copytree(site / "pgserver.libs", dest / "pgserver.libs", symlinks=True)
    for d, _, files in os.walk(dest):  # readable by the server's user, whatever the umask of the install
        os.chmod(d, 0o755)
        for f in files:
            fp = Path(d) / f
            if not fp.is_symlink():
                mode = fp.stat().st_mode
                fp.chmod(mode | 0o444 | (0o111 if mode & stat.S_IXUSR else 0))
    os.chmod(dest.parent, 0o755)
    return new


class PgServer:
    """A running throwaway server: :meth:`url` of a database; :meth:`stop` removes everything."""

    def __init__(self, root: Path, prefix: Path, user: pwd.struct_passwd | None) -> None:
        self.root, self.prefix, self.user = root, prefix, user
        self.data = root / "data"
        self.log = root / "server.log"

    # --- commands, as the server's user ---------------------------------------------------------
    def _run(self, exe: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kw: dict[str, Any] = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {"PATH": f"{self.prefix / 'bin'}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        return subprocess.run([str(self.prefix / "bin" / exe), *args], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=str(self.root), check=False, **kw)

    def start(self, settings: dict[str, str]) -> None:
        r = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                      "--locale=C", "--no-sync")
        if r.returncode:
            raise NoServer(f"initdb failed: {r.stderr.strip() or r.stdout.strip()}")
        opts = " ".join(f"-c {k}={v!r}" if v else f"-c {k}=''" for k, v in settings.items())
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                      "-o", f"-k {self.root} {opts}", "start")
        if r.returncode:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise NoServer(f"pg_ctl start failed: {r.stderr.strip() or r.stdout.strip()}\n{log}")

    def stop(self) -> None:
        """Stop the server (immediate: it is thrown away) and delete its folder."""
        with contextlib.suppress(Exception):
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A libpq URL of ``database`` over the server's Unix socket."""
        return f"postgresql://postgres@/{database}?host={self.root}"


@contextlib.contextmanager
def pg_server(settings: dict[str, str] | None = None) -> Iterator[PgServer]:
    """Start a throwaway PostgreSQL+pgvector server in a temporary folder; stop and delete it on exit.
    Raises :class:`NoServer` (with the reason) when none can be started."""
    prefix = bundled_prefix()
    user = None
    if os.geteuid() == 0:
        name = os.environ.get("FACEVEIL_PG_USER", "nobody")
        try:
            user = pwd.getpwnam(name)
        except KeyError as e:
            raise NoServer(f"running as root, and there is no user {name!r} to run PostgreSQL as "
                           "(set FACEVEIL_PG_USER)") from e
    # a short path: the Unix socket's path must fit in 107 bytes
    root = Path(tempfile.mkdtemp(prefix="fvpg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    server = PgServer(root, prefix, user)
    try:
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
            if not _reachable_by_others(prefix / "bin" / "postgres"):
                server.prefix = _copy_install(prefix, root / "pg")
        server.start({**DEFAULT_SETTINGS, **(settings or {})})
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()


def create_database(admin_url: str, name: str | None = None) -> str:
    """Create a fresh database on the server of ``admin_url``; returns its URL (same user and host)."""
    import psycopg
    from psycopg import sql

    name = name or f"fv_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_url, name)


def with_database(url: str, name: str) -> str:
    """``url`` (``postgresql://...``) naming database ``name`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def drop_database(admin_url: str, url: str) -> None:
    """Drop a database made by :func:`create_database` (closing its other sessions)."""
    import psycopg
    from psycopg import sql

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
