"""The `otelproc` command: check, events, run, detach.

Every failure the user can act on is one line on stderr and a non-zero exit,
the code its error carries (otelproc/errors.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import NoReturn, Sequence

from otelproc import __version__, config
from otelproc.clock import BootClock
from otelproc.config import POLL_MS, Settings
from otelproc.errors import EXIT_USAGE, OtelprocError
from otelproc.kernel.checks import EVENTS_CAPS, require_caps, run_checks
from otelproc.kernel.decoder import MalformedRecord, decode
from otelproc.kernel.probe import Probe, ProbeConfig
from otelproc.kernel.record import EventLayout
from otelproc.redact import redacted
from otelproc.stop import StopSignal

log = logging.getLogger("otelproc")


class UsageError(OtelprocError):
    exit_code = EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage plus a line
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="otelproc", description="Process lifetimes of python/uvicorn services as OpenTelemetry spans."
    )
    parser.add_argument("--version", action="version", version=f"otelproc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    sub.add_parser("check", help="can otelproc run here? kernel, BTF, capabilities, libbpf, a real load")
    events = sub.add_parser(
        "events",
        help="print the kernel's process events as JSON lines",
        description="One JSON object per exec, fork and exit of a tracked process, on stdout.",
    )
    config.add_arguments(events, "events")
    run = sub.add_parser(
        "run",
        help="turn every tracked process lifetime into an OpenTelemetry span",
        description="Every tracked process lifetime becomes a span, exported over OTLP (or printed).",
        epilog="Stopping: Ctrl-C (SIGINT) detaches the probe (--keep-probe keeps it); SIGTERM (a service manager) "
        "leaves it pinned and recording for the next otelproc. Either takes at most --stop-timeout seconds; spans "
        "not delivered by then are sent first at the next start. Settings: flag, then OTELPROC_* variable, then "
        "default. The SDK reads OTEL_EXPORTER_OTLP_* and OTEL_BSP_* itself.",
    )
    config.add_arguments(run, "run")
    detach = sub.add_parser(
        "detach",
        help="remove the probe `otelproc run` leaves pinned, for good",
        description="Removes the probe pinned in --pin-dir (its programs stop, its maps and unread records go) "
        "and the state file. An otelproc still running keeps its probe until it stops.",
    )
    config.add_arguments(detach, "detach")
    return parser


def cmd_events(settings: Settings) -> int:
    require_caps(EVENTS_CAPS)
    clock = BootClock()
    out = sys.stdout
    layout: EventLayout | None = None  # the probe's struct event, once it is open

    def on_record(raw: bytes) -> None:
        try:
            event = decode(raw, clock, layout)
        except MalformedRecord as exc:
            log.warning("skipped a record: %s", exc)
            return
        if settings.redact and event.argv:
            event = event._replace(argv=redacted(event.argv))
        out.write(json.dumps(event.to_json_dict()) + "\n")

    stop = StopSignal()
    deadline = None if settings.duration is None else time.monotonic() + settings.duration
    with Probe(ProbeConfig.from_settings(settings), on_record) as probe:
        layout = probe.layout
        log.info("attached; %s", config.describe_tracking(settings))
        for program in probe.left_out:
            log.warning("%s", program.warning())
        while not stop and (deadline is None or time.monotonic() < deadline):
            clock.refresh()
            probe.poll(POLL_MS)
            out.flush()
        probe.poll(0)
        out.flush()
        lost = probe.lost()
    log.info("stopped; lost in the kernel: %s", ", ".join(f"{k}={v}" for k, v in lost.items()))
    return 0


def cmd_check() -> int:
    results = run_checks()
    for result in results:
        print(("ok    " if result.ok else "FAIL  ") + result.line, file=sys.stdout if result.ok else sys.stderr)
    return 0 if all(r.ok for r in results) else EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, format="otelproc: %(message)s", level=logging.INFO)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "check":
            return cmd_check()
        settings = config.resolve(args.command, args)
        logging.getLogger().setLevel(settings.log_level.upper())
        if args.command == "events":
            return cmd_events(settings)
        from otelproc.sidecar.loop import detach, run_sidecar

        if args.command == "detach":
            return detach(settings)
        return run_sidecar(settings)
    except OtelprocError as exc:
        print(f"otelproc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader of stdout went away: nothing left to do, and nothing to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
