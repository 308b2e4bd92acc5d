"""Start a fresh PREFECT_HOME's server from a migrated, empty database.

A server on a new PREFECT_HOME spends seconds building SQLite's schema: over a
hundred alembic migrations, many of them rewriting whole tables. The first local
server of a Prefect version on this machine has a template made beside it, in the
background and at low priority (``prefect server database upgrade`` on an empty
file in ``$NEPI_PREFECT_DB_TEMPLATE_DIR``, default ``~/.cache/nepi-prefect``).
Later fresh homes start from a copy of it: alembic finds nothing left to do. A home
that already has a database, or a custom database URL, is left alone.
``scripts/setup`` makes it at install time (``python -m nepi_prefect.orchestration.dbtemplate``),
so that even the first fresh home starts from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from nepi_prefect import settings

DB_FILE = "prefect.db"   # Prefect's default database under PREFECT_HOME
#: settings that point Prefect at another database: then there is nothing to seed
DB_URL_ENVS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


def template_path() -> Path | None:
    """The template for the installed Prefect (its schema changes with the version)."""
    folder = settings.db_template_dir()
    return None if folder is None else Path(folder) / f"prefect-{version('prefect')}-empty.db"


def _applies(env: dict[str, str]) -> bool:
    return not any(env.get(name) for name in DB_URL_ENVS)


def seed(home: Path, env: dict[str, str]) -> bool:
    """Copy the template into ``home`` if it has no database yet; True if it did."""
    template, db = template_path(), home / DB_FILE
    if template is None or not template.exists() or db.exists() or not _applies(env):
        return False
    partial = db.with_name(f"{DB_FILE}.{os.getpid()}.seed")
    shutil.copyfile(template, partial)
    os.replace(partial, db)
    return True


def start_making(prefect_cli: list[str], env: dict[str, str]) -> "Maker | None":
    """Start making the template (a niced child) unless it exists or does not apply."""
    template = template_path()
    if template is None or template.exists() or not _applies(env):
        return None
    template.parent.mkdir(parents=True, exist_ok=True)
    return Maker(template, prefect_cli, env)


class Maker:
    """``prefect server database upgrade`` on an empty file, then published atomically."""

    def __init__(self, template: Path, prefect_cli: list[str], env: dict[str, str]):
        self.template = template
        self.scratch = template.with_name(f"{template.name}.{os.getpid()}.new")
        env = {**env, DB_URL_ENVS[0]: f"sqlite+aiosqlite:///{self.scratch}"}
        self.proc = subprocess.Popen(
            ["nice", "-n", "19", *prefect_cli, "server", "database", "upgrade", "-y"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def poll(self) -> bool:
        """True once it ended (the template is published if the upgrade succeeded)."""
        code = self.proc.poll()
        if code is None:
            return False
        try:
            if code == 0:
                self._publish()
        finally:
            self._remove_scratch()
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._remove_scratch()

    def _publish(self) -> None:
        # SQLite's backup copies a consistent image, WAL included; the template is one
        # self-contained file (no WAL beside it) so that a plain copy of it is whole.
        ready = self.template.with_name(f"{self.template.name}.{os.getpid()}.ready")
        with contextlib.closing(sqlite3.connect(self.scratch)) as src, \
                contextlib.closing(sqlite3.connect(ready)) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
        os.replace(ready, self.template)

    def _remove_scratch(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.scratch}{suffix}")


def prefect_cli() -> list[str]:
    """This interpreter's ``prefect`` command."""
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


def main() -> int:
    """Make the template now (at install time), unless it exists."""
    maker = start_making(prefect_cli(), dict(os.environ))
    if maker is not None:
        maker.proc.wait()
        maker.poll()
    template = template_path()
    if template is None or not template.exists():
        print("no template database (turned off, or `prefect server database upgrade` failed)")
        return 1
    print(f"template database: {template}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
