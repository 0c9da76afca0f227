"""Names of signals and of the kernel's si_code values, and the "clean stop" setting.

Python's signal module has the signal names; the si_code values (which say
whether a signal came from kill(), a fault or the kernel) it does not have.
"""

from __future__ import annotations

import signal

# A clean end of a service, as systemd counts it (SuccessExitStatus): not an error.
DEFAULT_CLEAN = "TERM,INT,HUP,PIPE"

SI_KERNEL = 0x80
_GENERIC_CODES = {
    0: "SI_USER",
    SI_KERNEL: "SI_KERNEL",
    -1: "SI_QUEUE",
    -2: "SI_TIMER",
    -3: "SI_MESGQ",
    -4: "SI_ASYNCIO",
    -5: "SI_SIGIO",
    -6: "SI_TKILL",
    -7: "SI_DETHREAD",
    -60: "SI_ASYNCNL",
}
# Codes above 0 (other than SI_KERNEL) mean something for one signal only: a fault's kind.
_FAULT_CODES: dict[int, tuple[str, ...]] = {
    signal.SIGSEGV: (
        "SEGV_MAPERR",
        "SEGV_ACCERR",
        "SEGV_BNDERR",
        "SEGV_PKUERR",
        "SEGV_ACCADI",
        "SEGV_ADIDERR",
        "SEGV_ADIPERR",
        "SEGV_MTEAERR",
        "SEGV_MTESERR",
        "SEGV_CPERR",
    ),
    signal.SIGBUS: ("BUS_ADRALN", "BUS_ADRERR", "BUS_OBJERR", "BUS_MCEERR_AR", "BUS_MCEERR_AO"),
    signal.SIGILL: (
        "ILL_ILLOPC",
        "ILL_ILLOPN",
        "ILL_ILLADR",
        "ILL_ILLTRP",
        "ILL_PRVOPC",
        "ILL_PRVREG",
        "ILL_COPROC",
        "ILL_BADSTK",
        "ILL_BADIADDR",
    ),
    signal.SIGFPE: (
        "FPE_INTDIV",
        "FPE_INTOVF",
        "FPE_FLTDIV",
        "FPE_FLTOVF",
        "FPE_FLTUND",
        "FPE_FLTRES",
        "FPE_FLTINV",
        "FPE_FLTSUB",
    ),
    signal.SIGSYS: ("SYS_SECCOMP", "SYS_USER_DISPATCH"),
    signal.SIGTRAP: ("TRAP_BRKPT", "TRAP_TRACE", "TRAP_BRANCH", "TRAP_HWBKPT", "TRAP_UNK", "TRAP_PERF"),
}


class SignalNameError(ValueError):
    """A name in a signal list that is no signal's; the message says which."""


def signal_name(number: int) -> str:
    """SIGTERM for 15; "signal 40" for a number without a name (a real-time signal)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def code_name(signo: int, code: int) -> str:
    """si_code as the kernel's headers name it, e.g. SI_USER, SI_KERNEL, SEGV_MAPERR."""
    name = _GENERIC_CODES.get(code)
    if name:
        return name
    names = _FAULT_CODES.get(signo, ())
    return names[code - 1] if 0 < code <= len(names) else str(code)


def parse_signal_set(text: str) -> frozenset[int]:
    """ "TERM,INT" or "SIGTERM, sigint": the signal numbers; an empty text is the empty set."""
    numbers = set()
    for item in text.split(","):
        name = item.strip().upper()
        if not name:
            continue
        full = name if name.startswith("SIG") else "SIG" + name
        try:
            numbers.add(signal.Signals[full].value)
        except KeyError:
            raise SignalNameError(f"{item.strip()!r} is not a signal name (e.g. TERM, INT, HUP, PIPE)") from None
    return frozenset(numbers)
