"""Property tests: no sequence of user operations breaks isolation.

A hypothesis state machine drives one container with random user
operations. It reads and writes memory, jumps with random registers into
gates at any offset, into kernel text and into loaded code, and calls the
gate with random numbers and arguments (mmap, mprotect, pkey calls and the
rest). It also delivers signals, calls rt_sigreturn on random frames, loads
random code and switches threads.

After every step no violation may have been recorded, and the container
kernel must not have crashed. No thread may be in user mode with a PKRU that
opens the kernel key.

The same machine run with a rule switched off must find a breach, which
shows the properties can fail.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from paracell.isolation import kernel as k
from paracell.isolation import layout, sigframe
from paracell.isolation import pkru as pk
from paracell.isolation.cpu import XCR0, Registers
from paracell.isolation.machine import Machine, Mode
from paracell.isolation.memory import PAGE_SIZE
from paracell.isolation.mm import MAP_FIXED, LoadRejected
from paracell.isolation.patterns import find_pkru_writers
from paracell.isolation.rules import ALL_RULES
from paracell.isolation.userland import User

#: Live threads at once; dead ones are replaced by new_thread.
MAX_LIVE_THREADS = 4
RUN_STEPS = 300

SYSCALLS = [
    k.NR_MMAP,
    k.NR_MPROTECT,
    k.NR_MUNMAP,
    k.NR_RT_SIGACTION,
    k.NR_RT_SIGRETURN,
    k.NR_SCHED_YIELD,
    k.NR_GETPID,
    k.NR_ARCH_PRCTL,
    k.NR_GETTID,
    k.NR_TKILL,
    k.NR_GETRANDOM,
    k.NR_PKEY_MPROTECT,
    k.NR_PKEY_ALLOC,
    k.NR_PKEY_FREE,
    k.NR_PKEY_SET,
]

PKRU_VALUES = st.sampled_from(
    [
        pk.PKRU_INIT,
        pk.KERNEL_PKRU,
        pk.PKRU_LINUX_DEFAULT,
        pk.PKRU_LINUX_DEFAULT & ~pk.ad_bit(pk.KERNEL_PKEY),
        pk.ad_bit(pk.KERNEL_PKEY),
        pk.wd_bit(pk.KERNEL_PKEY),
    ]
) | st.integers(0, 2**32 - 1)

WRITER_BYTES = st.sampled_from(
    [
        b"\x0f\x01\xef",
        b"\x0f\xae\x2f",
        b"\x48\x0f\xae\x2f",
        b"\x0f\xc7\x1f",
        b"\x0f\xae\xe8",
    ]
)


def _code_bytes() -> st.SearchStrategy[bytes]:
    """Random code, often with a PKRU writer (or LFENCE) spliced in."""
    plain = st.binary(min_size=1, max_size=64)
    spliced = st.tuples(plain, WRITER_BYTES, plain).map(lambda parts: b"".join(parts))
    return plain | spliced


class IsolationMachine(RuleBasedStateMachine):
    """One container under random user operations."""

    rules_enabled: frozenset[str] = ALL_RULES

    def __init__(self) -> None:
        super().__init__()
        self.machine = Machine(self.rules_enabled)
        self.user = User(self.machine)
        self.code_pages: list[int] = [self.user.stub]
        self.data_pages: list[int] = []

    # -- address and value pools ----------------------------------------------

    def _addresses(self) -> list[int]:
        m = self.machine
        gates = m.gates
        kernel = [
            gates.entry,
            gates.entry_wrpkru,
            gates.entry_wrpkru + 3,
            gates.entry_dispatch,
            gates.exit,
            gates.exit_wrpkru,
            gates.exit_wrpkru + 3,
            gates.exit_ret,
            gates.xrstor,
            gates.xrstor_dispatch,
            gates.abort,
            layout.KERNEL_DISPATCH,
            layout.KERNEL_XRSTOR_CONTINUE,
            layout.KERNEL_HYPERCALL_STUB,
            layout.PERCPU,
            layout.PERCPU_USER_PKRU,
            layout.KERNEL_SECRET,
            layout.PAGER_RING,
            layout.PAGER_DONE,
            layout.SIGRETURN_SCRATCH,
            layout.kernel_stack_top(1) - 8,
        ]
        user = self.code_pages + self.data_pages + [self.user.stop]
        stacks = [layout.user_stack_top(t) - 64 for t in m.threads]
        return kernel + user + stacks

    def _address(self, data: st.DataObject) -> int:
        gates = self.machine.gates
        gate_labels = st.sampled_from(
            sorted(gates.sanctioned_writers)
            + [gates.entry, gates.exit, gates.entry_dispatch, gates.exit_ret]
        )
        known = st.sampled_from(self._addresses())
        near = st.tuples(known, st.integers(-16, PAGE_SIZE)).map(lambda p: p[0] + p[1])
        gate_offset = st.integers(0, 0x80).map(lambda off: layout.GATE_PAGE + off)
        anywhere = st.integers(0, 2**32 - 1) | st.integers(0, 2**64 - 1)
        return data.draw(gate_labels | known | near | gate_offset | anywhere)

    def _value(self, data: st.DataObject) -> int:
        small = st.integers(0, 0x10000)
        return data.draw(
            st.just(0) | small | PKRU_VALUES | st.builds(lambda: self._address(data))
        )

    @property
    def alive(self) -> bool:
        return self.machine.current is not None

    def _settle(self) -> None:
        # The host never interrupts a gate, so the next user operation happens
        # only after the thread has left the gate page.
        self.machine.settle()

    # -- operations --------------------------------------------------------------

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), size=st.sampled_from([1, 4, 8]))
    def read(self, data: st.DataObject, size: int) -> None:
        self.user.read(self._address(data), size)

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), payload=st.binary(min_size=1, max_size=16))
    def write(self, data: st.DataObject, payload: bytes) -> None:
        self.user.write(self._address(data), payload)

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def jump(self, data: st.DataObject) -> None:
        names = ["rax", "rcx", "rdx", "rdi", "rsi", "r8", "r10", "r11"]
        registers = {
            name: self._value(data) for name in names if data.draw(st.booleans())
        }
        if data.draw(st.integers(0, 4)) == 0:
            registers["rsp"] = self._value(data)
        self.user.jump(self._address(data), max_steps=RUN_STEPS, **registers)
        self._settle()

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), pkru_value=PKRU_VALUES)
    def jump_onto_gate_writer(self, data: st.DataObject, pkru_value: int) -> None:
        # The attacker's favourite: land on a gate's WRPKRU or XRSTOR with
        # ECX = EDX = 0 and a chosen EAX, and a chosen return address.
        target = data.draw(
            st.sampled_from(sorted(self.machine.gates.sanctioned_writers))
        )
        if data.draw(st.booleans()):
            self.user.push(self._address(data))
        registers = {"rax": pkru_value, "rcx": 0, "rdx": 0, "rdi": self._value(data)}
        self.user.jump(target, max_steps=RUN_STEPS, **registers)
        self._settle()

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), nr=st.sampled_from(SYSCALLS) | st.integers(0, 1100))
    def gate_call(self, data: st.DataObject, nr: int) -> None:
        prot = st.integers(0, 7)
        length = st.sampled_from([1, PAGE_SIZE, 2 * PAGE_SIZE]) | st.integers(
            0, 1 << 20
        )
        args = [
            data.draw(
                st.sampled_from([0, MAP_FIXED]) | st.builds(lambda: self._value(data))
            ),
            data.draw(length | st.builds(lambda: self._value(data))),
            data.draw(prot | st.builds(lambda: self._value(data))),
            data.draw(st.integers(0, 16) | st.builds(lambda: self._value(data))),
        ]
        if nr == k.NR_MMAP:
            args = [
                args[0] if data.draw(st.booleans()) else 0,
                args[1],
                args[2],
                args[3] & MAP_FIXED,
            ]
        result = self.user.syscall(nr, *args)
        if nr == k.NR_MMAP and result is not None and result > 0:
            self.data_pages.append(result)
        self._settle()

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), signo=st.integers(1, 64))
    def signal(self, data: st.DataObject, signo: int) -> None:
        handler = self._address(data) if data.draw(st.booleans()) else 0
        self.user.syscall(k.NR_RT_SIGACTION, signo, handler, self.user.stop)
        if self.alive:
            target = data.draw(st.sampled_from(sorted(self.machine.threads)))
            self.user.syscall(k.NR_TKILL, target, signo)
            self.machine.run(RUN_STEPS)
            self._settle()

    @precondition(lambda self: self.alive)
    @rule(
        data=st.data(),
        frame_pkru=PKRU_VALUES,
        xstate_bv=st.sampled_from([0, 0x3, XCR0]),
    )
    def sigreturn(self, data: st.DataObject, frame_pkru: int, xstate_bv: int) -> None:
        if not self.data_pages:
            result = self.user.syscall(k.NR_MMAP, 0, PAGE_SIZE, 3, 0)
            if result is None or result < 0:
                return
            self.data_pages.append(result)
        frame = data.draw(st.sampled_from(self.data_pages))
        regs = Registers(
            gpr=[self._value(data) for _ in range(16)], rip=self._address(data)
        )
        encoded = sigframe.encode_frame(0, 0, regs, frame_pkru, xstate_bv=xstate_bv)
        if self.user.write(frame, encoded):
            self.user.jump(
                self.user.stub,
                max_steps=RUN_STEPS,
                rax=k.NR_RT_SIGRETURN,
                rsp=frame + 8,
            )
            self._settle()

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), code=_code_bytes(), offset=st.integers(0, 63))
    def load_and_run_code(self, data: st.DataObject, code: bytes, offset: int) -> None:
        try:
            address = self.user.load_code(code)
        except LoadRejected:
            # A rejection must mean the bytes really hold a PKRU writer.
            assert find_pkru_writers(code + bytes(PAGE_SIZE - len(code)))
            return
        self.code_pages.append(address)
        registers = {
            "rax": self._value(data),
            "rcx": 0,
            "rdx": 0,
            "rdi": self._value(data),
        }
        # Jump either anywhere into the code or, as an attacker would, straight
        # onto a spliced-in sequence.
        writers = find_pkru_writers(code)
        if writers and data.draw(st.booleans()):
            offset = writers[0].offset
        self.user.jump(
            address + min(offset, len(code) - 1), max_steps=RUN_STEPS, **registers
        )
        self._settle()

    @precondition(lambda self: self.alive and len(self.machine.runnable()) > 1)
    @rule(data=st.data())
    def switch_thread(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self.machine.runnable()))
        self.machine.host.preempt(target)

    @precondition(
        lambda self: (
            self.machine.container_alive
            and len(self.machine.runnable()) < MAX_LIVE_THREADS
        )
    )
    @rule()
    def new_thread(self) -> None:
        m = self.machine
        m.kernel.create_thread(rip=self.user.stop)
        if m.current is None:
            m.kernel.schedule_after_exit()

    # -- properties --------------------------------------------------------------------

    @invariant()
    def no_violation(self) -> None:
        assert self.machine.violations == [], [str(v) for v in self.machine.violations]

    @invariant()
    def kernel_never_crashed(self) -> None:
        names = {name for name, _ in self.machine.events}
        assert "kernel-oops" not in names
        assert self.machine.container_alive

    @invariant()
    def user_mode_never_has_kernel_rights(self) -> None:
        m = self.machine
        if (
            m.current is not None
            and m.thread.mode is Mode.USER
            and not m.on_gate_page(m.regs.rip)
        ):
            assert not pk.allows_kernel(m.regs.pkru)
        for thread in m.threads.values():
            assert not pk.allows_kernel(thread.user_pkru)


PROPERTY_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestIsolationProperties = IsolationMachine.TestCase
TestIsolationProperties.settings = PROPERTY_SETTINGS


def _machine_without(rule_name: str) -> type[IsolationMachine]:
    return type(
        f"IsolationWithout_{rule_name.replace('-', '_')}",
        (IsolationMachine,),
        {"rules_enabled": ALL_RULES - {rule_name}},
    )


@pytest.mark.parametrize("rule_name", ["kernel-pkey", "exit-pkru-check", "loader-scan"])
def test_properties_fail_without_rule(rule_name: str) -> None:
    search = settings(
        max_examples=300,
        stateful_step_count=20,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )
    with pytest.raises(AssertionError):
        run_state_machine_as_test(_machine_without(rule_name), settings=search)
