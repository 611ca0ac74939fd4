"""Resolve the file patterns of a split TOML's ``[datasets]`` section.

STATE/cell-load accepts a file, a directory (every ``*.h5ad`` inside), a glob and a shell
brace pattern such as ``/data/{k562,hepg2}.h5ad``. Python's :mod:`glob` knows no braces,
so :func:`expand_braces` expands them first (nested and repeated groups included, as bash
does); every alternative is then globbed (``*``, ``?``, ``[...]`` and recursive ``**``).
"""

from __future__ import annotations

import glob
from pathlib import Path

_GLOB_CHARS = frozenset("*?[")


def _brace_group(pattern: str, start: int) -> tuple[int, list[int]] | None:
    """Find the ``}`` closing the ``{`` at ``start`` and the top-level commas in between."""
    depth, commas = 0, []
    for i in range(start, len(pattern)):
        char = pattern[i]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i, commas
        elif char == "," and depth == 1:
            commas.append(i)
    return None


def expand_braces(pattern: str) -> list[str]:
    """Expand shell brace groups: ``a{b,c{d,e}}f`` -> ``[abf, acdf, acef]``.

    A group without a top-level comma (``{x}``) or without a closing brace is kept
    literally, as bash does.

    Args:
        pattern: A path pattern, possibly with brace groups.

    Returns:
        The expanded patterns in order of appearance, duplicates removed.
    """
    for start, char in enumerate(pattern):
        if char != "{":
            continue
        group = _brace_group(pattern, start)
        if group is None or not group[1]:
            continue
        end, commas = group
        bounds = [start, *commas, end]
        alternatives = [pattern[a + 1 : b] for a, b in zip(bounds, bounds[1:], strict=False)]
        head, tail = pattern[:start], pattern[end + 1 :]
        expanded = [p for alt in alternatives for p in expand_braces(head + alt + tail)]
        return list(dict.fromkeys(expanded))
    return [pattern]


def _h5ad_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.h5ad") if p.is_file())


def _match(pattern: str) -> list[Path]:
    """Files matched by one brace-free pattern (a directory gives the h5ad files inside)."""
    if _GLOB_CHARS.isdisjoint(pattern):
        path = Path(pattern)
        if path.is_dir():
            return _h5ad_in(path)
        return [path] if path.is_file() else []
    files: list[Path] = []
    for hit in glob.glob(pattern, recursive=True):
        path = Path(hit)
        files += _h5ad_in(path) if path.is_dir() else [path]
    return files


def resolve_dataset_pattern(
    pattern: str, base_dir: Path, *, check_files: bool = True
) -> tuple[list[Path], list[str]]:
    """Resolve one ``[datasets]`` value to a sorted, de-duplicated list of files.

    Args:
        pattern: File, directory, glob or brace pattern; ``~`` is expanded and a relative
            pattern is taken relative to ``base_dir`` (the TOML file's directory).
        base_dir: Directory relative patterns are resolved against.
        check_files: When ``False``, a plain path that does not exist is still returned
            (globs can only return what exists).

    Returns:
        The matched files (absolute, sorted) and the expanded alternatives that matched
        nothing (absolute patterns; empty when every alternative matched).
    """
    files: set[Path] = set()
    unmatched: list[str] = []
    for alternative in expand_braces(pattern):
        path = Path(alternative).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        matched = _match(str(path))
        if not matched:
            unmatched.append(str(path))
            if not check_files and _GLOB_CHARS.isdisjoint(str(path)):
                matched = [path]
        files.update(p.resolve() for p in matched)
    return sorted(files), unmatched
