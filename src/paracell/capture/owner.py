"""Ownership of what a capture leaves on the machine, and removal of stale leftovers.

Each capture has a token, ``PID-RANDOM`` (PID as its own pid namespace sees
it, RANDOM 32 random bits), and names everything it creates after it:

* the tracefs instances ``paracell-TOKEN-ROLE``;
* the spool directory ``paracell-spool-TOKEN-*`` in the temporary directory;
* its private tracefs mount point ``/run/paracell/TOKEN.tracefs``.

While it runs, the capture holds an exclusive ``flock`` on the lock file
``/run/paracell/TOKEN.lock``. The kernel drops the lock when the process
dies, even by SIGKILL, and in whatever pid namespace it ran. A capture that
finds a lock file it can lock has proof that its owner is gone, and removes
the owner's leftovers. Leftovers without a lock file cannot be judged, so
they are left in place with a warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from paracell.capture import pidns
from paracell.capture.tracefs import TraceFS, unmount_quietly
from paracell.errors import CaptureError

log = logging.getLogger("paracell.capture")

RUN_DIR = Path("/run/paracell")
INSTANCE_PREFIX = "paracell-"
SPOOL_PREFIX = "paracell-spool-"
_TOKEN = r"\d+-[0-9a-f]{8}"
_INSTANCE_RE = re.compile(rf"^{INSTANCE_PREFIX}(?P<token>{_TOKEN})-(?P<role>[a-z]+)$")
# Names used by paracell 0.1 captures: paracell-PID-tree and paracell-PID-system.
_LEGACY_INSTANCE_RE = re.compile(rf"^{INSTANCE_PREFIX}(?P<pid>\d+)-(?:tree|system)$")
_SPOOL_RE = re.compile(rf"^{SPOOL_PREFIX}(?P<token>{_TOKEN})-")
_LOCK_RE = re.compile(rf"^(?P<token>{_TOKEN})\.lock$")
_MOUNT_RE = re.compile(rf"^(?P<token>{_TOKEN})\.tracefs$")


def instance_name(token: str, role: str) -> str:
    return f"{INSTANCE_PREFIX}{token}-{role}"


def spool_prefix(token: str) -> str:
    return f"{SPOOL_PREFIX}{token}-"


@dataclass
class CaptureLock:
    """The token of one capture and the locked file that proves it is running."""

    token: str
    run_dir: Path
    fd: int = -1

    @property
    def lock_path(self) -> Path:
        return self.run_dir / f"{self.token}.lock"

    @property
    def mount_point(self) -> Path:
        return self.run_dir / f"{self.token}.tracefs"

    @classmethod
    def acquire(cls, run_dir: Path = RUN_DIR) -> CaptureLock:
        """Create and lock a new lock file, or raise :class:`CaptureError`."""
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        lock = cls(token, run_dir)
        # The file is locked under a temporary name and then renamed, so a
        # scanning capture never sees the final name unlocked.
        tmp = run_dir / f".{token}.lock.tmp"
        try:
            fd = _create_in(run_dir, tmp)
        except OSError as exc:
            raise CaptureError(
                f"cannot create the capture's lock file in {run_dir}: {exc.strerror}",
                hint="tracing needs a writable /run",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"paracell capture, pid {os.getpid()}\n".encode())
            os.rename(tmp, lock.lock_path)
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(tmp)
            raise CaptureError(
                f"cannot create lock file {lock.lock_path}: {exc.strerror}"
            ) from None
        lock.fd = fd
        log.debug("capture token %s, lock %s", token, lock.lock_path)
        return lock

    def release(self) -> None:
        """Remove the lock file and drop the lock; safe to call again.

        The run directory goes too when no other capture uses it.
        """
        if self.fd < 0:
            return
        _unlink_quietly(self.lock_path)
        os.close(self.fd)
        self.fd = -1
        try:
            self.run_dir.rmdir()
        except OSError:
            pass  # ENOTEMPTY: another capture's files are there


def _create_in(run_dir: Path, path: Path) -> int:
    """Create ``path`` exclusively, creating ``run_dir`` (mode 0700) first."""

    def create() -> int:
        run_dir.mkdir(mode=0o700, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        return os.open(path, flags, 0o600)

    try:
        return create()
    except FileNotFoundError:
        # A finishing capture removed the empty run_dir between the steps.
        return create()


@dataclass
class _Leftovers:
    instances: list[str]
    spools: list[Path]
    mount_points: list[Path]
    lock_file: bool = False

    def describe(self) -> str:
        items = [f"tracefs instance {n}" for n in self.instances]
        items += [str(p) for p in self.spools + self.mount_points]
        return ", ".join(items)


def remove_stale_captures(top: TraceFS, own: CaptureLock, spool_parent: Path) -> None:
    """Remove what captures that no longer run left behind; warn about the unknown.

    Only leftovers whose owner is proven dead are removed: their lock file
    can be locked, or (for 0.1 instance names) their pid does not exist in
    the initial pid namespace.
    """
    found: dict[str, _Leftovers] = {}

    def entry(token: str) -> _Leftovers:
        return found.setdefault(token, _Leftovers([], [], []))

    for name in top.listdir("instances"):
        m = _INSTANCE_RE.match(name)
        if m:
            entry(m.group("token")).instances.append(name)
            continue
        m = _LEGACY_INSTANCE_RE.match(name)
        if m:
            _remove_legacy_instance(top, name, int(m.group("pid")))
    for path in _list_dir(spool_parent):
        m = _SPOOL_RE.match(path.name)
        if m:
            entry(m.group("token")).spools.append(path)
    for path in _list_dir(own.run_dir):
        m = _LOCK_RE.match(path.name)
        if m:
            entry(m.group("token")).lock_file = True
            continue
        m = _MOUNT_RE.match(path.name)
        if m:
            entry(m.group("token")).mount_points.append(path)
    for token, leftovers in sorted(found.items()):
        if token == own.token:
            continue
        _judge(top, own.run_dir, token, leftovers)


def _judge(top: TraceFS, run_dir: Path, token: str, leftovers: _Leftovers) -> None:
    lock_path = run_dir / f"{token}.lock"
    if not leftovers.lock_file:
        if leftovers.instances or leftovers.spools or leftovers.mount_points:
            log.warning(
                "leaving %s: there is no lock file %s to show whether the capture "
                "that made them still runs; remove them by hand if it does not",
                leftovers.describe(),
                lock_path,
            )
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return  # its owner finished and cleaned up since the listing
    except OSError as exc:
        log.warning("cannot open %s (%s); leaving its capture's files", lock_path, exc)
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.debug("capture %s is still running", token)
            return
        # An owner that finished since the listing removed its files itself.
        leftovers = _Leftovers(
            [n for n in leftovers.instances if top.exists(f"instances/{n}")],
            [p for p in leftovers.spools if os.path.lexists(p)],
            [p for p in leftovers.mount_points if os.path.lexists(p)],
        )
        if leftovers.instances or leftovers.spools or leftovers.mount_points:
            log.warning(
                "removing %s left by capture %s, which no longer runs",
                leftovers.describe(),
                token,
            )
            _remove(top, leftovers)
        _unlink_quietly(lock_path)
    finally:
        os.close(fd)


def _remove(top: TraceFS, leftovers: _Leftovers) -> None:
    for name in leftovers.instances:
        try:
            top.rmdir(f"instances/{name}")
        except CaptureError as exc:
            if top.exists(f"instances/{name}"):
                log.warning("%s", exc)
    for path in leftovers.spools:
        _remove_own_dir(path)
    for path in leftovers.mount_points:
        # A dead capture's private mount is still attached in this mount
        # namespace when it died here; detach it lazily, then remove the dir.
        unmount_quietly(path)
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc.strerror)


def _remove_own_dir(path: Path) -> None:
    """Remove a spool directory; only a real directory owned by this user."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot inspect %s: %s", path, exc.strerror)
        return
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        log.warning("leaving %s: not a directory owned by this user", path)
        return
    errors: list[str] = []
    # onerror: Python 3.11 has no onexc; each call gets (function, path, exc_info).
    shutil.rmtree(path, onerror=lambda _f, p, e: errors.append(f"{p}: {e[1]}"))
    if errors:
        log.warning("could not remove all of %s: %s", path, errors[0])


def _remove_legacy_instance(top: TraceFS, name: str, pid: int) -> None:
    # The name's pid is from the creator's pid namespace. Its absence proves
    # the creator dead only where /proc lists the initial namespace's pids.
    if pidns.in_init_pid_ns():
        if os.path.exists(f"/proc/{pid}"):
            log.warning(
                "leaving tracefs instance %s: process %d exists, and it may be "
                "the paracell capture that made it",
                name,
                pid,
            )
            return
        log.warning("removing tracefs instance %s left by process %d", name, pid)
        try:
            top.rmdir(f"instances/{name}")
        except CaptureError as exc:
            log.warning("%s", exc)
        return
    log.warning(
        "leaving tracefs instance %s: from inside a pid namespace this capture "
        "cannot tell whether process %d still runs",
        name,
        pid,
    )


def _list_dir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot list %s: %s", path, exc.strerror)
        return []


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc.strerror)
