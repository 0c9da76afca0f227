"""Secrets out of command lines before they become span attributes.

A command line is readable by every user of the host in /proc, but a tracing
backend is read by many more people, kept for longer and copied further.
Children of Python processes are tracked too, so `subprocess.run(["curl", ...])`
is on this path. The rules follow how secret scanners classify what they find
(gitleaks' rules, detect-secrets' plugins): a secret is named by what holds it
(a keyword), by where it sits (a header, a URL, a tool's password option), or
by its own shape (a provider's token prefix). What is replaced by ***
(docs/security.md):

1. keyword: the value of a flag or KEY=VALUE whose name says secret:
   `--password=x`, `--db-token x`, `-Dapp.secret=x`, `API_KEY=x`;
2. header: the value of a credential header, in any argument that is one:
   `-H "Authorization: Bearer x"` (the scheme stays), `--header=X-Api-Key: x`, `Cookie: x`;
3. user:password: `curl -u user:x`, `--user user:x`, `--proxy-user`, httpie `-a user:x`;
4. tool options: mysql/mariadb/mysqldump/mysqladmin `-px`, sshpass `-p x`, redis-cli `-a x`,
   `docker/podman/nerdctl/helm/oras login -p x`, mongo/mongosh `-p x`, openssl `-pass/-passin/-passout/-k x`;
5. URL: the password of `scheme://user:x@host`, and query parameters whose name says secret
   (`?access_token=x`, `&X-Amz-Signature=x`, `&sig=x`);
6. shape: tokens that announce themselves wherever they are: AWS `AKIA...`/`ASIA...`, GitHub
   `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_`/`github_pat_`, GitLab `glpat-`, Slack `xox?-`, Stripe
   `sk_live_`/`rk_live_`, OpenAI `sk-...`, Google `AIza...`, npm `npm_`, PyPI `pypi-`, Hugging Face
   `hf_`, SendGrid `SG.`, JSON web tokens `eyJ...`, a `Bearer`/`Basic` credential, and a PEM private key.

A name "says secret" when, lower-cased with - _ . removed, it contains one of
SECRET_WORDS, or one of its parts is exactly one of SECRET_PARTS; a name that
only says where a secret is (`--password-file`, `--password-stdin`) or that
turns one off (`--no-password`) does not. This errs towards hiding:
`--tokenizer=x` is masked too.

Most command lines contain none of the words and shapes these rules look for;
a substring test over the whole command line (_TRIGGERS) finds that out before
any rule runs.

redact_text applies the same rules to free text (an exception's message and
stack, which the app side exports): rule 1 as `name=value`, `name: value`,
`"name": "value"` and `--name value`, rule 2 as a header line, rules 5 and 6 as
they are, and a PEM private key from its BEGIN line to its END line.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

MASK = "***"
SECRET_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
    "authorization",
    "cookie",
    "signature",
    "sessionid",
)
SECRET_PARTS = ("pass", "pwd", "auth", "sig", "pw")
# Last parts that name where a secret is, not the secret: `--password-file /run/x`, `--password-stdin`.
_POINTER_PARTS = ("file", "path", "stdin", "env", "dir", "command", "cmd", "prompt", "length", "min", "max")

_FLAG = re.compile(r"^(-{1,2}[A-Za-z][\w.-]*)(?:=(.*))?$", re.DOTALL)
_KEY_VALUE = re.compile(r"^([A-Za-z_][\w.-]*)=(.*)$", re.DOTALL)
_HEADER = re.compile(r"^\s*([A-Za-z][\w-]*)\s*:\s*(.*)$", re.DOTALL)
_AUTH_SCHEME = re.compile(r"^((?:Bearer|Basic|Token|Digest|Negotiate|AWS4-HMAC-SHA256|Bot)\s+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^/\s:@]*:)(?P<password>[^@\s/]+)(?P<at>@)")
_QUERY_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&#\s]+)=)(?P<value>[^&#\s]*)")
_SHAPES = re.compile(
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{22,}"
    r"|\bglpat-[A-Za-z0-9_-]{20,}"
    r"|\bxox[abeoprs]-[A-Za-z0-9-]{10,}"
    r"|\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\bnpm_[A-Za-z0-9]{36}"
    r"|\bpypi-[A-Za-z0-9_-]{50,}"
    r"|\bhf_[A-Za-z]{30,}"
    r"|\bSG\.[\w-]{16,}\.[\w-]{16,}"
    r"|\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*"
    r"|(?<=Bearer )[^\s'\"]+|(?<=Basic )(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{8,}={0,2}"
)
_PRIVATE_KEY = re.compile(r"-----BEGIN[A-Z ]* PRIVATE KEY( BLOCK)?-----")
_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN[A-Z ]* PRIVATE KEY( BLOCK)?-----.*?(?:-----END[A-Z ]* PRIVATE KEY( BLOCK)?-----|\Z)", re.DOTALL
)
# In text: a name, maybe quoted, then = or : and a value, maybe quoted (`password=x`, `"token": "x"`,
# `Authorization: Bearer x`), or a flag and its value (`--db-token x`); the name decides (says_secret).
_TEXT_NAMED_VALUE = re.compile(
    r"(?<![\w.-])(?P<name>(?P<dash>-{1,2})?[A-Za-z_][\w.-]*)(?P<quote>['\"]?)(?P<sep>(?(dash)(?:[ \t]+|=)|\s*[=:]\s*))"
    r"(?P<value>'[^'\n]*'?|\"[^\"\n]*\"?|(?:(?:Bearer|Basic|Token|Digest|Negotiate|Bot)\s+)?(?!\{)[^\s,;)\]}'\"]+)",
    re.IGNORECASE,
)
# Every command line that could need masking contains one of these, lower-cased ("\n-p": an
# argument that starts with -p); most contain none. Plain substring tests are several times
# faster than one regular expression with all of them.
_TRIGGERS = (
    "pass",
    "pw",
    "auth",
    "secret",
    "token",
    "key",
    "credential",
    "cookie",
    "sig",
    "session",
    "bearer",
    "basic",
    "://",
    "\n-p",
    "\n-a",
    "\n-u",
    "\n-k",
    "\n--user",
    "\n--proxy-user",
    "akia",
    "asia",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xox",
    "k_live",
    "k_test",
    "sk-",
    "aiza",
    "npm_",
    "pypi-",
    "hf_",
    "sg.",
    "eyj",
    "private key",
)
# program name -> (options whose value is the next argument, options whose value is attached)
_TOOL_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mysql": ((), ("-p",)),
    "mariadb": ((), ("-p",)),
    "mysqldump": ((), ("-p",)),
    "mysqladmin": ((), ("-p",)),
    "sshpass": (("-p",), ("-p",)),
    "redis-cli": (("-a",), ()),
    "mongo": (("-p",), ()),
    "mongosh": (("-p",), ()),
    "openssl": (("-pass", "-passin", "-passout", "-k"), ()),
}
_LOGIN_TOOLS = ("docker", "podman", "nerdctl", "buildah", "skopeo", "helm", "oras", "crane")
_USER_PASSWORD_OPTIONS = ("-u", "--user", "-U", "--proxy-user", "-a", "--auth")
_USER_PASSWORD_TOOLS = ("curl", "wget", "http", "https", "httpie", "xh")
_HEADER_OPTIONS = ("-H", "--header")


def says_secret(name: str) -> bool:
    parts = [p for p in re.split(r"[-_.]", name.lower().lstrip("-")) if p]
    if not parts or parts[0] == "no" or parts[-1] in _POINTER_PARTS:
        return False
    joined = "".join(parts)
    return any(word in joined for word in SECRET_WORDS) or any(part in SECRET_PARTS for part in parts)


def _header(arg: str) -> str | None:
    """A credential header's value masked (its scheme kept), or None when arg is no such header."""
    match = _HEADER.match(arg)
    if match is None or not says_secret(match[1]) and not match[1].lower().endswith("-key"):
        return None
    scheme = _AUTH_SCHEME.match(match[2])
    return f"{match[1]}: {scheme[1] if scheme else ''}{MASK}"


def _in_place(arg: str) -> str:
    """The rules that replace part of any argument: URL passwords and parameters, token shapes."""
    if _PRIVATE_KEY.search(arg):
        return MASK
    if "://" in arg:
        arg = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], arg)
        arg = _QUERY_PARAM.sub(lambda m: m["head"] + MASK if says_secret(m["name"]) else m[0], arg)
    return _SHAPES.sub(MASK, arg)


def _tool_options(argv: tuple[str, ...] | list[str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The program's options whose value is the next argument, is attached, and is user:password."""
    program = os.path.basename(argv[0]) if argv else ""
    separate, attached = _TOOL_OPTIONS.get(program, ((), ()))
    user_password: tuple[str, ...] = ()
    if program in _LOGIN_TOOLS and "login" in argv:
        separate += ("-p",)
    if program in _USER_PASSWORD_TOOLS:
        user_password = _USER_PASSWORD_OPTIONS
    return separate + user_password, attached, user_password


def _option_value(option: str, value: str, user_password: tuple[str, ...]) -> str:
    """The value of an option that holds a secret: a header keeps its name (and scheme),
    user:password its user; any other value is masked whole."""
    if option in _HEADER_OPTIONS:
        return _header(value) or _in_place(value)
    if option in user_password:
        user, sep, _password = value.partition(":")
        return f"{user}:{MASK}" if sep else value
    return MASK


def redact_argv(argv: tuple[str, ...] | list[str]) -> list[str]:
    """A copy of argv with secret values replaced by ***; everything else as it was."""
    joined = "\n" + "\n".join(argv).lower()
    if not any(trigger in joined for trigger in _TRIGGERS):
        return list(argv)
    separate, attached, user_password = _tool_options(argv)
    out = [_in_place(argv[0])] if argv else []
    pending: str | None = None  # the option whose value is the next argument
    for arg in argv[1:]:
        if pending is not None:
            out.append(_option_value(pending, arg, user_password))
            pending = None
            continue
        flag = _FLAG.match(arg)
        if flag is not None:
            name, value = flag[1], flag[2]
            cut = next((o for o in attached if arg.startswith(o) and len(arg) > len(o)), None)
            if cut is not None:  # mysql -pVALUE
                out.append(cut + MASK)
            elif name in separate or name in _HEADER_OPTIONS or says_secret(name):
                if value is None:
                    pending = name
                    out.append(arg)
                else:
                    out.append(f"{name}={_option_value(name, value, user_password)}")
            else:
                out.append(_in_place(arg))
            continue
        key_value = _KEY_VALUE.match(arg)
        if key_value is not None and says_secret(key_value[1]):
            out.append(f"{key_value[1]}={MASK}")
        else:
            out.append(_header(arg) or _in_place(arg))
    return out


@lru_cache(maxsize=256)  # at most 256 x 2 x ARGV_MAX (8 KiB): 4 MiB held, when every command line is long
def redacted(argv: tuple[str, ...]) -> tuple[str, ...]:
    """redact_argv once per distinct command line: a pool of workers, or a script run in a loop, repeats one."""
    return tuple(redact_argv(argv))


def _masked_value(match: re.Match[str]) -> str | None:
    """One name and value of redact_text with the value masked (quotes and a header's scheme kept),
    or None when the name does not say secret."""
    name, sep, value = match["name"], match["sep"], match["value"]
    if not says_secret(name) and not name.lower().endswith("-key"):
        return None
    quote = value[0] if value[0] in "'\"" else ""
    scheme = _AUTH_SCHEME.match(value[len(quote) :])
    closing = quote if len(value) > 1 and value.endswith(quote) else ""
    return f"{name}{match['quote']}{sep}{quote}{scheme[1] if scheme else ''}{MASK}{closing}"


def redact_text(text: str) -> str:
    """Free text (an exception's message, a stack trace) with the rules of redact_argv applied: the
    values of names that say secret, credential headers, URL passwords and parameters, token shapes,
    PEM private keys."""
    if not any(trigger in "\n" + text.lower() for trigger in _TRIGGERS):
        return text
    text = _PRIVATE_KEY_BLOCK.sub(MASK, text)
    out: list[str] = []
    done = pos = 0
    while (match := _TEXT_NAMED_VALUE.search(text, pos)) is not None:
        masked = _masked_value(match)
        if masked is None:  # its value may hold a name that says secret: `bad config: password=x`
            pos = match.end("name")
            continue
        out += [text[done : match.start()], masked]
        done = pos = match.end()
    text = "".join(out) + text[done:]
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], text)
        text = _QUERY_PARAM.sub(lambda m: m["head"] + MASK if says_secret(m["name"]) else m[0], text)
    return _SHAPES.sub(MASK, text)
