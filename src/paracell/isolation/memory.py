"""The container's single address space: pages, permissions and protection keys.

Container user and container kernel share these pages. Every page is a
user-mode page (U/S = 1) because the container kernel runs in ring 3, as in
PVM; that is why PKU, and not SMAP or PKS, is what keeps them apart.

Each page records who owns it. Ownership is the model's ground truth for
judging attacks, and the protection key is the mechanism that enforces it.
An attack succeeds exactly when the two disagree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from paracell.isolation import pkru as pk

PAGE_SIZE = 4096
PAGE_SHIFT = 12
ADDRESS_MASK = (1 << 64) - 1


class Prot(enum.IntFlag):
    """Page permissions, as mmap(2) PROT_* bits."""

    NONE = 0
    READ = 0x1
    WRITE = 0x2
    EXEC = 0x4


class Owner(enum.Enum):
    """Owner of a page; only ``USER`` pages may be touched by user code."""

    USER = "user"
    KERNEL = "kernel"
    GATE = "gate"
    PAGER_RING = "pager-ring"
    PAGER_DONE = "pager-done"

    @property
    def kernel_owned(self) -> bool:
        return self is not Owner.USER


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"
    FETCH = "fetch"


@dataclass
class Page:
    """One 4 KiB page: permissions, protection key, owner and contents."""

    prot: Prot
    pkey: int
    owner: Owner
    data: bytearray = field(default_factory=lambda: bytearray(PAGE_SIZE))
    user_accessible: bool = True
    #: False after the Pager unbinds the page until its next touch.
    bound: bool = True


class PageFault(Exception):
    """A page-level access check failed.

    ``reason`` is ``not-present``, ``protection`` (permission or U/S bit) or
    ``pkey`` (the PKU check, with the page's key in ``pkey``).
    """

    def __init__(
        self, address: int, access: Access, reason: str, pkey: int | None = None
    ):
        self.address = address
        self.access = access
        self.reason = reason
        self.pkey = pkey
        detail = f" (key {pkey})" if pkey is not None else ""
        super().__init__(f"{access.value} of {address:#x}: {reason}{detail}")


def page_base(address: int) -> int:
    return address & ~(PAGE_SIZE - 1)


class AddressSpace:
    """Sparse map from page number to ``Page`` with hardware-like checks."""

    def __init__(self) -> None:
        self._pages: dict[int, Page] = {}

    def map_page(self, address: int, page: Page) -> None:
        self._pages[address >> PAGE_SHIFT] = page

    def unmap_page(self, address: int) -> Page | None:
        return self._pages.pop(address >> PAGE_SHIFT, None)

    def page(self, address: int) -> Page | None:
        return self._pages.get((address & ADDRESS_MASK) >> PAGE_SHIFT)

    def mapped_addresses(self) -> list[int]:
        return sorted(vpn << PAGE_SHIFT for vpn in self._pages)

    def check(self, address: int, size: int, access: Access, pkru: int) -> None:
        """Raise ``PageFault`` unless every byte of the access is allowed.

        Data accesses go through the PKU check against ``pkru``; instruction
        fetches do not, as on the hardware.
        """
        for base in self._touched_pages(address, size):
            page = self.page(base)
            first = max(address, base)
            if page is None or (page.prot == Prot.NONE):
                raise PageFault(first, access, "not-present")
            if not page.user_accessible:
                raise PageFault(first, access, "protection")
            needed = {
                Access.READ: Prot.READ,
                Access.WRITE: Prot.WRITE,
                Access.FETCH: Prot.EXEC,
            }[access]
            if not page.prot & needed:
                raise PageFault(first, access, "protection")
            if access is Access.READ and not pk.allows_read(pkru, page.pkey):
                raise PageFault(first, access, "pkey", page.pkey)
            if access is Access.WRITE and not pk.allows_write(pkru, page.pkey):
                raise PageFault(first, access, "pkey", page.pkey)

    def read(
        self, address: int, size: int, pkru: int, access: Access = Access.READ
    ) -> bytes:
        """Return ``size`` bytes after the checks of ``access``."""
        self.check(address, size, access, pkru)
        return self.read_raw(address, size)

    def write(self, address: int, data: bytes, pkru: int) -> None:
        """Write ``data`` after the write checks."""
        self.check(address, len(data), Access.WRITE, pkru)
        self.write_raw(address, data)

    def read_raw(self, address: int, size: int) -> bytes:
        """Return bytes without any check, as the host or the oracle reads them."""
        out = bytearray()
        for base in self._touched_pages(address, size):
            page = self.page(base)
            lo = max(address, base) - base
            hi = min(address + size, base + PAGE_SIZE) - base
            out += page.data[lo:hi] if page is not None else bytes(hi - lo)
        return bytes(out)

    def write_raw(self, address: int, data: bytes) -> None:
        """Write bytes without any check; pages must be mapped."""
        offset = 0
        for base in self._touched_pages(address, len(data)):
            page = self.page(base)
            if page is None:
                raise PageFault(base, Access.WRITE, "not-present")
            lo = max(address, base) - base
            hi = min(address + len(data), base + PAGE_SIZE) - base
            page.data[lo:hi] = data[offset : offset + hi - lo]
            page.bound = True
            offset += hi - lo

    def owners(self, address: int, size: int) -> set[Owner]:
        """Return the owners of the mapped pages in ``[address, address + size)``."""
        found = set()
        for base in self._touched_pages(address, size):
            page = self.page(base)
            if page is not None:
                found.add(page.owner)
        return found

    @staticmethod
    def _touched_pages(address: int, size: int) -> range:
        first = page_base(address)
        last = page_base(address + max(size, 1) - 1)
        return range(first, last + PAGE_SIZE, PAGE_SIZE)
