"""Secrets out of command lines before they become span attributes.

A command line is readable by every user of the host in /proc, but a tracing
backend is read by many more people, kept for longer and copied further.
What is replaced by *** (docs/security.md):

- the value of a flag whose name says secret: `--password=x`, `--db-token x`, `-secret=x`
- the password options of known tools: mysql/mariadb `-pVALUE`, sshpass `-p VALUE`, redis-cli `-a VALUE`
- the password in a URL: `postgres://user:VALUE@host/db`
- the value of KEY=VALUE when KEY says secret: `AWS_SECRET_ACCESS_KEY=x`, `password=x`

A name "says secret" when, lower-cased with - _ . removed, it contains one of
SECRET_WORDS, or one of its parts is exactly one of SECRET_PARTS. This errs
towards hiding: `--tokenizer=x` is masked too.
"""

from __future__ import annotations

import os
import re

MASK = "***"
SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "apikey", "accesskey", "privatekey", "credential")
SECRET_PARTS = ("pass", "pwd", "auth")
_FLAG = re.compile(r"^(-{1,2}[A-Za-z][\w.-]*)(?:=(.*))?$", re.DOTALL)
_KEY_VALUE = re.compile(r"^([A-Za-z_][\w.-]*)=(.*)$", re.DOTALL)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^/\s:@]*:)(?P<password>[^@\s/]+)(?P<at>@)")
# Any argument that could need masking contains one of these (lower-cased); most command lines have none.
_TRIGGER = re.compile(r"pass|pwd|auth|secret|token|key|credential|://|^-[pa]", re.IGNORECASE | re.MULTILINE)
# (program name prefix, option, value attached to the option rather than the next argument)
_TOOL_OPTIONS = (("mysql", "-p", True), ("mariadb", "-p", True), ("sshpass", "-p", False), ("redis-cli", "-a", False))


def says_secret(name: str) -> bool:
    lowered = name.lower().lstrip("-")
    parts = re.split(r"[-_.]", lowered)
    joined = "".join(parts)
    return any(word in joined for word in SECRET_WORDS) or any(part in SECRET_PARTS for part in parts)


def redact_argv(argv: tuple[str, ...] | list[str]) -> list[str]:
    """A copy of argv with secret values replaced by ***; everything else as it was."""
    if not _TRIGGER.search("\n".join(argv)):
        return list(argv)
    program = os.path.basename(argv[0]) if argv else ""
    tool = [(option, attached) for prefix, option, attached in _TOOL_OPTIONS if program.startswith(prefix)]
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        arg = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], arg)
        flag = _FLAG.match(arg)
        key_value = _KEY_VALUE.match(arg)
        if flag and says_secret(flag[1]):
            if flag[2] is None:
                mask_next = True  # `--token VALUE`: the value is the next argument
            else:
                arg = f"{flag[1]}={MASK}"
        elif key_value and says_secret(key_value[1]):
            arg = f"{key_value[1]}={MASK}"
        for option, attached in tool:
            if attached and arg.startswith(option) and len(arg) > len(option):
                arg = option + MASK
            elif not attached and arg == option:
                mask_next = True
        out.append(arg)
    return out
