"""The disk cache: bytes stored under a hash of (namespace, key parts, format and library versions).

One cache for everything customgrad generates (derived code per formula, compiled kernels). Where:
``$CUSTOMGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/customgrad``, else ``~/.cache/customgrad``.

API (all a caller needs)::

    load(namespace, key) -> bytes | None     # None: absent, corrupt, truncated or another version
    store(namespace, key, data)              # atomic; never raises for an unusable folder
    directory() -> Path                      # the cache's root folder
    info() -> CacheInfo                      # entries and bytes per namespace
    clear() -> int                           # removes every entry, returns how many

``key`` is a string or a sequence of strings; customgrad's version and a fingerprint of its source
files, fingerprints of the installed torch and SymPy, Python's version and `FORMAT_VERSION` are
added to it, so an entry written by another version is never read.
Entries are written to a temporary file in the same folder and renamed into place (`os.replace`),
so readers see a whole entry or none and two processes writing the same entry both succeed. Each
entry carries its key digest, length and SHA-256, so truncated or hand-edited entries are ignored
(and rebuilt by the caller). When the folder cannot be written, entries live in memory for the rest
of the process and one `CacheWarning` says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._version import __version__
from .errors import CacheWarning, UsageError

FORMAT_VERSION = 1
_MAGIC = b"customgrad-cache %d\n" % FORMAT_VERSION
_SUFFIX = ".entry"
_NAMESPACE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_ENTRY = re.compile(r"[0-9a-f]{64}\.entry")
_TEMPORARY = re.compile(r"\.[0-9a-f]{64}\..*\.tmp")

# Entries kept in memory because their folder could not be written: {(directory, namespace, digest): data}.
_memory: dict[tuple[str, str, str], bytes] = {}
_warned: set[str] = set()
_versions: list[str] = []


def directory() -> Path:
    """The cache folder: $CUSTOMGRAD_CACHE_DIR, else $XDG_CACHE_HOME/customgrad, else ~/.cache/customgrad."""
    explicit = os.environ.get("CUSTOMGRAD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "customgrad"
    return Path.home() / ".cache" / "customgrad"


def load(namespace: str, key: str | Sequence[str]) -> bytes | None:
    """The bytes stored under (namespace, key), or None when absent, unreadable, corrupt or from another version."""
    root, digest = directory(), _digest(namespace, key)
    remembered = _memory.get((str(root), namespace, digest))
    if remembered is not None:
        return remembered
    try:
        raw = (root / namespace / (digest + _SUFFIX)).read_bytes()
    except OSError:
        return None
    return _unpack(raw, digest)


def store(namespace: str, key: str | Sequence[str], data: bytes) -> None:
    """Store ``data`` under (namespace, key), atomically; in memory (one warning) when the folder is unusable."""
    if not isinstance(data, bytes | bytearray):
        raise UsageError(f"cache.store: data must be bytes, got {type(data).__name__}; encode text first")
    root, digest = directory(), _digest(namespace, key)
    folder = root / namespace
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(folder, digest, _pack(bytes(data), digest))
    except OSError as error:
        _memory[(str(root), namespace, digest)] = bytes(data)
        if str(root) not in _warned:
            _warned.add(str(root))
            warnings.warn(
                f"customgrad cannot write its cache folder {str(root)!r} ({error.strerror or error}); "
                "generated code is kept in memory for this process only. Set CUSTOMGRAD_CACHE_DIR "
                "to a writable folder to keep it between runs.",
                CacheWarning,
                stacklevel=2,
            )


@dataclass
class CacheInfo:
    """What the cache holds: per namespace, the number of entries and their total size in bytes."""

    directory: Path
    namespaces: dict[str, tuple[int, int]] = field(default_factory=dict)
    in_memory: int = 0

    @property
    def entries(self) -> int:
        """Number of entries on disk, all namespaces together."""
        return sum(count for count, _ in self.namespaces.values())

    @property
    def size(self) -> int:
        """Bytes on disk, all namespaces together."""
        return sum(size for _, size in self.namespaces.values())

    def __str__(self) -> str:
        lines = [f"cache folder: {self.directory}", f"entries: {self.entries} ({_human(self.size)})"]
        lines += [f"  {name}: {count} ({_human(size)})" for name, (count, size) in sorted(self.namespaces.items())]
        if self.in_memory:
            lines.append(f"in memory only (folder not writable): {self.in_memory}")
        return "\n".join(lines)


def info() -> CacheInfo:
    """Entries and bytes per namespace in the cache folder (nothing is created)."""
    root = directory()
    result = CacheInfo(directory=root, in_memory=sum(1 for key in _memory if key[0] == str(root)))
    for folder in _namespace_folders(root):
        count = size = 0
        for path in _owned_files(folder):
            if _ENTRY.fullmatch(path.name):
                count += 1
                size += _size(path)
        if count:
            result.namespaces[folder.name] = (count, size)
    return result


def clear() -> int:
    """Remove every cache entry (and stale temporary files); returns the number of entries removed."""
    root = directory()
    removed = 0
    for key in [key for key in _memory if key[0] == str(root)]:
        del _memory[key]
        removed += 1
    for folder in _namespace_folders(root):
        for path in _owned_files(folder):
            try:
                path.unlink()
            except OSError:
                continue
            removed += bool(_ENTRY.fullmatch(path.name))
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: something that is not ours lives there
    return removed


def _digest(namespace: str, key: str | Sequence[str]) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise UsageError(f"cache namespace must be lower-case letters, digits, '-' or '_', got {namespace!r}")
    parts = [key] if isinstance(key, str) else list(key)
    if not all(isinstance(part, str) for part in parts):
        raise UsageError(f"cache key must be a string or a sequence of strings, got {key!r}")
    text = json.dumps([FORMAT_VERSION, *_library_versions(), namespace, parts], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _library_versions() -> list[str]:
    if not _versions:
        versions = [_installed("torch"), _installed("sympy")]
        # One assignment: threads computing it at once store the same list.
        _versions[:] = [__version__, _source_fingerprint(), *versions, "{}.{}".format(*sys.version_info[:2])]
    return _versions


def _source_fingerprint() -> str:
    # customgrad's own files (names, sizes, modification times): code generation changed by an edit or
    # an upgrade within one version number (a development checkout) never reads entries of the old code.
    stamps = []
    for folder, _, files in os.walk(os.path.dirname(os.path.abspath(__file__))):
        for name in sorted(files):
            if name.endswith((".py", ".c")):
                try:
                    stat = os.stat(os.path.join(folder, name))
                except OSError:
                    continue
                stamps.append(f"{os.path.basename(folder)}/{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(stamps)).encode()).hexdigest()[:16]


def _installed(package: str) -> str:
    # The installed package's __init__ file (size and modification time: a new version or reinstall
    # changes them), the same whether or not it is imported yet, and without importing it (torch
    # takes seconds) or reading package metadata (tens of milliseconds).
    module = sys.modules.get(package)
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None:
        from importlib.util import find_spec

        spec = find_spec(package)
        origin = spec.origin if spec is not None else None
    try:
        stat = os.stat(origin) if origin else None
    except OSError:
        stat = None
    return f"{package}:{stat.st_size}:{stat.st_mtime_ns}" if stat is not None else f"{package}:none"


def _pack(data: bytes, digest: str) -> bytes:
    header = f"{digest} {len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
    return _MAGIC + header + data


def _unpack(raw: bytes, digest: str) -> bytes | None:
    if not raw.startswith(_MAGIC):
        return None
    header, newline, data = raw[len(_MAGIC) :].partition(b"\n")
    fields = header.decode("ascii", "replace").split(" ")
    if not newline or len(fields) != 3 or fields[0] != digest or fields[1] != str(len(data)):
        return None
    if hashlib.sha256(data).hexdigest() != fields[2]:
        return None
    return data


def _write_atomically(folder: Path, digest: str, payload: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{digest}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        os.replace(temporary, folder / (digest + _SUFFIX))
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _namespace_folders(root: Path) -> list[Path]:
    try:
        return [path for path in root.iterdir() if path.is_dir() and _NAMESPACE.fullmatch(path.name)]
    except OSError:
        return []


def _owned_files(folder: Path) -> list[Path]:
    try:
        children = list(folder.iterdir())
    except OSError:
        return []
    return [path for path in children if _ENTRY.fullmatch(path.name) or _TEMPORARY.fullmatch(path.name)]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _human(size: float) -> str:
    if size < 1024:
        return f"{int(size)} bytes"
    size /= 1024
    return f"{size:.1f} KiB" if size < 1024 else f"{size / 1024:.1f} MiB"
