"""Unit tests of the isolation model's parts: PKRU, pages, CPU, gates, kernel."""

from __future__ import annotations

import struct

import capstone
import pytest

from paracell.isolation import asm, layout
from paracell.isolation import kernel as k
from paracell.isolation import pkru as pk
from paracell.isolation.cpu import XCR0, XSAVE_AREA_BYTES, Cpu, CpuFault, Registers
from paracell.isolation.gates import build_gates
from paracell.isolation.loader import find_forbidden_writers
from paracell.isolation.machine import Machine, Mode
from paracell.isolation.memory import (
    PAGE_SIZE,
    Access,
    AddressSpace,
    Owner,
    Page,
    PageFault,
    Prot,
)
from paracell.isolation.mm import LoadRejected
from paracell.isolation.rules import ALL_RULES
from paracell.isolation.userland import PROT_RW, PROT_RX, User

CODE = 0x10000
DATA = 0x20000


# -- PKRU layout ---------------------------------------------------------------


def test_pkru_bit_layout() -> None:
    assert pk.ad_bit(0) == 0x1
    assert pk.wd_bit(0) == 0x2
    assert pk.ad_bit(1) == 0x4
    assert pk.wd_bit(15) == 1 << 31
    with pytest.raises(ValueError):
        pk.ad_bit(16)


def test_pkru_linux_default_denies_all_but_key0() -> None:
    assert pk.allows_write(pk.PKRU_LINUX_DEFAULT, 0)
    for pkey in range(1, pk.NR_PKEYS):
        assert not pk.allows_read(pk.PKRU_LINUX_DEFAULT, pkey)
    assert not pk.allows_kernel(pk.PKRU_LINUX_DEFAULT)
    assert pk.allows_kernel(pk.PKRU_INIT)


def test_pkru_write_disable_allows_reads() -> None:
    pkru = pk.with_rights(0, 3, pk.PKEY_DISABLE_WRITE)
    assert pkru == pk.wd_bit(3)
    assert pk.allows_read(pkru, 3)
    assert not pk.allows_write(pkru, 3)
    assert pk.rights_of(pkru, 3) == pk.PKEY_DISABLE_WRITE


# -- pages -----------------------------------------------------------------------


def _space(prot: Prot, pkey: int) -> AddressSpace:
    space = AddressSpace()
    space.map_page(DATA, Page(prot=prot, pkey=pkey, owner=Owner.USER))
    return space


def test_pku_blocks_data_reads_not_fetches() -> None:
    space = _space(Prot.READ | Prot.EXEC, pkey=5)
    pkru = pk.ad_bit(5)
    with pytest.raises(PageFault) as info:
        space.check(DATA, 1, Access.READ, pkru)
    assert info.value.reason == "pkey"
    space.check(DATA, 1, Access.FETCH, pkru)


def test_write_disable_blocks_writes_only() -> None:
    space = _space(Prot.READ | Prot.WRITE, pkey=5)
    pkru = pk.wd_bit(5)
    space.check(DATA, 8, Access.READ, pkru)
    with pytest.raises(PageFault) as info:
        space.check(DATA, 8, Access.WRITE, pkru)
    assert info.value.reason == "pkey"


def test_page_permissions_checked_before_keys() -> None:
    space = _space(Prot.READ, pkey=0)
    with pytest.raises(PageFault) as info:
        space.check(DATA, 1, Access.WRITE, 0)
    assert info.value.reason == "protection"
    with pytest.raises(PageFault) as info:
        space.check(DATA, 1, Access.FETCH, 0)
    assert info.value.reason == "protection"
    with pytest.raises(PageFault) as info:
        space.check(DATA + PAGE_SIZE, 1, Access.READ, 0)
    assert info.value.reason == "not-present"


def test_access_spanning_pages_checks_both() -> None:
    space = _space(Prot.READ | Prot.WRITE, pkey=0)
    space.map_page(
        DATA + PAGE_SIZE, Page(prot=Prot.READ | Prot.WRITE, pkey=4, owner=Owner.USER)
    )
    with pytest.raises(PageFault) as info:
        space.check(DATA + PAGE_SIZE - 4, 8, Access.READ, pk.ad_bit(4))
    assert info.value.address == DATA + PAGE_SIZE


# -- CPU -------------------------------------------------------------------------


class _FlatMemory:
    """A memory port without checks, for CPU instruction tests."""

    def __init__(self) -> None:
        self.space = AddressSpace()
        for base in (CODE, DATA):
            self.space.map_page(
                base,
                Page(prot=Prot.READ | Prot.WRITE | Prot.EXEC, pkey=0, owner=Owner.USER),
            )

    def fetch(self, address: int) -> int:
        return self.space.read_raw(address, 1)[0]

    def load(self, address: int, size: int) -> bytes:
        return self.space.read(address, size, 0)

    def store(self, address: int, data: bytes) -> None:
        self.space.write(address, data, 0)


def _cpu(code: bytes, **registers: int) -> Cpu:
    memory = _FlatMemory()
    memory.space.write_raw(CODE, code)
    regs = Registers(rip=CODE, pkru=pk.PKRU_LINUX_DEFAULT)
    names = {n: i for i, n in enumerate(asm.REGISTER_NAMES)}
    for name, value in registers.items():
        regs[names[name]] = value
    return Cpu(memory, regs)


def test_wrpkru_writes_eax() -> None:
    cpu = _cpu(asm.WRPKRU, rax=0x1234, rcx=0, rdx=0)
    cpu.step()
    assert cpu.regs.pkru == 0x1234
    assert cpu.regs.rip == CODE + 3


@pytest.mark.parametrize("register", ["rcx", "rdx"])
def test_wrpkru_needs_ecx_edx_zero(register: str) -> None:
    values = {"rax": 0, "rcx": 0, "rdx": 0, register: 1}
    cpu = _cpu(asm.WRPKRU, **values)
    with pytest.raises(CpuFault) as info:
        cpu.step()
    assert info.value.vector == "#GP"
    assert cpu.regs.pkru == pk.PKRU_LINUX_DEFAULT


def test_rdpkru_reads_pkru_and_clears_edx() -> None:
    cpu = _cpu(asm.RDPKRU, rcx=0, rdx=7)
    cpu.step()
    assert cpu.regs[asm.RAX] == pk.PKRU_LINUX_DEFAULT
    assert cpu.regs[asm.RDX] == 0


def _xsave(cpu: Cpu, xstate_bv: int, pkru_value: int) -> None:
    # A standard-format XSAVE area at DATA: header at 512, PKRU at 0xA80.
    area = bytearray(XSAVE_AREA_BYTES)
    struct.pack_into("<QQ", area, 512, xstate_bv, 0)
    struct.pack_into("<I", area, 0xA80, pkru_value)
    cpu.port.space.write_raw(DATA, bytes(area[:PAGE_SIZE]))  # type: ignore[attr-defined]


def test_xrstor_loads_pkru_from_area() -> None:
    cpu = _cpu(asm.xrstor(asm.RDI), rdi=DATA, rax=0xFFFFFFFF, rdx=0xFFFFFFFF)
    _xsave(cpu, XCR0, 0x0000_00C0)
    cpu.step()
    assert cpu.regs.pkru == 0xC0


def test_xrstor_init_pkru_is_zero() -> None:
    cpu = _cpu(asm.xrstor(asm.RDI), rdi=DATA, rax=0xFFFFFFFF, rdx=0)
    _xsave(cpu, 0x3, 0xFFFF_FFFF)
    cpu.step()
    assert cpu.regs.pkru == pk.PKRU_INIT


def test_xrstor_respects_requested_feature_bitmap() -> None:
    cpu = _cpu(asm.xrstor(asm.RDI, rex_w=True), rdi=DATA, rax=0x7, rdx=0)
    _xsave(cpu, XCR0, 0)
    cpu.step()
    assert cpu.regs.pkru == pk.PKRU_LINUX_DEFAULT


def test_xrstor_misaligned_faults() -> None:
    cpu = _cpu(asm.xrstor(asm.RDI), rdi=DATA + 8, rax=0xFFFFFFFF, rdx=0)
    with pytest.raises(CpuFault) as info:
        cpu.step()
    assert info.value.vector == "#GP"


def test_lfence_is_not_xrstor() -> None:
    cpu = _cpu(b"\x0f\xae\xe8", rax=0xFFFFFFFF, rdx=0xFFFFFFFF)
    cpu.step()
    assert cpu.regs.pkru == pk.PKRU_LINUX_DEFAULT
    assert cpu.regs.rip == CODE + 3


def test_xrstors_faults_in_ring3() -> None:
    cpu = _cpu(b"\x0f\xc7\x1f", rdi=DATA)
    with pytest.raises(CpuFault) as info:
        cpu.step()
    assert info.value.vector == "#GP"


def test_unknown_opcode_is_invalid() -> None:
    cpu = _cpu(b"\xd9\xd0")  # fnop: outside the modelled subset
    with pytest.raises(CpuFault) as info:
        cpu.step()
    assert info.value.vector == "#UD"


def test_call_and_ret_use_the_stack() -> None:
    a = asm.Assembler(CODE)
    a.call("target")
    a.emit(asm.INT3)
    a.label("target")
    a.emit(asm.RET)
    cpu = _cpu(a.finish(), rsp=DATA + PAGE_SIZE)
    cpu.step()
    assert cpu.regs[asm.RSP] == DATA + PAGE_SIZE - 8
    assert cpu.regs.rip == a.labels["target"]
    cpu.step()
    assert cpu.regs.rip == CODE + 5


def test_jump_into_immediate_executes_hidden_wrpkru() -> None:
    code = asm.mov_imm32(asm.RAX, 0xEF010F90)
    cpu = _cpu(code, rax=0x44, rcx=0, rdx=0)
    cpu.regs.rip = CODE + 2
    cpu.step()
    assert cpu.regs.pkru == 0x44


# -- gates -----------------------------------------------------------------------


def _decoded_gate(rules: frozenset[str]) -> list[str]:
    gates = build_gates(rules)
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = []
    for insn in decoder.disasm(gates.code, layout.GATE_PAGE):
        out.append(insn.mnemonic)
        if insn.address >= gates.abort:
            break
    return out


def test_gate_code_decodes_as_designed() -> None:
    mnemonics = _decoded_gate(ALL_RULES)
    entry = mnemonics[: mnemonics.index("jmp") + 1]
    assert entry == [
        "mov",
        "xor",
        "xor",
        "mov",
        "wrpkru",
        "rdpkru",
        "cmp",
        "jne",
        "mov",
        "mov",
        "jmp",
    ]
    assert mnemonics.count("wrpkru") == 2
    assert mnemonics.count("xrstor") == 1
    assert mnemonics[-1] == "ud2"


def test_gate_without_checks_has_no_rdpkru() -> None:
    rules = ALL_RULES - {"gate-entry-check", "exit-pkru-check", "xrstor-gate-check"}
    mnemonics = _decoded_gate(rules)
    assert "rdpkru" not in mnemonics
    assert mnemonics.count("wrpkru") == 2


def test_gate_writers_are_the_sanctioned_ones() -> None:
    gates = build_gates(ALL_RULES)
    space = AddressSpace()
    space.map_page(
        layout.GATE_PAGE,
        Page(
            prot=Prot.READ | Prot.EXEC,
            pkey=1,
            owner=Owner.GATE,
            data=bytearray(gates.code),
        ),
    )
    assert (
        find_forbidden_writers(
            space,
            layout.GATE_PAGE,
            layout.GATE_PAGE + PAGE_SIZE,
            gates.sanctioned_writers,
            ALL_RULES,
        )
        == []
    )
    found = find_forbidden_writers(
        space, layout.GATE_PAGE, layout.GATE_PAGE + PAGE_SIZE, frozenset(), ALL_RULES
    )
    assert found == sorted(gates.sanctioned_writers)


# -- kernel and machine ------------------------------------------------------------


def test_boot_maps_kernel_pages_with_kernel_key() -> None:
    m = Machine()
    for address in (
        layout.GATE_PAGE,
        layout.KERNEL_TEXT,
        layout.PERCPU,
        layout.KERNEL_DATA,
    ):
        page = m.memory.page(address)
        assert page is not None
        assert page.pkey == pk.KERNEL_PKEY
        assert page.owner.kernel_owned
    assert m.regs.pkru == pk.PKRU_LINUX_DEFAULT
    assert m.thread.mode is Mode.USER


def test_syscall_round_trip_restores_user_state() -> None:
    m = Machine()
    u = User(m)
    rsp = m.regs[asm.RSP]
    assert u.syscall(k.NR_GETTID) == 1
    assert m.regs.pkru == pk.PKRU_LINUX_DEFAULT
    assert m.regs[asm.RSP] == rsp
    assert m.thread.mode is Mode.USER
    assert u.syscall(12345) == -k.ENOSYS
    assert m.violations == []


def test_syscall_instruction_is_redirected_to_gate() -> None:
    m = Machine()
    u = User(m)
    code = u.load_code(
        lambda origin, stop: (
            asm.mov_imm32(asm.RAX, k.NR_GETPID) + asm.SYSCALL + asm.jmp_reg(asm.RBX)
        )
    )
    outcome = u.jump(code, rbx=u.stop)
    assert outcome == "stop"
    assert m.regs[asm.RAX] == 1
    assert m.violations == []


def test_mmap_and_mprotect_follow_wx() -> None:
    m = Machine()
    u = User(m)
    address = u.mmap(2)
    assert u.write(address, b"\x90" * 16)
    assert u.syscall(k.NR_MPROTECT, address, PAGE_SIZE, PROT_RX) == 0
    assert u.syscall(k.NR_MPROTECT, address, PAGE_SIZE, PROT_RW | PROT_RX) == -13
    assert u.syscall(k.NR_MMAP, 0, PAGE_SIZE, PROT_RW | PROT_RX, 0) == -13
    assert u.syscall(k.NR_MUNMAP, address, 2 * PAGE_SIZE) == 0
    assert m.memory.page(address) is None
    assert m.violations == []


def test_mprotect_rescan_rejects_written_wrpkru() -> None:
    m = Machine()
    u = User(m)
    address = u.mmap()
    u.write(address + 100, asm.WRPKRU)
    assert u.syscall(k.NR_MPROTECT, address, PAGE_SIZE, PROT_RX) == -13
    page = m.memory.page(address)
    assert page is not None
    assert page.prot == Prot.READ | Prot.WRITE


def test_loader_rejects_writer_across_pages() -> None:
    m = Machine()
    u = User(m)
    code = b"\xcc" * (PAGE_SIZE - 2) + b"\x0f\x01" + b"\xef" + b"\xcc" * 10
    with pytest.raises(LoadRejected):
        u.load_code(code, nr_pages=2)


def test_loader_checks_neighbouring_executable_page() -> None:
    m = Machine()
    u = User(m)
    first = u.load_code(b"\xcc" * (PAGE_SIZE - 1) + b"\x0f")
    assert first + PAGE_SIZE == u._next_code
    with pytest.raises(LoadRejected):
        u.load_code(b"\x01\xef" + b"\xcc" * 8)


def test_pkey_alloc_set_and_access() -> None:
    m = Machine()
    u = User(m)
    pkey = u.syscall(k.NR_PKEY_ALLOC, 0, pk.PKEY_DISABLE_WRITE)
    assert pkey == 2
    address = u.mmap()
    assert u.syscall(k.NR_PKEY_MPROTECT, address, PAGE_SIZE, PROT_RW, pkey) == 0
    assert u.read(address, 8) == bytes(8)
    assert u.syscall(k.NR_PKEY_SET, pkey, 0) == 0
    assert pk.rights_of(m.regs.pkru, pkey) == 0
    assert u.write(address, b"x")
    assert u.syscall(k.NR_PKEY_SET, pk.KERNEL_PKEY, 0) == -k.EINVAL
    assert u.syscall(k.NR_PKEY_FREE, pkey) == 0
    assert u.syscall(k.NR_PKEY_FREE, pkey) == -k.EINVAL
    assert m.violations == []


def test_pkey_alloc_never_returns_kernel_key() -> None:
    m = Machine()
    u = User(m)
    keys = [u.syscall(k.NR_PKEY_ALLOC, 0, 0) for _ in range(pk.NR_PKEYS)]
    assert pk.KERNEL_PKEY not in keys
    assert keys[:14] == list(range(2, 16))
    assert keys[14] == -28


def test_signal_handler_runs_and_sigreturn_resumes() -> None:
    m = Machine()
    u = User(m)

    def handler(origin: int, stop: int) -> bytes:
        a = asm.Assembler(origin)
        a.emit(asm.mov_imm64(asm.RBX, 0x5151))
        a.emit(asm.RET)  # to the restorer
        return a.finish()

    def restorer(origin: int, stop: int) -> bytes:
        a = asm.Assembler(origin)
        a.emit(asm.mov_imm32(asm.RAX, k.NR_RT_SIGRETURN))
        a.call(m.gates.entry)
        return a.finish()

    handler_address = u.load_code(handler)
    restorer_address = u.load_code(restorer)
    assert (
        u.syscall(k.NR_RT_SIGACTION, k.SIGUSR1, handler_address, restorer_address) == 0
    )
    tid = u.syscall(k.NR_GETTID)
    assert tid == 1
    m.regs[asm.RBX] = 0
    outcome = u.jump(u.stub, rax=k.NR_TKILL, rdi=tid, rsi=k.SIGUSR1)
    assert outcome == "stop"
    # rt_sigreturn restored the context of the interrupted return from tkill,
    # so RBX is back to its value before the handler ran.
    assert m.regs[asm.RBX] == 0
    assert m.regs[asm.RAX] == 0
    assert m.regs.pkru == pk.PKRU_LINUX_DEFAULT
    assert m.violations == []


def test_fault_without_handler_kills_thread() -> None:
    m = Machine()
    u = User(m)
    assert u.read(layout.KERNEL_SECRET, 8) is None
    assert m.current is None
    assert not m.threads[1].alive
    assert m.violations == []


def test_threads_keep_their_own_pkru() -> None:
    m = Machine()
    u = User(m)
    pkey = u.syscall(k.NR_PKEY_ALLOC, 0, 0)
    assert pkey is not None
    other = m.kernel.create_thread(rip=u.stop)
    assert u.syscall(k.NR_PKEY_SET, pkey, pk.PKEY_DISABLE_ACCESS) == 0
    mine = m.regs.pkru
    m.host.preempt(other.tid)
    assert m.current == other.tid
    assert pk.rights_of(m.regs.pkru, pkey) == 0
    m.host.preempt(1)
    assert m.current == 1
    assert m.regs.pkru == mine
    assert u.syscall(k.NR_SCHED_YIELD) is None  # switched away: the call returns later
    assert m.current == other.tid
    assert m.violations == []


def test_kernel_text_has_no_stray_writers() -> None:
    m = Machine()
    end = layout.KERNEL_TEXT + PAGE_SIZE
    sanctioned = m.gates.sanctioned_writers
    found = find_forbidden_writers(
        m.memory, layout.KERNEL_TEXT, end, sanctioned, ALL_RULES
    )
    assert found == []


def test_gate_jump_enters_kernel_mode() -> None:
    # A run that stops right after the entry gate's final jump has entered
    # the kernel; the host lets it finish before anything else runs.
    m = Machine()
    u = User(m)
    u.push(u.stop)
    assert u.jump(m.gates.entry, max_steps=11, rax=k.NR_GETPID) == "steps"
    assert m.regs.rip == layout.KERNEL_DISPATCH
    assert m.thread.mode is Mode.KERNEL
    m.settle()
    assert m.thread.mode is Mode.USER
    assert m.regs.pkru == pk.PKRU_LINUX_DEFAULT
    assert m.violations == []


def test_exit_gate_lets_user_pick_user_keys() -> None:
    # The exit check can only test constants: after its WRPKRU the gate can no
    # longer read kernel memory. So user code can install any PKRU that keeps
    # the kernel key closed, as user code on Linux can run WRPKRU itself.
    m = Machine()
    u = User(m)
    u.push(u.stop)
    chosen = pk.ad_bit(pk.KERNEL_PKEY)
    assert u.jump(m.gates.exit_wrpkru, rax=chosen, rcx=0, rdx=0) == "stop"
    assert m.regs.pkru == chosen
    assert m.thread.user_pkru == pk.PKRU_LINUX_DEFAULT
    assert m.violations == []
