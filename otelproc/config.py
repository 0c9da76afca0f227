"""Every setting of otelproc in one table: its flag, its OTELPROC_* variable, its default.

Precedence, for each setting on its own: the command-line flag, then the
OTELPROC_* environment variable, then (for --exporter and --otlp-protocol) the
OpenTelemetry SDK's variable that means the same, then the default. The SDK's
other variables (OTEL_EXPORTER_OTLP_*, OTEL_BSP_*) are read by the SDK itself.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from otelproc import procfs
from otelproc.errors import ConfigError
from otelproc.model import DEFAULT_USAGE, USAGE_GROUPS
from otelproc.matching import EXE_NAME_MAX, PYTHON_INTERPRETERS, MatchRule
from otelproc.signals import DEFAULT_CLEAN, SignalNameError, parse_signal_set

if TYPE_CHECKING:
    from otelproc.identity import TraceBound

DEFAULT_MATCH = PYTHON_INTERPRETERS
INITIAL_PIDNS_INODE = 0xEFFFFFFC  # PROC_PID_INIT_INO: the host's pid namespace
POLL_MS = 100  # how often the commands read the ring buffer when no wake-up comes first
PID_MAX_LIMIT = 4 * 1024 * 1024  # the kernel's bound on pid_max (64-bit): no host has more processes
RING_BUFFER_MAX = 1 << 31  # the largest power of two a map's size (u32) holds
# The SDK's names for them (tests/unit/test_config.py checks they are its constants): spelled out, because
# importing the SDK here would make `otelproc events` and every settings error need it.
OTEL_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"


def parse_match(text: str) -> tuple[MatchRule, ...]:
    """ "python,python3.*": exact executable file names; a trailing * makes a prefix."""
    rules = []
    for item in text.split(","):
        name = item.strip()
        if not name:
            raise ConfigError(f"empty name in match list {text!r}")
        prefix = name.endswith("*")
        if prefix:
            name = name[:-1]
        if not name or "*" in name:
            raise ConfigError(f"{item.strip()!r}: only one trailing * (a prefix) is allowed, after a name")
        if len(name.encode()) > EXE_NAME_MAX:
            raise ConfigError(f"{name!r} is longer than {EXE_NAME_MAX} bytes, and the kernel compares no more")
        if "/" in name or "\0" in name:
            raise ConfigError(f"{name!r}: a file name has no '/' (match the executable's name, not its path)")
        rules.append(MatchRule(name, prefix))
    return tuple(rules)


@dataclass(frozen=True)
class Scope:
    kind: str  # "host", "pidns" or "cgroup"
    cgroup: str | None = None

    def __str__(self) -> str:
        return f"cgroup={self.cgroup}" if self.kind == "cgroup" else self.kind


def own_pidns_inode() -> int:
    return procfs.pidns(os.getpid())


def parse_scope(text: str) -> Scope:
    if text == "auto":
        return Scope("host" if own_pidns_inode() == INITIAL_PIDNS_INODE else "pidns")
    if text in ("host", "pidns"):
        return Scope(text)
    if text.startswith("cgroup="):
        path = text[len("cgroup=") :]
        if not os.path.isdir(path):
            raise ConfigError(f"cgroup {path!r} is not a directory (give a cgroup v2 path)")
        return Scope("cgroup", path)
    raise ConfigError(f"{text!r}: use host, pidns, cgroup=PATH or auto")


def parse_positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise ConfigError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise ConfigError(f"{text!r} must be greater than 0")
    return value


def parse_ring_size(text: str) -> int:
    value = parse_positive_int(text)
    if value < 4096 or value > RING_BUFFER_MAX or value & (value - 1):
        raise ConfigError(f"{value} must be a power of two from 4096 to {RING_BUFFER_MAX} bytes")
    return value


def parse_max_processes(text: str) -> int:
    value = parse_positive_int(text)
    if value > PID_MAX_LIMIT:
        raise ConfigError(f"{value} is more processes than a Linux host can have ({PID_MAX_LIMIT})")
    return value


def parse_trace_spans(text: str) -> int:
    value = parse_positive_int(text)
    if value < 2:
        raise ConfigError(f"{value} is fewer spans than one process can have (2)")
    return value


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of seconds") from None
    if value < 0 or not math.isfinite(value):
        raise ConfigError(f"{text!r} must be zero or more seconds")
    return value


def parse_positive_seconds(text: str) -> float:
    value = parse_seconds(text)
    if value == 0:
        raise ConfigError(f"{text!r} must be more than zero seconds")
    return value


def parse_optional_seconds(text: str) -> float | None:
    return None if text == "" else parse_seconds(text)


def parse_limit_seconds(text: str) -> float:
    """Seconds; 0 or empty: no limit."""
    return 0.0 if text.strip() == "" else parse_seconds(text)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{text!r} is not true or false")


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ConfigError(f"{text!r}: choose one of {', '.join(choices)}")
        return text

    return parse


def parse_port(text: str) -> int | None:
    if text in ("", "0"):
        return None
    value = parse_positive_int(text)
    if value > 65535:
        raise ConfigError(f"{value} is not a TCP port")
    return value


def parse_path(text: str) -> Path | None:
    return Path(text) if text else None


def parse_clean_signals(text: str) -> frozenset[int]:
    try:
        return parse_signal_set(text)
    except SignalNameError as exc:
        raise ConfigError(str(exc)) from None


def parse_usage(text: str) -> frozenset[str]:
    groups = frozenset(g.strip() for g in text.split(",") if g.strip())
    unknown = sorted(groups - set(USAGE_GROUPS))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a usage group; choose from {', '.join(USAGE_GROUPS)}")
    return groups


def parse_log_level(text: str) -> str:
    return parse_choice("debug", "info", "warning", "error")(text.lower())


@dataclass(frozen=True)
class Option:
    """One setting: flag, environment variable, default (as text), parser, and which commands take it."""

    name: str
    default: str
    parse: Callable[[str], Any]
    help: str
    commands: tuple[str, ...]
    metavar: str | None = None
    flag_only_bool: bool = False  # a switch: present means true
    sdk_env: tuple[str, ...] = ()  # the SDK's variables for the same thing, read after OTELPROC_* (unset if empty)
    word: str | None = None  # the flag's and variable's word, where the field's name says more (trace_all: --all)

    @property
    def flag(self) -> str:
        return "--" + (self.word or self.name).replace("_", "-")

    @property
    def env(self) -> str:
        return "OTELPROC_" + (self.word or self.name).upper()


EV, RUN, DETACH = "events", "run", "detach"
# The choices of --exporter, with their help; otel/exporters.py makes each (its EXPORTERS has the same names).
EXPORTER_CHOICES = {
    "otlp": "to a collector over OTLP (--otlp-endpoint, --otlp-protocol)",
    "console": "one line per span on stdout",
    "console-json": "every span in full, one JSON object per line on stdout",
}
AUTO = "auto"  # otlp when an endpoint is configured or a collector answers, else console
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
OPTIONS: tuple[Option, ...] = (
    Option(
        "match",
        DEFAULT_MATCH,
        parse_match,
        "track a process whose exec loads an executable file of one of these names (a #! script: its "
        "interpreter), and its descendants; a trailing * matches a prefix",
        (EV, RUN),
        "LIST",
    ),
    Option(
        "trace_all",
        "false",
        parse_bool,
        "track every process (ignores --match)",
        (EV, RUN),
        flag_only_bool=True,
        word="all",
    ),
    Option(
        "scope",
        "auto",
        parse_scope,
        "host; pidns (its own pid namespace and those below); cgroup=PATH (a cgroup v2 directory); "
        "auto: pidns when not in the host's pid namespace, else host",
        (EV, RUN),
        "SCOPE",
    ),
    Option("duration", "", parse_optional_seconds, "stop by itself after this many seconds", (EV, RUN), "SECONDS"),
    Option(
        "max_processes",
        "65536",
        parse_max_processes,
        "processes tracked at once (kernel map and table)",
        (EV, RUN),
        "N",
    ),
    Option(
        "ring_buffer_size", str(8 << 20), parse_ring_size, "kernel ring buffer bytes (power of two)", (EV, RUN), "BYTES"
    ),
    Option(
        "exporter",
        AUTO,
        parse_choice(AUTO, *EXPORTER_CHOICES),
        "; ".join(f"{name}: {help}" for name, help in EXPORTER_CHOICES.items())
        + f"; or {AUTO}: otlp when an endpoint is configured or a collector answers, else console",
        (RUN,),
        "NAME",
        sdk_env=(OTEL_TRACES_EXPORTER,),
    ),
    Option(
        "console_children",
        "show",
        parse_choice("show", "hide"),
        "console lines: a process tracked only because its parent is (it matches no --match name itself: sh, "
        "git, ...) is marked ↳ (show) or left out (hide)",
        (RUN,),
        "MODE",
    ),
    Option(
        "otlp_endpoint",
        "",
        str,
        "collector address; default: the SDK's OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else localhost:4317 / :4318",
        (RUN,),
        "URL",
    ),
    Option(
        "otlp_protocol",
        "grpc",
        parse_choice(*OTLP_PROTOCOLS),
        "grpc or http/protobuf",
        (RUN,),
        "PROTOCOL",
        sdk_env=(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL),
    ),
    Option(
        "service_name",
        "otelproc",
        str,
        "service.name for processes whose environment sets no OTEL_SERVICE_NAME",
        (RUN,),
        "NAME",
    ),
    Option(
        "start_span_delay",
        "1",
        parse_seconds,
        "a process still running after this long gets a 'started' span at once (the live view)",
        (RUN,),
        "SECONDS",
    ),
    Option(
        "trace_spans",
        "1000",
        parse_trace_spans,
        "spans in one process trace at most: a child joins its parent's trace while its pid is less than N/2 "
        "above that of the trace's first process; later ones start a trace of their own, linked to their parent. "
        "Set the same in the service's environment, for its request links",
        (RUN,),
        "N",
    ),
    Option(
        "trace_window",
        "10",
        parse_positive_seconds,
        "a child started longer than this after the first process of its parent's trace starts a trace of its "
        "own, linked to its parent (so that pids that wrapped round cannot join). Set the same in the service's "
        "environment",
        (RUN,),
        "SECONDS",
    ),
    Option("adopt", "true", parse_bool, "adopt matching processes already running at start", (RUN,), "BOOL"),
    Option(
        "sweep_interval",
        "10",
        parse_positive_seconds,
        "how often /proc is checked for exits and execs the kernel side lost",
        (RUN,),
        "SECONDS",
    ),
    Option(
        "state_file",
        "/var/lib/otelproc/state.json",
        parse_path,
        "live processes, kept for a restarted otelproc (mode 0600); empty: none",
        (RUN, DETACH),
        "PATH",
    ),
    Option(
        "pin_dir",
        "/sys/fs/bpf/otelproc",
        parse_path,
        "bpffs directory where the probe is pinned, so it keeps recording across restarts; empty: no pinning",
        (RUN, DETACH),
        "PATH",
    ),
    Option(
        "keep_probe",
        "false",
        parse_bool,
        "on SIGINT (Ctrl-C) too, leave the probe pinned and recording for the next otelproc, as on SIGTERM; "
        "without it Ctrl-C detaches it, as `otelproc detach` does",
        (RUN,),
        flag_only_bool=True,
    ),
    Option(
        "stop_timeout",
        "3",
        parse_seconds,
        "a stop takes at most this long, whatever the collector does; spans not delivered by then are kept "
        "beside the state file (unsent-spans.pb, at most 16 MiB) and sent first at the next start",
        (RUN,),
        "SECONDS",
    ),
    Option(
        "unattended_limit",
        "900",
        parse_limit_seconds,
        "a pinned probe nobody has read for this long (otelproc down) records no new lifetimes, only counts "
        "them, until otelproc is back; processes it tracks already still get their exits; 0 or empty: never",
        (RUN,),
        "SECONDS",
    ),
    Option("health_port", "", parse_port, "serve /healthz and /readyz on this TCP port; empty: off", (RUN,), "PORT"),
    Option(
        "redact",
        "true",
        parse_bool,
        "replace secrets in command lines with *** (see docs/security.md)",
        (EV, RUN),
        "BOOL",
    ),
    Option(
        "clean_signals",
        DEFAULT_CLEAN,
        parse_clean_signals,
        "a process ended by one of these signals, without a core dump, stopped cleanly: its span is not an error; "
        "empty: every fatal signal is an error",
        (RUN,),
        "LIST",
    ),
    Option(
        "usage",
        DEFAULT_USAGE,
        parse_usage,
        "what a lifetime span says the process used: cpu (user and system time), memory (peak resident), "
        "faults (page faults), switches (context switches), io (storage bytes); empty: none",
        (RUN,),
        "LIST",
    ),
    Option(
        "log_level",
        "info",
        parse_log_level,
        "debug, info, warning or error (logs go to stderr)",
        (EV, RUN, DETACH),
        "LEVEL",
    ),
)


def options_for(command: str) -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if command in o.commands)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    for option in options_for(command):
        text = f"{option.help} [env {option.env}; default {option.default or 'unset'}]"
        if option.flag_only_bool:
            parser.add_argument(option.flag, dest=option.name, action="store_const", const="true", help=text)
        else:
            parser.add_argument(option.flag, dest=option.name, metavar=option.metavar, help=text)


@dataclass(frozen=True)
class Settings:
    """Every setting, parsed and typed: one field per Option in OPTIONS, with the same name.

    A setting that the command does not take holds its default. `sources` says where each
    value came from: "flag", "env" or "default".
    """

    match: tuple[MatchRule, ...]
    trace_all: bool
    scope: Scope
    duration: float | None
    max_processes: int
    ring_buffer_size: int
    exporter: str
    console_children: str
    otlp_endpoint: str
    otlp_protocol: str
    service_name: str
    start_span_delay: float
    trace_spans: int
    trace_window: float
    adopt: bool
    sweep_interval: float
    state_file: Path | None
    pin_dir: Path | None
    keep_probe: bool
    stop_timeout: float
    unattended_limit: float
    health_port: int | None
    redact: bool
    clean_signals: frozenset[int]
    usage: frozenset[str]
    log_level: str
    sources: dict[str, str] = field(default_factory=dict, compare=False)


def check_settings_fields() -> None:
    """OPTIONS and Settings name the same settings: adding one to only one of them fails at import."""
    option_names = {o.name for o in OPTIONS}
    field_names = {f.name for f in fields(Settings)} - {"sources"}
    if option_names != field_names:
        raise TypeError(
            f"config.Settings and OPTIONS differ: options without a field {sorted(option_names - field_names)}, "
            f"fields without an option {sorted(field_names - option_names)}"
        )


check_settings_fields()


def resolve(command: str, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Flag, else OTELPROC_* variable, else the SDK's, else default; each parsed, errors naming where it came from."""
    env = os.environ if environ is None else environ
    values, sources = {}, {}
    for option in OPTIONS:
        raw, source, where = None, "flag", option.flag
        if command in option.commands:
            raw = getattr(args, option.name, None)
            if raw is None:
                raw, source, where = env.get(option.env), "env", option.env
            for name in option.sdk_env:
                if raw is None and env.get(name):
                    raw, where = env[name], name
        if raw is None:
            raw, source, where = option.default, "default", "default"
        try:
            values[option.name] = option.parse(raw)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        sources[option.name] = source
    return Settings(**values, sources=sources)


def trace_bound(spans: int, window: float) -> TraceBound:
    from otelproc.identity import TraceBound  # (here: the settings themselves need no OpenTelemetry)

    return TraceBound(spans, round(window * os.sysconf("SC_CLK_TCK")))


def service_setting(name: str, environ: Mapping[str, str]) -> Any:
    """The sidecar's setting `name` as far as a service's own environment tells it (its OTELPROC_*
    variable), for the app side: unset or bad there, it is the default, as the sidecar would refuse it."""
    (option,) = [o for o in OPTIONS if o.name == name]
    try:
        return option.parse(environ.get(option.env, option.default))
    except ConfigError:
        return option.parse(option.default)


def service_trace_bound(environ: Mapping[str, str]) -> TraceBound:
    return trace_bound(service_setting("trace_spans", environ), service_setting("trace_window", environ))


def scope_pidns(scope: Scope) -> int:
    """The pid namespace whose numbering the kernel side uses; 0: the host's."""
    return own_pidns_inode() if scope.kind == "pidns" else 0


def tracking_config(settings: Settings) -> str:
    """What decides which processes are tracked and how they are numbered: a state file of other tracking is not resumed."""
    scope = settings.scope
    pidns = scope_pidns(scope)
    match = "all" if settings.trace_all else ",".join(str(r) for r in settings.match)
    return f"match={match} scope={scope} pidns={pidns}"


def describe_tracking(settings: Settings) -> str:
    what = "every process" if settings.trace_all else "executables " + ",".join(str(r) for r in settings.match)
    return f"tracking {what}, scope {settings.scope}"


def markdown_table() -> str:
    """The settings table of docs/configuration.md, made from OPTIONS so the two cannot disagree."""
    rows = ["| flag | environment | default | commands | what it sets |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        flag = o.flag if o.flag_only_bool else f"{o.flag} {o.metavar}"
        env = ", else ".join(f"`{name}`" for name in (o.env, *o.sdk_env))
        rows.append(f"| `{flag}` | {env} | `{o.default or '(unset)'}` | {', '.join(o.commands)} | {o.help} |")
    return "\n".join(rows)
