"""Small file helpers shared by every writer in the package.

Temp files: :func:`atomic_write_bytes` writes ``.<name>.<host>-<pid>-<random>.dctnet.tmp`` next
to the target, then renames it over the target. A process killed mid-write (``kill -9``, a
power cut) leaves such a file behind; :func:`remove_stale_temps` (run by the file pipeline on
each output folder before it writes) recognises and removes the stale ones: those of a process
of this host that no longer runs, and any older than :data:`STALE_TEMP_SECONDS`. Temp files of
the older ``.<name>.<random>.tmp`` form count as stale after that age. Temp names never end in an
image extension, so they are never taken for outputs or inputs.
"""
from __future__ import annotations

import os
import re
import secrets
import socket
import time
import zlib
from pathlib import Path
from typing import List, Optional

#: The suffix of every temp file :func:`atomic_write_bytes` makes.
TEMP_SUFFIX = ".dctnet.tmp"
#: A temp file older than this (seconds) is stale whoever wrote it.
STALE_TEMP_SECONDS = 3600.0
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-(?P<rand>[0-9a-z]+)"
                      + re.escape(TEMP_SUFFIX) + r"$")
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<rand>[a-z0-9_]{8})\.tmp$")  # mkstemp's names


def _host_tag() -> str:
    return format(zlib.crc32(socket.gethostname().encode()) & 0xFFFFFF, "06x")


def temp_name(name: str) -> str:
    """The temp file name :func:`atomic_write_bytes` uses for a target called ``name``."""
    return f".{name}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temp files (current or legacy form)."""
    return bool(_TEMP_RE.match(name) or _LEGACY_TEMP_RE.match(name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return True
    return True


def is_stale_temp(path, now: Optional[float] = None) -> bool:
    """Whether ``path`` is a temp file of ours that no writer will finish: its process (on this
    host) is gone, or it is older than :data:`STALE_TEMP_SECONDS`. Never the current process's."""
    path = Path(path)
    m = _TEMP_RE.match(path.name)
    legacy = None if m else _LEGACY_TEMP_RE.match(path.name)
    if not m and not legacy:
        return False
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except OSError:
        return False
    if m:
        pid = int(m.group("pid"))
        if m.group("host") == _host_tag():
            if pid == os.getpid():
                return False
            if not _pid_alive(pid):
                return True
    return age > STALE_TEMP_SECONDS


def remove_stale_temps(folder) -> List[Path]:
    """Remove the stale temp files (:func:`is_stale_temp`) directly inside ``folder``; returns
    the removed paths. Missing or unreadable folders are skipped."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        if e.name.startswith(".") and is_stale_temp(e.path, now):
            try:
                os.unlink(e.path)
                removed.append(Path(e.path))
            except OSError:
                pass
    return removed


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder (:func:`temp_name`),
    then ``os.replace``.

    Readers see the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def portable_path(path) -> str:
    """A path fit to store in a report or a checkpoint's provenance: relative to the working folder
    when it lies inside it, else its last two components; never one machine's absolute path."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(*p.parts[-2:]).as_posix() if len(p.parts) > 2 else p.name
