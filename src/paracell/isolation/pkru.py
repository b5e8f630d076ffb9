"""PKRU, the per-thread register of protection-key rights.

The layout is the hardware's: for protection key ``k`` (0-15), bit ``2k`` is
access-disable (AD) and bit ``2k + 1`` is write-disable (WD); 16 keys fill
32 bits. PKU checks data accesses only, never instruction fetches.
"""

from __future__ import annotations

NR_PKEYS = 16
PKRU_MASK = 0xFFFF_FFFF

#: Key carried by every container-kernel page (data, text, stacks, gates).
KERNEL_PKEY = 1

#: XSAVE init value of PKRU: every key fully accessible. XRSTOR loads it when
#: the XSAVE header's XSTATE_BV has the PKRU bit clear.
PKRU_INIT = 0

#: Linux's default user PKRU: only key 0 accessible (AD on keys 1-15).
PKRU_LINUX_DEFAULT = 0x5555_5554

#: PKRU the gates install for the container kernel. The kernel reads and
#: writes its own pages and user memory of any key, so nothing is denied.
KERNEL_PKRU = 0

#: Access rights as pkey_alloc(2) and pkey_set(3) take them.
PKEY_DISABLE_ACCESS = 0x1
PKEY_DISABLE_WRITE = 0x2


def ad_bit(pkey: int) -> int:
    """Return the access-disable bit of ``pkey``."""
    _check_pkey(pkey)
    return 1 << (2 * pkey)


def wd_bit(pkey: int) -> int:
    """Return the write-disable bit of ``pkey``."""
    _check_pkey(pkey)
    return 1 << (2 * pkey + 1)


def allows_read(pkru: int, pkey: int) -> bool:
    """Return whether a data read of a page with ``pkey`` passes the PKU check."""
    return not pkru & ad_bit(pkey)


def allows_write(pkru: int, pkey: int) -> bool:
    """Return whether a data write passes: writes need both AD and WD clear."""
    return not pkru & (ad_bit(pkey) | wd_bit(pkey))


def allows_kernel(pkru: int) -> bool:
    """Return whether ``pkru`` gives any access to container-kernel pages."""
    return allows_read(pkru, KERNEL_PKEY)


def rights_of(pkru: int, pkey: int) -> int:
    """Return the two rights bits of ``pkey`` as pkey_set(3) takes them."""
    return (pkru >> (2 * pkey)) & 0x3


def with_rights(pkru: int, pkey: int, rights: int) -> int:
    """Return ``pkru`` with the AD/WD bits of ``pkey`` replaced by ``rights``."""
    if rights & ~(PKEY_DISABLE_ACCESS | PKEY_DISABLE_WRITE):
        raise ValueError(f"invalid pkey rights {rights:#x}")
    shift = 2 * pkey
    _check_pkey(pkey)
    return (pkru & ~(0x3 << shift) | (rights << shift)) & PKRU_MASK


def describe(pkru: int) -> str:
    """Return a short text listing the keys ``pkru`` restricts, for messages."""
    parts = []
    for pkey in range(NR_PKEYS):
        rights = rights_of(pkru, pkey)
        if rights & PKEY_DISABLE_ACCESS:
            parts.append(f"{pkey}:AD")
        elif rights & PKEY_DISABLE_WRITE:
            parts.append(f"{pkey}:WD")
    return f"{pkru:#010x} ({' '.join(parts) or 'all keys open'})"


def _check_pkey(pkey: int) -> None:
    if not 0 <= pkey < NR_PKEYS:
        raise ValueError(f"protection key {pkey} is outside 0-{NR_PKEYS - 1}")
