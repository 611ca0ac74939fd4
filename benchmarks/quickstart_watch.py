"""What a user watching the quick start sees: the longest silence, the wall time, a clean tree.

Runs a command (default ``kedro run``, the README's quick start) in a project folder, either
on a pseudo-terminal (as typed in a terminal: tqdm redraws its bar there) or with its output
redirected to a file (``kedro run > run.log 2>&1``), and records when each piece of output
arrived. Reports the wall time, the longest gap between two outputs (the issue's bar: some
progress at least every 30 s), and ``git status --porcelain`` afterwards (the quick start must
leave the tracked tree as it was).

Example (a fresh clone, the project's venv)::

    git clone . /tmp/qs && cd /tmp/qs
    python benchmarks/quickstart_watch.py --mode file --out docs/results/quickstart_file.json
    rm -rf data/0[2-8]_* && git checkout data   # start again from the raw screens
    python benchmarks/quickstart_watch.py --mode terminal --out docs/results/quickstart_tty.json
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path


def _watch_terminal(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple:
    """Run ``cmd`` on a pseudo-terminal; the arrival time of every chunk of output."""
    master, slave = pty.openpty()
    # a terminal of 40 x 120 (a bare pty is 0 x 0: tqdm then draws nothing, rich wraps at 80)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    os.set_blocking(master, False)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    times, data = [], bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                chunk = b""
            if chunk:
                times.append(time.monotonic() - started)
                data += chunk
                continue
        if proc.poll() is not None:  # exited, and its output read to the end
            break
    os.close(master)
    return [*times, time.monotonic() - started], bytes(data), proc.returncode


def _watch_file(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple:
    """Run ``cmd`` with stdout and stderr to ``log``; poll the file's growth every 0.5 s."""
    started = time.monotonic()
    with log.open("wb") as handle:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
        times, size = [], 0
        while proc.poll() is None:
            time.sleep(0.5)
            now = log.stat().st_size
            if now > size:
                times.append(time.monotonic() - started)
                size = now
    return [*times, time.monotonic() - started], log.read_bytes(), proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["terminal", "file"], required=True)
    parser.add_argument("--cwd", default=".", help="the project folder (default: here)")
    parser.add_argument("--out", required=True, help="JSON summary (the output beside it, .log)")
    parser.add_argument("cmd", nargs="*", default=["kedro", "run"])
    args = parser.parse_args()
    cwd = Path(args.cwd).resolve()
    env = {k: v for k, v in os.environ.items() if k != "KEDRO_DISABLE_TELEMETRY"}
    cmd = args.cmd or ["kedro", "run"]
    if args.mode == "terminal":
        times, output, code = _watch_terminal(cmd, cwd, env)
        Path(args.out).with_suffix(".log").write_bytes(output)
    else:
        times, output, code = _watch_file(cmd, cwd, env, Path(args.out).with_suffix(".log"))
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True
    ).stdout
    summary = {
        "mode": args.mode,
        "command": " ".join(cmd),
        "exit_code": code,
        "wall_s": round(times[-1], 1),
        "longest_silence_s": round(max(gaps), 1),
        "outputs": len(times) - 1,
        "git_status_porcelain": status.splitlines(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "last_lines": output.decode(errors="replace").splitlines()[-3:],
    }
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "last_lines"}, indent=1))
    sys.exit(0 if code == 0 else 1)


if __name__ == "__main__":
    main()
