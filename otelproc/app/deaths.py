"""Why a Python process died, in Python's words, on its process trace.

The kernel sees `exit status 1`; the interpreter knows why. When a process with
the app side dies of an exception, this module exports, through the service's
own TracerProvider, a span that is a child of the process's process span (its
context from links.own_process, as the sidecar computes it): named for the cause,
`ValueError: bad config (app.py:42)`, status ERROR with that description, and the
OpenTelemetry exception conventions in an `exception` event, the text redacted by
otelproc.redact and bounded. It flushes the provider itself (at most
FLUSH_SECONDS), and every hook hands on to the one it replaced: tracebacks are
printed as before.

What each hook sees (the span's otelproc.exception.source):
- excepthook: an exception uncaught in the main thread; the interpreter then exits
  with status 1 (KeyboardInterrupt is a stop asked for, not a death: left out);
- threading.excepthook: an exception that ended a thread; the process may live on;
- multiprocessing: an exception raised by a multiprocessing Process's run(), which
  the child's bootstrap catches, prints and turns into exit status 1, never
  reaching sys.excepthook (uvicorn --workers, pool workers);
- sys.exit: sys.exit() with a message (status 1), reported as the interpreter ends;
- logging: the last exception logged at ERROR or above (the record's exc_info, else
  the exception being handled where it was logged), reported only when the
  process then ends with a non-zero status through sys.exit() or os._exit(): a
  server that logs its start-up failure and exits (gunicorn, uvicorn) ends so.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing.process
import os
import sys
import threading
import time
import traceback
from types import FrameType, TracebackType
from typing import Any, Callable, NoReturn

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from otelproc.app.links import own_process
from otelproc.redact import redact_text

MESSAGE_LIMIT = 1024  # characters of exception.message (and of a logged error's message)
STACKTRACE_LIMIT = 8192  # characters of exception.stacktrace: its end, where the exception is
SUMMARY_LIMIT = 160  # characters of the message's first line in the span's name
FLUSH_SECONDS = 2.0  # the longest a dying process waits for its spans to leave
TRACER_NAME = "otelproc.app.deaths"


@dataclasses.dataclass(frozen=True)
class Death:
    """An exception as it was when it happened, without its frames (a logged one may wait until the exit)."""

    source: str  # the hook that saw it
    error: traceback.TracebackException
    type_name: str  # `ValueError`, `OSError`, `mypkg.errors.ConfigError`
    message: str
    time_ns: int
    pid: int
    thread: threading.Thread | None = None
    logger: str | None = None
    log_message: str | None = None

    def location(self) -> traceback.FrameSummary | None:
        """Where it was raised: the innermost frame of Python code (a SyntaxError: the line it could not parse)."""
        if self.error.exc_type is not None and issubclass(self.error.exc_type, SyntaxError) and self.error.filename:
            # TracebackException keeps a SyntaxError's line number as text
            return traceback.FrameSummary(
                self.error.filename, int(self.error.lineno or 0), "<module>", lookup_line=False
            )
        return next((f for f in reversed(self.error.stack) if not f.filename.startswith("<frozen")), None)

    def summary(self) -> str:
        """The one line a person reads first: `ValueError: bad config (app.py:42)`."""
        short = self.type_name.rpartition(".")[2]
        first = redact_text(self.message.strip().partition("\n")[0])
        if len(first) > SUMMARY_LIMIT:
            first = first[: SUMMARY_LIMIT - 1] + "…"
        text = f"{short}: {first}" if first else short
        where = self.location()
        if where is not None:
            text += f" ({os.path.basename(where.filename)}:{where.lineno})"
        if self.thread is not None:
            text += f" in thread {self.thread.name}"
        return text

    def stacktrace(self) -> str:
        """Python's own text of the exception, bounded: the exception's own words (the end of the
        text) to a quarter of the limit, from their start; the frames before them to the rest."""
        lines = list(self.error.format())
        words = list(self.error.format_exception_only())
        if lines[-len(words) :] != words:
            return bounded_trace("".join(lines))
        said = _bounded("".join(words), STACKTRACE_LIMIT // 4)
        return bounded_trace("".join(lines[: -len(words)]), STACKTRACE_LIMIT - len(said)) + said


def _cut(text: str, limit: int) -> str:
    """text in at most about `limit` characters: its first quarter (the outer frames) and the rest from
    its end (the inner frames and the exception), cut at lines where there are lines, saying how much
    is left out."""
    if len(text) <= limit:
        return text
    head = text.rfind("\n", 0, limit // 4) + 1 or limit // 4
    tail = len(text) - (limit - head - 64)
    tail = text.find("\n", tail, tail + limit // 4) + 1 or tail
    return f"{text[:head]}[... {tail - head} characters left out ...]\n{text[tail:]}"


def bounded_trace(text: str, limit: int = STACKTRACE_LIMIT) -> str:
    """A stack trace redacted and cut to about `limit` characters (cut loosely first, so that redaction,
    which reads whole lines, has a bounded amount to read)."""
    return _cut(redact_text(_cut(text, 4 * limit)), limit)


def _bounded(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = redact_text(text[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _type_name(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    return exc_type.__qualname__ if module in ("builtins", "__main__") else f"{module}.{exc_type.__qualname__}"


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 -- a broken __str__ must not cost the report
        return f"<{type(exc).__name__}: str() failed>"


def capture(source: str, exc: BaseException, tb: TracebackType | None = None, **more: Any) -> Death:
    error = traceback.TracebackException(
        type(exc), exc, tb if tb is not None else exc.__traceback__, lookup_lines=False, compact=True
    )
    return Death(source, error, _type_name(type(exc)), _text(exc), time.time_ns(), os.getpid(), **more)


def _capture_exit(code: object, frame: FrameType | None) -> Death:
    """sys.exit(message): a SystemExit whose stack is where sys.exit was called."""
    error = traceback.TracebackException(SystemExit, SystemExit(code), None, lookup_lines=False)
    error.stack = traceback.StackSummary.extract(traceback.walk_stack(frame), lookup_lines=False)
    error.stack.reverse()
    return Death("sys.exit", error, "SystemExit", str(code), time.time_ns(), os.getpid())


class _State:
    """What the hooks share: the provider, and what is known of how this process is ending."""

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.logged: Death | None = None  # the last exception logged at ERROR or above
        self.exit_message: Death | None = None  # sys.exit(message)
        self.exit_status: int | None = None  # the last status given to sys.exit()
        self.reported_pid = -1  # the process whose death has been reported (a forked child is another)

    def ending(self, status: int | None) -> Death | None:
        """The death to report for a process ending with `status`, if there is one of this process."""
        pid = os.getpid()
        if self.reported_pid == pid or not status:
            return None
        for death in (self.exit_message, self.logged):
            if death is not None and death.pid == pid:
                return death
        return None


_state = _State()


def _attributes(death: Death) -> dict[str, AttributeValue]:
    key, _link = own_process()
    attributes: dict[str, AttributeValue] = {
        "otelproc.span": "exception",
        "otelproc.exception.source": death.source,
        "otelproc.process.key": key,
        "error.type": death.type_name,
    }
    where = death.location()
    if where is not None:
        attributes.update(
            {"code.file.path": where.filename, "code.line.number": where.lineno or 0, "code.function.name": where.name}
        )
    if death.thread is not None:
        attributes["thread.name"] = death.thread.name
        if death.thread.native_id is not None:
            attributes["thread.id"] = death.thread.native_id
    if death.logger is not None:
        attributes["otelproc.exception.logger"] = death.logger
    if death.log_message is not None:
        attributes["otelproc.exception.log_message"] = _bounded(death.log_message)
    return attributes


def report(death: Death, flush: bool = True) -> None:
    """Exports the death as a child of the process's process span (a root of its own for a process the
    sidecar does not track); flushes the provider unless the caller does it later."""
    provider = _state.provider
    if provider is None:
        return
    if death.thread is None:
        _state.reported_pid = death.pid
    _key, link = own_process()
    parent = trace.set_span_in_context(NonRecordingSpan(link.span_context()), Context()) if link else Context()
    name = death.summary()
    span = provider.get_tracer(TRACER_NAME).start_span(
        name, context=parent, kind=SpanKind.INTERNAL, attributes=_attributes(death), start_time=death.time_ns
    )
    span.add_event(
        "exception",
        {
            "exception.type": death.type_name,
            "exception.message": _bounded(death.message),
            "exception.stacktrace": death.stacktrace(),
        },
        timestamp=death.time_ns,
    )
    span.set_status(Status(StatusCode.ERROR, name))
    span.end()
    if flush:
        flush_within(provider)


def flush_within(provider: TracerProvider) -> None:
    """force_flush, waited for at most FLUSH_SECONDS (the SDK's batch processor ignores its own timeout)."""
    flusher = threading.Thread(target=provider.force_flush, name="otelproc-flush", daemon=True)
    try:
        flusher.start()
    except RuntimeError:  # the interpreter is ending and starts no thread (3.12+): flush here
        provider.force_flush(int(FLUSH_SECONDS * 1000))
        return
    flusher.join(FLUSH_SECONDS)


def _quietly(what: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """A report that fails must never change how the process dies."""
    try:
        what(*args, **kwargs)
    except Exception:  # noqa: BLE001 -- the docstring's rule
        pass


def _report_exception(
    source: str, exc: BaseException, tb: TracebackType | None = None, flush: bool = True, **more: Any
) -> None:
    report(capture(source, exc, tb, **more), flush)


# The hooks. Each one does its part and then hands on to what it replaced (what was there at install()).

_replaced: dict[str, Any] = {}
_HOOKS = (  # (where, its name, what install() puts there)
    (sys, "excepthook", "_excepthook"),
    (threading, "excepthook", "_threading_excepthook"),
    (sys, "exit", "_sys_exit"),
    (os, "_exit", "_os_exit"),
    (multiprocessing.process.BaseProcess, "_bootstrap", "_bootstrap"),
)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    reported = False
    if exc is not None and not issubclass(exc_type, KeyboardInterrupt) and _state.reported_pid != os.getpid():
        _quietly(_report_exception, "excepthook", exc, tb, flush=False)
        reported = True
    try:
        _replaced["sys.excepthook"](exc_type, exc, tb)  # the traceback is printed before the flush waits
    finally:
        if reported and _state.provider is not None:
            _quietly(flush_within, _state.provider)


def _threading_excepthook(args: threading.ExceptHookArgs) -> None:
    exc = args.exc_value
    if exc is not None and not issubclass(args.exc_type, (SystemExit, KeyboardInterrupt)):
        _quietly(_report_exception, "threading.excepthook", exc, args.exc_traceback, thread=args.thread)
    _replaced["threading.excepthook"](args)


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _replaced["record factory"](*args, **kwargs)
    if record.levelno >= logging.ERROR:
        _quietly(_remember, record)
    return record


def _remember(record: logging.LogRecord) -> None:
    exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    if exc is None or isinstance(exc, KeyboardInterrupt):
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 -- a format that does not fit its arguments: the message as given
        message = str(record.msg)
    death = capture("logging", exc, logger=record.name, log_message=message)
    _state.logged = dataclasses.replace(death, time_ns=int(record.created * 1e9))


def _note_exit(status: object, frame: FrameType | None) -> None:
    if status is None or status == 0:
        _state.exit_message, _state.exit_status = None, 0
    elif isinstance(status, int):
        _state.exit_status = status
    else:
        _state.exit_message, _state.exit_status = _capture_exit(status, frame), 1


def _note_raised_exit(exit: SystemExit) -> None:
    """`raise SystemExit(message)` (sys.exit(message) was noted where it was called)."""
    noted = _state.exit_message
    if noted is None or noted.pid != os.getpid():
        _state.exit_message, _state.exit_status = capture("sys.exit", exit), 1


def _sys_exit(status: object = None) -> NoReturn:
    if threading.current_thread() is threading.main_thread():  # elsewhere it only ends a thread
        _quietly(_note_exit, status, sys._getframe(1))  # noqa: SLF001 -- the caller's frame: where it exited
    _replaced["sys.exit"](status)
    raise AssertionError("sys.exit returned")  # for the type checker: it never does


def _os_exit(status: int) -> NoReturn:
    def last_words() -> None:
        death = _state.ending(status)
        if death is not None:
            report(death)

    _quietly(last_words)
    _replaced["os._exit"](status)
    raise AssertionError("os._exit returned")  # for the type checker: it never does


def _at_exit() -> None:
    """The interpreter is ending: a sys.exit(message), or a logged exception then sys.exit(non-zero)."""

    def last_words() -> None:
        death = _state.ending(_state.exit_status)
        if death is not None:
            report(death)

    _quietly(last_words)


def _bootstrap(self: multiprocessing.process.BaseProcess, *args: Any, **kwargs: Any) -> int:
    """A multiprocessing child: its run() wrapped, to see what the bootstrap will catch and print."""
    run = self.run

    def run_and_report() -> None:
        try:
            run()
        except SystemExit as exit:
            if exit.code is not None and not isinstance(exit.code, int):  # the bootstrap prints it, status 1
                _quietly(_note_raised_exit, exit)
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            here = exc.__traceback__
            _quietly(_report_exception, "multiprocessing", exc, here.tb_next if here else None)  # not this frame
            raise

    self.run = run_and_report  # type: ignore[method-assign]
    return _replaced["BaseProcess._bootstrap"](self, *args, **kwargs)


def _key(owner: object, name: str) -> str:
    return f"{getattr(owner, '__name__', owner)}.{name}"


def install(provider: TracerProvider) -> None:
    """Sets the hooks (once per interpreter); deaths are exported through `provider`."""
    first = _state.provider is None
    _state.provider = provider
    if not first:
        return
    for owner, name, ours in _HOOKS:
        _replaced[_key(owner, name)] = getattr(owner, name)
        setattr(owner, name, globals()[ours])
    _replaced["record factory"] = logging.getLogRecordFactory()
    logging.setLogRecordFactory(_record_factory)
    atexit.register(_at_exit)  # after the SDK's own (registered when its provider was made): runs before it


def uninstall() -> None:
    """Puts back every hook that is still ours."""
    if _state.provider is None:
        return
    _state.provider = None
    for owner, name, ours in _HOOKS:
        if getattr(owner, name) is globals()[ours]:
            setattr(owner, name, _replaced[_key(owner, name)])
    if logging.getLogRecordFactory() is _record_factory:
        logging.setLogRecordFactory(_replaced["record factory"])
    atexit.unregister(_at_exit)
