"""Small I/O helpers shared by the library and the Kedro datasets."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Readers never see a half-written file: the data are written to a temporary file in
    the same directory (so the rename is atomic on POSIX) and moved into place only when
    the ``with`` block exits without an exception. On failure the temporary file is
    removed and ``target`` is left as it was. The file gets the permissions of the file it
    replaces, or the usual ``0666 & ~umask`` (``mkstemp`` alone would leave it ``0600``).

    Args:
        target: The final path of the file.

    Yields:
        The temporary path to write to.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(mode)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    """Return the process umask without changing it (read from /proc on Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"^Umask:\s*([0-7]+)", status, flags=re.MULTILINE)
        if match:
            return int(match.group(1), 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the set-and-restore idiom
    os.umask(mask)
    return mask
