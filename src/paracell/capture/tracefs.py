"""The one place that reads and writes tracefs files.

Every access goes through :class:`TraceFS`, which logs it at DEBUG level on
the ``paracell.capture.tracefs`` logger and, in dry-run mode, records writes
instead of making them so the setup logic can be tested without root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from paracell.errors import CaptureError

# Per-CPU ring-buffer size of each instance (KiB) and the fill level (%) at
# which a blocked reader is woken. 16 MiB per CPU held the shipped workloads'
# bursts without loss on a 2-CPU machine.
DEFAULT_BUFFER_KB = 16384
DEFAULT_BUFFER_PERCENT = 25

log = logging.getLogger("paracell.capture.tracefs")

# Mount points the kernel documents for tracefs, in order of preference. The
# second is the automount inside debugfs kept for old tools.
TRACEFS_MOUNT = Path("/sys/kernel/tracing")
DEBUGFS_MOUNT = Path("/sys/kernel/debug")
DEBUGFS_TRACING = DEBUGFS_MOUNT / "tracing"

FALLBACK_HINT = (
    "to trace without root or tracefs, record with `strace -f -ttt -T -o LOG CMD` "
    "and convert with `paracell import-strace LOG -o DIR`"
)


@dataclass
class TraceFS:
    """Reads and writes files below one tracefs root (or an instance of it).

    In dry-run mode writes are appended to :attr:`writes` as (path below the
    top-level root, value) and reads return the value in :attr:`dry_files`
    (or an empty string), so a test can check the exact writes a setup would
    make. An instance's dry files fall back to the top level's, as instances
    have the same layout.
    """

    root: Path
    dry_run: bool = False
    writes: list[tuple[str, str]] = field(default_factory=list)
    dry_files: dict[str, str] = field(default_factory=dict)
    # Path of this accessor below the top-level root ("" or "instances/NAME/").
    prefix: str = ""

    def path(self, rel: str) -> Path:
        return self.root / rel

    def _dry_get(self, rel: str) -> str | None:
        value = self.dry_files.get(self.prefix + rel)
        return self.dry_files.get(rel) if value is None else value

    def read(self, rel: str) -> str:
        """Return the text of one tracefs file."""
        if self.dry_run:
            value = self._dry_get(rel) or ""
            log.debug("dry read %s%s -> %r", self.prefix, rel, value[:80])
            return value
        try:
            value = self.path(rel).read_text()
        except OSError as exc:
            raise CaptureError(
                f"cannot read {self.path(rel)}: {exc.strerror}"
            ) from None
        log.debug("read %s -> %r", self.path(rel), value[:80])
        return value

    def write(self, rel: str, value: str) -> None:
        """Write ``value`` to one tracefs file with a single write(2)."""
        if self.dry_run:
            log.debug("dry write %s%s <- %r", self.prefix, rel, value)
            self.writes.append((self.prefix + rel, value))
            self.dry_files[self.prefix + rel] = value
            return
        log.debug("write %s <- %r", self.path(rel), value)
        # tracefs files act on each write(2): one call per value, no buffering.
        try:
            fd = os.open(self.path(rel), os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise CaptureError(
                f"cannot write {value!r} to {self.path(rel)}: {exc.strerror}"
            ) from None

    def exists(self, rel: str) -> bool:
        if self.dry_run:
            if self._dry_get(rel) is not None:
                return True
            return any(
                k.startswith(
                    (self.prefix + rel.rstrip("/") + "/", rel.rstrip("/") + "/")
                )
                for k in self.dry_files
            )
        return self.path(rel).exists()

    def mkdir(self, rel: str) -> None:
        if self.dry_run:
            log.debug("dry mkdir %s%s", self.prefix, rel)
            self.writes.append((self.prefix + rel, "<mkdir>"))
            return
        log.debug("mkdir %s", self.path(rel))
        try:
            self.path(rel).mkdir()
        except OSError as exc:
            raise CaptureError(
                f"cannot create tracefs instance {self.path(rel)}: {exc.strerror}"
            ) from None

    def rmdir(self, rel: str, missing_ok: bool = False) -> None:
        if self.dry_run:
            log.debug("dry rmdir %s%s", self.prefix, rel)
            self.writes.append((self.prefix + rel, "<rmdir>"))
            return
        log.debug("rmdir %s", self.path(rel))
        try:
            self.path(rel).rmdir()
        except FileNotFoundError:
            if not missing_ok:
                raise CaptureError(
                    f"cannot remove tracefs instance {self.path(rel)}: not found"
                ) from None
        except OSError as exc:
            raise CaptureError(
                f"cannot remove tracefs instance {self.path(rel)}: {exc.strerror}"
            ) from None

    def listdir(self, rel: str) -> list[str]:
        if self.dry_run:
            names = set()
            for base in {self.prefix + rel.rstrip("/") + "/", rel.rstrip("/") + "/"}:
                names |= {
                    k[len(base) :].split("/")[0]
                    for k in self.dry_files
                    if k.startswith(base)
                }
            return sorted(names)
        try:
            return sorted(os.listdir(self.path(rel)))
        except OSError:
            return []

    def open_read(self, rel: str, nonblocking: bool = True) -> int:
        """Open a file for the raw reader; return the descriptor."""
        log.debug("open %s", self.path(rel))
        flags = os.O_RDONLY | (os.O_NONBLOCK if nonblocking else 0)
        try:
            return os.open(self.path(rel), flags)
        except OSError as exc:
            raise CaptureError(
                f"cannot open {self.path(rel)}: {exc.strerror}"
            ) from None

    def open_write(self, rel: str) -> int:
        """Open a file for writing (``trace_marker``); return the descriptor."""
        log.debug("open for writing %s", self.path(rel))
        try:
            return os.open(self.path(rel), os.O_WRONLY)
        except OSError as exc:
            raise CaptureError(
                f"cannot open {self.path(rel)}: {exc.strerror}"
            ) from None

    def instance(self, name: str) -> TraceFS:
        """Return an accessor rooted at ``instances/NAME``, sharing the dry-run log."""
        return TraceFS(
            self.root / "instances" / name,
            self.dry_run,
            self.writes,
            self.dry_files,
            f"{self.prefix}instances/{name}/",
        )


# --- mounting -----------------------------------------------------------------


def _mounts() -> list[tuple[str, str]]:
    """Return (mount point, file-system type) of every mount of this process."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                # Mount points escape spaces as \040.
                out.append((parts[1].replace("\\040", " "), parts[2]))
    return out


def is_mounted(path: Path, fstype: str) -> bool:
    return (str(path), fstype) in _mounts()


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(source: str, target: Path, fstype: str) -> None:
    ret = _libc().mount(source.encode(), str(target).encode(), fstype.encode(), 0, None)
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


# umount2 flag: detach now, finish when the last user is gone (linux/fs.h).
MNT_DETACH = 2


def _umount(target: Path, flags: int = 0) -> None:
    ret = _libc().umount2(str(target).encode(), flags)
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def unmount_quietly(target: Path) -> None:
    """Detach a mount of ours at ``target``; a target that is no mount is fine."""
    try:
        _umount(target, MNT_DETACH)
    except OSError as exc:
        # EINVAL: not a mount point (here); ENOENT: already gone.
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            log.warning("could not unmount %s: %s", target, exc.strerror)


@dataclass
class Mount:
    """A usable tracefs root and the mounts this process made to get it."""

    root: Path
    mounted_by_us: list[Path] = field(default_factory=list)
    # A mount point directory this process created, removed after unmounting.
    private_dir: Path | None = None

    def release(self) -> None:
        """Unmount what :func:`mount_tracefs` mounted, newest first."""
        for target in reversed(self.mounted_by_us):
            try:
                _umount(target)
                log.debug("unmounted %s", target)
            except OSError as exc:
                # NOTE: EBUSY means another tracer has files open there. Only
                # the shared fallback mount points can be in use by others;
                # the private mount point is ours alone.
                log.warning("could not unmount %s: %s", target, exc.strerror)
        self.mounted_by_us.clear()
        if self.private_dir is not None:
            try:
                self.private_dir.rmdir()
            except OSError as exc:
                log.warning("could not remove %s: %s", self.private_dir, exc.strerror)
            self.private_dir = None


def find_tracefs() -> Path | None:
    """Return a mounted tracefs root, or None."""
    if is_mounted(TRACEFS_MOUNT, "tracefs"):
        return TRACEFS_MOUNT
    try:
        if (DEBUGFS_TRACING / "events").is_dir():
            return DEBUGFS_TRACING
    except PermissionError:
        # debugfs is mode 0700: only root can look inside.
        pass
    for mount_point, fstype in _mounts():
        if fstype == "tracefs":
            return Path(mount_point)
    return None


def check_tracing_access() -> None:
    """Raise :class:`CaptureError` when this process cannot trace (no root)."""
    if os.geteuid() == 0:
        return
    root = find_tracefs()
    if root is None:
        raise CaptureError(
            "tracefs is not mounted and mounting it needs root", hint=FALLBACK_HINT
        )
    _check_access(root)


def mount_tracefs(private_dir: Path | None = None) -> Mount:
    """Return a tracefs root, mounting tracefs for this process alone if possible.

    With ``private_dir`` (a path that does not exist yet), tracefs is mounted
    there: tracefs can be mounted many times, and a mount nobody else uses
    can always be unmounted at the end, even while other tracers run. Without
    it, or when that fails, an existing mount is used, or tracefs is mounted
    at /sys/kernel/tracing (or debugfs at /sys/kernel/debug).

    Raises :class:`CaptureError` naming what is missing when tracing cannot
    work here: root rights, or tracefs in the kernel.
    """
    check_tracing_access()
    if private_dir is not None:
        private = _mount_private(private_dir)
        if private is not None:
            return private
    root = find_tracefs()
    if root is not None:
        _check_access(root)
        return Mount(root)
    mount = Mount(TRACEFS_MOUNT)
    try:
        _mount("nodev", TRACEFS_MOUNT, "tracefs")
        mount.mounted_by_us.append(TRACEFS_MOUNT)
        log.info("mounted tracefs at %s", TRACEFS_MOUNT)
    except OSError as exc:
        log.debug("mounting tracefs at %s failed: %s", TRACEFS_MOUNT, exc.strerror)
        try:
            if not is_mounted(DEBUGFS_MOUNT, "debugfs"):
                _mount("nodev", DEBUGFS_MOUNT, "debugfs")
                mount.mounted_by_us.append(DEBUGFS_MOUNT)
            mount.root = DEBUGFS_TRACING
        except OSError as exc2:
            mount.release()
            raise CaptureError(
                f"cannot mount tracefs at {TRACEFS_MOUNT} ({exc.strerror}) or debugfs "
                f"at {DEBUGFS_MOUNT} ({exc2.strerror}); the kernel may lack "
                "CONFIG_TRACING",
                hint=FALLBACK_HINT,
            ) from None
    if not (mount.root / "events").is_dir():
        mount.release()
        raise CaptureError(
            f"{mount.root} has no events directory; the kernel lacks tracepoints",
            hint=FALLBACK_HINT,
        )
    return mount


def _mount_private(private_dir: Path) -> Mount | None:
    """Mount tracefs at a new directory; return None (logged) when that fails."""
    try:
        private_dir.mkdir(mode=0o700)
    except OSError as exc:
        log.debug("cannot create %s: %s", private_dir, exc.strerror)
        return None
    mount = Mount(private_dir, private_dir=private_dir)
    try:
        _mount("nodev", private_dir, "tracefs")
    except OSError as exc:
        log.debug("mounting tracefs at %s failed: %s", private_dir, exc.strerror)
        mount.release()
        return None
    mount.mounted_by_us.append(private_dir)
    if not (private_dir / "events").is_dir():
        mount.release()
        return None
    log.debug("mounted tracefs at %s", private_dir)
    return mount


def _check_access(root: Path) -> None:
    if not os.access(root / "instances", os.W_OK):
        raise CaptureError(
            f"no write access to {root}/instances; tracing needs root",
            hint=FALLBACK_HINT,
        )


@contextmanager
def mounted_tracefs() -> Iterator[Path]:
    """Yield a tracefs root for the duration of a ``with`` block."""
    mount = mount_tracefs()
    try:
        yield mount.root
    finally:
        mount.release()


def is_busy(exc: OSError) -> bool:
    return exc.errno == errno.EBUSY
