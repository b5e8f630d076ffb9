"""The container kernel's memory calls (mmap, mprotect, munmap, pkeys) and loader.

Every mapping the user asks for is anonymous and private. The calls enforce
the user range, W^X and the executable-memory scan, and they own the
process's protection-key allocation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paracell.isolation import layout
from paracell.isolation import pkru as pk
from paracell.isolation.host import PAGER_BIND, PAGER_UNBIND
from paracell.isolation.loader import find_forbidden_writers
from paracell.isolation.memory import PAGE_SIZE, Owner, Page, Prot

if TYPE_CHECKING:
    from paracell.isolation.kernel import Kernel
    from paracell.isolation.machine import Machine

MAP_FIXED = 0x10
#: Largest mapping one call may create, in pages; keeps the model small.
MAX_MAP_PAGES = 64

ENOMEM = 12
EACCES = 13
EINVAL = 22
ENOSPC = 28

_PROT_BITS = Prot.READ | Prot.WRITE | Prot.EXEC


class LoadRejected(Exception):
    """The loader found a PKRU writer, or a W+X segment, and refused the program."""

    def __init__(self, address: int, reason: str):
        self.address = address
        self.reason = reason
        super().__init__(f"segment at {address:#x} rejected: {reason}")


class MemoryManager:
    """Address-space calls of the container kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.allocated_pkeys: set[int] = {0}
        self._next_mmap = layout.USER_MMAP_BASE

    @property
    def machine(self) -> Machine:
        return self.kernel.machine

    # -- checks shared by the calls ----------------------------------------------

    def _range_allowed(self, address: int, nr_pages: int) -> bool:
        if self.machine.enabled("kernel-range-check"):
            ok = layout.in_user_range(address, nr_pages * PAGE_SIZE)
            if not ok:
                self.machine.note(
                    "kernel-range-check", f"range at {address:#x} rejected"
                )
            return ok
        return 0 <= address and address + nr_pages * PAGE_SIZE <= 1 << 47

    def _wx_allowed(self, prot: Prot) -> bool:
        if (
            Prot.WRITE in prot
            and Prot.EXEC in prot
            and self.machine.enabled("wx-exclusive")
        ):
            self.machine.note(
                "wx-exclusive", f"writable and executable mapping refused ({prot!r})"
            )
            return False
        return True

    def _note_kernel_pages(self, address: int, nr_pages: int, call_name: str) -> None:
        owners = self.machine.memory.owners(address, nr_pages * PAGE_SIZE)
        kernel_owners = sorted(o.value for o in owners if o.kernel_owned)
        if kernel_owners:
            self.machine.violate(
                "kernel-page-changed-for-user",
                f"{call_name} changed {', '.join(kernel_owners)} pages at {address:#x}",
            )

    def scan(self, address: int, nr_pages: int) -> list[int]:
        """Return forbidden PKRU writers that executable pages in the range expose."""
        m = self.machine
        found = find_forbidden_writers(
            m.memory,
            address,
            address + nr_pages * PAGE_SIZE,
            m.gates.sanctioned_writers,
            m.rules,
        )
        if found:
            m.note(
                "loader-scan", "PKRU writer at " + ", ".join(f"{a:#x}" for a in found)
            )
        return found

    @staticmethod
    def _pages(length: int) -> int:
        return -(-length // PAGE_SIZE)

    # -- calls --------------------------------------------------------------------

    def mmap(self, address: int, length: int, prot: int, flags: int, *_: int) -> int:
        nr_pages = self._pages(length)
        if length <= 0 or nr_pages > MAX_MAP_PAGES or prot & ~_PROT_BITS:
            return -EINVAL
        prot_flags = Prot(prot)
        if not self._wx_allowed(prot_flags):
            return -EACCES
        memory = self.machine.memory
        if flags & MAP_FIXED:
            if address % PAGE_SIZE or not self._range_allowed(address, nr_pages):
                return -EINVAL
            self._note_kernel_pages(address, nr_pages, "mmap(MAP_FIXED)")
            start = address
        else:
            free = self._find_free(nr_pages)
            if free is None:
                return -ENOMEM
            start = free
        for i in range(nr_pages):
            memory.map_page(
                start + i * PAGE_SIZE, Page(prot=prot_flags, pkey=0, owner=Owner.USER)
            )
        if Prot.EXEC in prot_flags and self.scan(start, nr_pages):
            for i in range(nr_pages):
                memory.unmap_page(start + i * PAGE_SIZE)
            return -EACCES
        self.kernel.pager_request(PAGER_BIND, start, nr_pages)
        return start

    def _find_free(self, nr_pages: int) -> int | None:
        memory = self.machine.memory
        start = self._next_mmap
        while (
            start + nr_pages * PAGE_SIZE
            <= layout.USER_STACK_TOP - layout.USER_STACK_STRIDE * 16
        ):
            if all(memory.page(start + i * PAGE_SIZE) is None for i in range(nr_pages)):
                self._next_mmap = start + nr_pages * PAGE_SIZE
                return start
            start += PAGE_SIZE
        return None

    def mprotect(self, address: int, length: int, prot: int, *_: int) -> int:
        return self._protect(address, length, prot, None)

    def pkey_mprotect(
        self, address: int, length: int, prot: int, pkey: int, *_: int
    ) -> int:
        return self._protect(address, length, prot, pkey)

    def _protect(self, address: int, length: int, prot: int, pkey: int | None) -> int:
        m = self.machine
        nr_pages = self._pages(length)
        if (
            address % PAGE_SIZE
            or length <= 0
            or nr_pages > MAX_MAP_PAGES
            or prot & ~_PROT_BITS
        ):
            return -EINVAL
        if pkey is not None and not self._pkey_usable(pkey):
            return -EINVAL
        if not self._range_allowed(address, nr_pages):
            return -ENOMEM
        pages = [m.memory.page(address + i * PAGE_SIZE) for i in range(nr_pages)]
        if any(page is None for page in pages):
            return -ENOMEM
        prot_flags = Prot(prot)
        if not self._wx_allowed(prot_flags):
            return -EACCES

        call_name = "pkey_mprotect" if pkey is not None else "mprotect"
        self._note_kernel_pages(address, nr_pages, call_name)
        before = [(page.prot, page.pkey) for page in pages]  # type: ignore[union-attr]
        for page in pages:
            assert page is not None
            page.prot = prot_flags
            if pkey is not None:
                page.pkey = pkey

        # Pages that become executable are rescanned; a hit undoes the change.
        if (
            Prot.EXEC in prot_flags
            and m.enabled("exec-rescan")
            and self.scan(address, nr_pages)
        ):
            for page, (old_prot, old_pkey) in zip(pages, before, strict=True):
                assert page is not None
                page.prot, page.pkey = old_prot, old_pkey
            return -EACCES
        return 0

    def munmap(self, address: int, length: int, *_: int) -> int:
        m = self.machine
        nr_pages = self._pages(length)
        if address % PAGE_SIZE or length <= 0 or nr_pages > MAX_MAP_PAGES:
            return -EINVAL
        if not self._range_allowed(address, nr_pages):
            return -EINVAL
        self._note_kernel_pages(address, nr_pages, "munmap")
        runs: list[list[int]] = []
        for page_address in range(address, address + nr_pages * PAGE_SIZE, PAGE_SIZE):
            if m.memory.page(page_address) is None:
                continue
            if runs and runs[-1][0] + runs[-1][1] * PAGE_SIZE == page_address:
                runs[-1][1] += 1
            else:
                runs.append([page_address, 1])
        # Unbind before unmapping: the host only accepts requests for mapped pages.
        for start, count in runs:
            self.kernel.pager_request(PAGER_UNBIND, start, count)
            for i in range(count):
                m.memory.unmap_page(start + i * PAGE_SIZE)
        return 0

    # -- protection keys ----------------------------------------------------------

    def _pkey_usable(self, pkey: int) -> bool:
        if not 0 <= pkey < pk.NR_PKEYS:
            return False
        if self.machine.enabled("pkey-ownership"):
            ok = pkey in self.allocated_pkeys and pkey != pk.KERNEL_PKEY
            if not ok:
                self.machine.note(
                    "pkey-ownership", f"protection key {pkey} is not the process's"
                )
            return ok
        return True

    def pkey_alloc(self, flags: int, rights: int, *_: int) -> int:
        if flags or rights & ~(pk.PKEY_DISABLE_ACCESS | pk.PKEY_DISABLE_WRITE):
            return -EINVAL
        first = 2 if self.machine.enabled("pkey-ownership") else 1
        for pkey in range(first, pk.NR_PKEYS):
            if pkey not in self.allocated_pkeys:
                self.allocated_pkeys.add(pkey)
                thread = self.machine.thread
                self.kernel.set_user_pkru(
                    thread, pk.with_rights(thread.user_pkru, pkey, rights)
                )
                return pkey
        return -ENOSPC

    def pkey_free(self, pkey: int, *_: int) -> int:
        if not self._pkey_usable(pkey) or pkey == 0:
            return -EINVAL
        self.allocated_pkeys.discard(pkey)
        return 0

    def pkey_set(self, pkey: int, rights: int, *_: int) -> int:
        if not self._pkey_usable(pkey):
            return -EINVAL
        if rights & ~(pk.PKEY_DISABLE_ACCESS | pk.PKEY_DISABLE_WRITE):
            return -EINVAL
        thread = self.machine.thread
        self.kernel.set_user_pkru(
            thread, pk.with_rights(thread.user_pkru, pkey, rights)
        )
        return 0

    # -- loader --------------------------------------------------------------------

    def load_segment(self, address: int, data: bytes, prot: Prot) -> int:
        """Map a program segment with ``data`` at ``address``, as execve's loader does.

        Raises ``LoadRejected`` when the segment is W+X or its executable bytes,
        with their neighbours, contain a PKRU writer; nothing stays mapped then.
        """
        m = self.machine
        nr_pages = max(1, self._pages(len(data)))
        if address % PAGE_SIZE or not layout.in_user_range(
            address, nr_pages * PAGE_SIZE
        ):
            raise LoadRejected(address, "outside the user range")
        if not self._wx_allowed(prot):
            raise LoadRejected(address, "writable and executable")
        for i in range(nr_pages):
            page = Page(prot=prot, pkey=0, owner=Owner.USER)
            chunk = data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
            page.data[: len(chunk)] = chunk
            m.memory.map_page(address + i * PAGE_SIZE, page)
        if Prot.EXEC in prot:
            found = self.scan(address, nr_pages)
            if found:
                for i in range(nr_pages):
                    m.memory.unmap_page(address + i * PAGE_SIZE)
                raise LoadRejected(
                    address, "PKRU writer at " + ", ".join(f"{a:#x}" for a in found)
                )
        return address
