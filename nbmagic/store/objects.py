"""Content-addressed object store: each value is stored once, under ``objects/<hash[:2]>/<hash>/``.

A value is serialized (:mod:`nbmagic.runtime.marshal`) into a private temp directory under ``tmp/``, its files
made read-only, then the directory is renamed into place in one atomic step. If the object already exists
(another run or process stored the same value first) the temp directory is discarded, so concurrent writers
of one value are safe and the value is kept once. A process killed mid-write leaves only its temp
directory, which :meth:`ObjectStore.sweep_tmp` removes; ``objects/`` never holds a half-written value.

Guarantees: a value written or re-found is touched under the store's gc lock (held shared), so gc (which
holds it exclusively and spares values newer than the oldest running run) never deletes it under a live
run; a full filesystem is :class:`StoreFull` naming the variable, with nothing left behind; a value whose
bytes do not match its hash is removed when found (on load, on re-store, or by :meth:`verify_all`), so the
next run recomputes it; every folder is 0700 and every file 0400, whatever the umask.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nbmagic.errors import SerializationError
from nbmagic.runtime import marshal
from nbmagic.runtime.secret_search import files_hold_secret, holds_secret

from .processes import alive

_HASH = re.compile(r"[0-9a-f]{16,128}")
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


class StoreError(SerializationError, marshal.MarshalError):
    """A value could not be stored, found or loaded (one line naming the value)."""


class StoreFull(StoreError):
    """The filesystem holding the store has no room for a value."""

    disk_full = True


class CorruptValueError(StoreError):
    """A stored value did not match its hash; it has been removed so the next run recomputes it."""


LOCK_FILE = "gc.lock"
KEY_FILE = "key"
SIGNATURE = "manifest.sig"
#: formats whose loading never runs code from the file; every other format (pickle, dill, joblib, torch, …) can
SAFE_FORMATS = frozenset({"npy", "npy-scalar", "parquet"})


class SecretValue(StoreError):
    """A value that equals or contains a secret the run injected: never written to the store."""


# one check with the compiled steps' (runtime/secret_search.py); run/ imports it under this name
_holds_secret = holds_secret


class UntrustedValue(StoreError):
    """A stored value whose manifest is not signed with this store's key: refused before loading."""


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in marshal.DISK_FULL


@dataclass(frozen=True)
class ValueRef:
    """A stored value: its content hash plus what a listing needs without opening the object."""

    hash: str
    type: str
    format: str
    size: int
    name: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValueRef:
        return cls(**{k: data[k] for k in ("hash", "type", "format", "size", "name")})


class ObjectStore:
    """Values on disk keyed by content hash, safe for several processes at once."""

    def __init__(self, root: str | os.PathLike, fsync: bool = False, remote: Any = None):
        """``fsync=True`` also flushes each new object to disk before it becomes visible (power-loss safety;
        a kill -9 needs no fsync). Without it a torn object after a power cut is caught by the hash on load.
        ``remote``: a shared store (:class:`~nbmagic.store.remote.RemoteStore`) values missing here are pulled
        from, once, into this store (see :meth:`available`)."""
        self.root = Path(root)
        self.remote = remote
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        self.fsync = fsync
        self._key: bytes | None = None

    # ------------------------------------------------------------------ authentication
    def key(self) -> bytes | None:
        """The store's secret key (``<store>/key``, 0600, made with the store); None if it cannot be made."""
        if self._key is None:
            path = self.root / KEY_FILE
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            except OSError:
                return None
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(secrets.token_bytes(32))
            try:
                key = path.read_bytes()
            except OSError:
                return None
            if len(key) < 32:  # being written by another process this instant
                time.sleep(0.05)
                key = path.read_bytes()
            self._key = key
        return self._key

    def _sign(self, folder: Path) -> None:
        key = self.key()
        if key is None:
            return
        digest = hmac.new(key, (folder / marshal.MANIFEST).read_bytes(), hashlib.sha256).hexdigest()
        (folder / SIGNATURE).write_text(digest)

    def signed(self, digest: str) -> bool:
        """True when the value's manifest carries a valid signature made with this store's key."""
        folder = self._path(digest)
        key = self.key()
        try:
            given = (folder / SIGNATURE).read_text().strip()
            manifest = (folder / marshal.MANIFEST).read_bytes()
        except OSError:
            return False
        return key is not None and hmac.compare_digest(given, hmac.new(key, manifest, hashlib.sha256).hexdigest())

    def _check_trust(self, digest: str, name: str) -> None:
        """Refuse, before anything is unpickled, a value whose manifest this store did not sign."""
        if self.signed(digest):
            return
        try:
            fmt = marshal.read_manifest(self._path(digest), name).get("format")
        except marshal.MarshalError:
            fmt = None
        if fmt in SAFE_FORMATS:
            return  # loading these never runs code; the content hash still guards the bytes
        raise UntrustedValue(
            f"stored value {name!r} ({fmt or 'unknown format'}) is not signed with this store's key: refused before"
            f" loading, as it could run code ({self._path(digest)})"
        )

    # ------------------------------------------------------------------ paths
    def _path(self, digest: str) -> Path:
        if not isinstance(digest, str) or not _HASH.fullmatch(digest):
            raise StoreError(f"not a value hash: {str(digest)[:40]!r}")
        return self.objects_dir / digest[:2] / digest

    def _new_tmp(self, kind: str = "w") -> Path:
        if not self.tmp_dir.is_dir():
            self.tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.tmp_dir.chmod(0o700)
        path = self.tmp_dir / f"{kind}-{os.getpid()}-{_HOST}-{uuid.uuid4().hex[:12]}"
        path.mkdir(mode=0o700)
        path.chmod(0o700)  # whatever the umask
        return path

    @contextlib.contextmanager
    def _lease(self) -> Iterator[None]:
        """Hold the store's gc lock shared: gc (exclusive) cannot judge or delete values meanwhile."""
        try:
            fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            yield  # a read-only store: no gc can run there either
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _touch(self, digest: str) -> bool:
        """Mark a re-found value as just used (gc spares values newer than the oldest running run)."""
        try:
            os.utime(self._path(digest))
            return True
        except FileNotFoundError:
            return False
        except OSError:
            return True  # e.g. a read-only store: nothing can collect it either

    def _intact(self, digest: str, name: str) -> bool:
        """Re-found value's bytes still match its hash and its manifest is signed; else it is removed (and so rewritten)."""
        try:
            marshal.verify(self._path(digest), name, expected_hash=digest)
            if self.signed(digest) or self.key() is None:
                return True
        except marshal.CorruptValue:
            pass
        self.delete(digest)
        return False

    # ------------------------------------------------------------------ write
    def put(self, obj: Any, name: str, secrets: tuple[str, ...] | list[str] = ()) -> ValueRef:
        """Store obj (once, however often it is put) and return its reference.

        Raises :class:`StoreFull` (one line naming the variable) when the filesystem has no room, and
        :class:`SecretValue` when obj equals or contains one of ``secrets`` (the values a run injected);
        nothing is left behind then.
        """
        secrets = tuple(s for s in secrets if s)
        if secrets and holds_secret(obj, secrets):
            raise SecretValue(f"variable {name!r} holds a secret")
        known = marshal.fingerprint(obj, name)
        if known is not None:
            with self._lease():
                if self.exists(known) and self._intact(known, name) and self._touch(known):
                    return self._ref(known, name)
        tmp = self._new_tmp()
        try:
            try:
                manifest = marshal.save(obj, tmp, name)
                if secrets and files_hold_secret(tmp, secrets):
                    raise SecretValue(f"variable {name!r} holds a secret")
                self._sign(tmp)
                for p in tmp.iterdir():
                    p.chmod(0o400)
                    if self.fsync:
                        _fsync(p)
                if self.fsync:
                    _fsync(tmp)
            except OSError as exc:
                if _disk_full(exc):
                    raise StoreFull(f"cannot store variable {name!r}: no space left on device ({self.root})") from None
                raise StoreError(f"cannot store variable {name!r}: {exc.strerror or exc}") from None
            except StoreError:
                raise  # SecretValue from the file search, as it is
            except marshal.MarshalError as exc:
                raise StoreError(str(exc)) from exc
            digest = manifest["hash"]
            final = self._path(digest)
            with self._lease():
                if self.exists(digest) and self._intact(digest, name) and self._touch(digest):
                    return self._ref(digest, name, manifest)  # another process stored the same value first
                try:
                    if not final.parent.is_dir():
                        self.objects_dir.mkdir(mode=0o700, exist_ok=True)
                        self.objects_dir.chmod(0o700)
                        final.parent.mkdir(mode=0o700, exist_ok=True)
                        final.parent.chmod(0o700)
                    os.rename(tmp, final)
                except OSError as exc:
                    if _disk_full(exc):
                        raise StoreFull(
                            f"cannot store variable {name!r}: no space left on device ({self.root})"
                        ) from None
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise StoreError(f"cannot store variable {name!r}: {exc}") from exc
                    self._touch(digest)  # stored meanwhile by another process: theirs is identical
                else:
                    if self.fsync:
                        _fsync(final.parent)
            return self._ref(digest, name, manifest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _ref(self, digest: str, name: str, manifest: dict | None = None) -> ValueRef:
        m = manifest or self.manifest(digest)
        return ValueRef(digest, m["type"], m["format"], int(m["size"]), name)

    # ------------------------------------------------------------------ read
    def get(
        self, ref_or_hash: ValueRef | str, name: str | None = None, mmap: bool = True, mmap_threshold: int | None = None
    ) -> Any:
        """Load a value, verified against its hash (StoreError names the value if missing or corrupt).

        ``mmap_threshold``: arrays at least this large are memory-mapped (default ``marshal.MMAP_THRESHOLD``)."""
        digest = ref_or_hash.hash if isinstance(ref_or_hash, ValueRef) else ref_or_hash
        if name is None and isinstance(ref_or_hash, ValueRef):
            name = ref_or_hash.name
        path = self._path(digest)
        if not self.available(digest, name or digest[:12]):
            raise StoreError(f"stored value {name or digest[:12]!r} is not in the store (hash {digest[:12]})")
        self._check_trust(digest, name or digest[:12])
        try:
            return marshal.load(path, name, mmap, expected_hash=digest, mmap_threshold=mmap_threshold)
        except StoreError:
            raise
        except marshal.CorruptValue as exc:
            self.delete(digest)
            raise CorruptValueError(
                f"{exc}; it was removed from the store, so the step that made it runs again on the next run"
            ) from None
        except marshal.MarshalError as exc:
            raise StoreError(str(exc)) from exc

    def manifest(self, digest: str) -> dict:
        """The value's manifest (type, format, files, size, hash, versions)."""
        path = self._path(digest)
        if not path.exists():
            raise StoreError(f"value {digest[:12]} is not in the store")
        try:
            return marshal.read_manifest(path, digest[:12])
        except marshal.MarshalError as exc:
            raise StoreError(str(exc)) from exc

    def exists(self, digest: str) -> bool:
        """The value is in this (local) store."""
        return (self._path(digest) / marshal.MANIFEST).exists()

    def available(self, digest: str, name: str | None = None) -> bool:
        """The value is here, or was just pulled from the shared store (checked against its hash)."""
        if self.exists(digest):
            return True
        return self.remote is not None and self.remote.pull_object(self, digest, name or digest[:12])

    def size(self, digest: str) -> int:
        """Bytes of the value's data files."""
        return int(self.manifest(digest)["size"])

    def iter_hashes(self) -> Iterator[str]:
        """Every stored value's hash (order unspecified)."""
        if not self.objects_dir.is_dir():
            return
        with os.scandir(self.objects_dir) as shards:
            for shard in shards:
                if len(shard.name) != 2 or not shard.is_dir():
                    continue
                with os.scandir(shard.path) as entries:
                    for e in entries:
                        if e.name.startswith(shard.name) and _HASH.fullmatch(e.name):
                            yield e.name

    def unsigned(self) -> list[tuple[str, str, int]]:
        """(hash, format, bytes) of each value not signed with this store's key whose format can run code when
        loaded (pickle, dill, joblib, ...): ``%restore`` refuses these."""
        found = []
        for digest in self.iter_hashes():
            if self.signed(digest):
                continue
            try:
                manifest = marshal.read_manifest(self._path(digest), digest[:12])
            except marshal.MarshalError:
                manifest = {}
            fmt = manifest.get("format") or "unknown format"
            if fmt not in SAFE_FORMATS:
                found.append((digest, fmt, int(manifest.get("size") or 0)))
        return found

    def vouch(self, digest: str) -> None:
        """Sign an unsigned value the user trusts; its bytes are checked against its hash first
        (``marshal.CorruptValue`` if they do not match)."""
        folder = self._path(digest)
        marshal.verify(folder, digest[:12], expected_hash=digest)
        if self.key() is None:
            raise StoreError(f"the store has no signing key ({self.root}): cannot sign values")
        tmp = folder / f"{SIGNATURE}.{os.getpid()}.tmp"
        tmp.write_text(hmac.new(self.key(), (folder / marshal.MANIFEST).read_bytes(), hashlib.sha256).hexdigest())
        tmp.chmod(0o400)
        os.replace(tmp, folder / SIGNATURE)

    def verify_all(self) -> tuple[int, list[tuple[str, str]]]:
        """Check every stored value's bytes against its hash; remove the corrupt ones.

        Returns (how many were checked, [(hash, one-line reason) of each removed value]).
        """
        checked, removed = 0, []
        for digest in list(self.iter_hashes()):
            checked += 1
            try:
                marshal.verify(self._path(digest), digest[:12], expected_hash=digest)
            except marshal.CorruptValue as exc:
                if self.delete(digest):
                    removed.append((digest, str(exc)))
        return checked, removed

    # ------------------------------------------------------------------ removal
    def delete(self, digest: str) -> bool:
        """Remove a value; returns False if it was not there. Readers see it whole or not at all."""
        path = self._path(digest)
        if not path.exists():
            return False
        grave = self._new_tmp("del")
        try:
            os.rename(path, grave / digest)
        except FileNotFoundError:
            shutil.rmtree(grave, ignore_errors=True)
            return False
        except OSError:  # cannot be moved (busy, another device, no permission): removed where it is
            remove_tree(path)
        shutil.rmtree(grave, ignore_errors=True)
        return True

    def bury(self, digests: Iterable[str], unmoved: list[tuple[Path, OSError]] | None = None) -> Path:
        """Move the values ``digests`` into one new temp folder and return it (the caller removes it with
        :func:`remove_tree`); readers see each value whole or not at all. A value the file system refuses to
        move is removed in place instead, and added to ``unmoved`` with the refusal."""
        grave = self._new_tmp("gc")
        for digest in digests:
            refused = move_or_remove(self._path(digest), grave / digest)
            if refused is not None and unmoved is not None:
                unmoved.append((self._path(digest), refused))
        return grave

    def sweep_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp directories left by killed writers; returns how many were removed.

        A directory is removed when nothing in it changed for ``older_than_s`` seconds and, if it was made
        on this host, its writer process is gone.
        """
        if not self.tmp_dir.is_dir():
            return 0
        now, removed = time.time(), 0
        for entry in os.scandir(self.tmp_dir):
            parts = entry.name.split("-")
            try:
                newest = max([entry.stat().st_mtime] + [e.stat().st_mtime for e in os.scandir(entry.path)])
            except (FileNotFoundError, NotADirectoryError):
                continue
            if now - newest < older_than_s:
                continue
            if len(parts) == 4 and parts[2] == _HOST and parts[1].isdigit() and alive(int(parts[1])):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        return removed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_or_remove(source: Path, target: Path) -> OSError | None:
    """Rename ``source`` to ``target``; if the file system refuses (busy, another device, no permission),
    remove ``source`` in place instead and return the refusal. A missing ``source`` is no error."""
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        remove_tree(source)
        return exc
    return None


def remove_tree(folder: Path, threads: int = 8) -> None:
    """Remove ``folder`` and everything in it, its entries in parallel (the file system's wait per directory
    removed overlaps); what cannot be removed is left for :meth:`ObjectStore.sweep_tmp`. A symlink is removed
    as a link: what it points to is never touched."""
    from concurrent.futures import ThreadPoolExecutor

    if not _is_real_dir(str(folder)):
        _remove(str(folder))
        return
    try:
        entries = [entry.path for entry in os.scandir(folder)]
    except FileNotFoundError:
        return
    if len(entries) > 1:
        with ThreadPoolExecutor(min(threads, len(entries))) as pool:
            list(pool.map(_remove, entries))
    else:
        for entry in entries:
            _remove(entry)
    _remove(str(folder))


def _is_real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _remove(path: str) -> None:
    """Remove a file, a symlink (never what it points to) or a real folder tree, quietly (a leftover is swept
    later)."""
    if _is_real_dir(path):
        shutil.rmtree(path, ignore_errors=True)  # refuses to follow symlinks, at any depth
        return
    try:
        os.unlink(path)
    except OSError:
        pass
