"""Starting the service: load the system bundle, open and migrate the database, make sure an admin key
exists, run uvicorn."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from faceveil.service.app import ServiceSettings, create_app
from faceveil.service.security import new_key
from faceveil.service.storage import Repository, open_repository
from faceveil.system import ProtectedSystem, load_system
from faceveil.system.core import defense_digest


def bootstrap(system_path: str | os.PathLike, db: str | None, data=None) -> tuple[ProtectedSystem, Repository, bytes]:
    """The loaded system, the migrated repository bound to it, and the client-only bundle's bytes."""
    import tempfile

    system = load_system(system_path, data=data)
    repo = open_repository(db)
    repo.migrate(defense_digest(system.defense), _embedding_dim(system), system.metric)
    with tempfile.TemporaryDirectory() as tmp:
        client_bundle = system.save(Path(tmp) / "client.fvsys", client_only=True).read_bytes()
    return system, repo, client_bundle


def _embedding_dim(system: ProtectedSystem) -> int:
    """Length of the server's embeddings of stored templates: the recogniser's, or what the server compares
    instead (a keyed template of ``bits`` signs), measured on a zero template of the stored shape."""
    import torch

    if system.stored_shape:
        with torch.no_grad():
            return int(system.embed_protected(torch.zeros(1, *system.stored_shape), stored=True).shape[1])
    return int(system.defense.recognizer.embedding_dim)


def admin_key_path(db: str | None) -> Path:
    """Where the first admin key is written when a database has none (``<db>.admin-key``, mode 600)."""
    url = db or "sqlite:///faceveil.db"
    if url.startswith("sqlite:///") or "://" not in url:
        return Path(url[len("sqlite:///"):] if url.startswith("sqlite:///") else url).with_suffix(".admin-key")
    return Path("faceveil-admin.key")


def ensure_admin_key(repo: Repository, db: str | None) -> Path | None:
    """Create an admin key when the database has no key at all; its value goes to a 0600 file (never a log)."""
    if repo.api_keys():
        return None
    key = new_key(repo, "admin", None, admin=True)
    path = admin_key_path(db)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key + "\n").encode())
    finally:
        os.close(fd)
    return path


def configure_logging(level: str = "info") -> None:
    """Structured one-line JSON records from ``faceveil.service`` on stderr (uvicorn's access log is off)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    lg = logging.getLogger("faceveil.service")
    lg.handlers[:] = [handler]
    lg.setLevel(level.upper())
    lg.propagate = False


def serve(system_path: str | os.PathLike, db: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          settings: ServiceSettings | None = None, data=None, log_level: str = "info") -> None:
    """Run the service until interrupted."""
    import uvicorn

    configure_logging(log_level)
    system, repo, client_bundle = bootstrap(system_path, db, data)
    created = ensure_admin_key(repo, db)
    log = logging.getLogger("faceveil.service")
    if created is not None:
        log.warning('{"event": "admin_key_created", "file": "%s"}', created)
    settings = settings or ServiceSettings()
    app = create_app(system, repo, ServiceSettings(**{**settings.__dict__, "client_bundle": client_bundle}))
    log.info('{"event": "start", "host": "%s", "port": %d, "defense": "%s"}', host, port, system.defense.name)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
    finally:
        repo.close()
