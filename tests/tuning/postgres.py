"""A throwaway PostgreSQL server for the shared-study tests (Debian's ``postgresql`` package).

:func:`start_server` runs ``initdb`` and ``pg_ctl`` of the newest installed major version in a
fresh folder, listening on 127.0.0.1 on a free port with ``trust`` authentication. PostgreSQL
refuses to run as root, so under root the folder is handed to the ``postgres`` user and the
commands run as that user (``runuser``). ``.ci/run`` installs the package.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed or could not start here (the reason is the message)."""


@dataclass
class PostgresServer:
    """A running server: its URL for SQLAlchemy/Optuna, and how to stop it."""

    url: str
    data_dir: Path
    bin_dir: Path
    as_user: list[str]

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        subprocess.run(
            [
                *self.as_user,
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _bin_dir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresUnavailable("no initdb found (install Debian's postgresql package)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server() -> PostgresServer:
    """Start a fresh server; raise :class:`PostgresUnavailable` with the reason if it cannot."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="perturbflow-pg-"))
    data_dir = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root and no runuser to switch to postgres")
        as_user = [runuser, "-u", "postgres", "--"]
        os.chmod(root, 0o755)
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    steps = [
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data_dir),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off",
            "start",
        ],
    ]
    for cmd in steps:
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").is_file() else ""
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable(
                f"{Path(cmd[0]).name} failed: {done.stdout[-800:]} {done.stderr[-800:]} "
                f"{log[-800:]}"
            )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # pg_ctl -w waited; this guards a slow first accept
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    return PostgresServer(url=url, data_dir=data_dir, bin_dir=bin_dir, as_user=as_user)
