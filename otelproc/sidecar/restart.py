"""Carrying on where the previous otelproc stopped, and leaving the same for the next one.

At start: the processes the state file holds go back into the table; a probe
of another version pinned by the previous otelproc is drained in its own layout
and removed (both ran for a moment: what the new one also recorded then is read
once); what the pinned probe dropped, or left unrecorded past the unattended
limit, while nobody read it is counted and said; the saved processes gone with
no exit record are ended. While running: the state file is kept at most a
second behind the table (state.Writer). At a clean stop: one last write and the
probe left pinned; or, on Ctrl-C or when the probe was detached meanwhile, the
probe gone for good and no state file at all.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from otelproc.clock import BootClock
from otelproc.kernel import pins
from otelproc.kernel.probe import Probe
from otelproc.kernel.record import EventLayout
from otelproc.model import EventKind, ProcessEvent
from otelproc.stats import Stats
from otelproc.plural import count
from otelproc.sidecar import state, unattended
from otelproc.sidecar.adoption import alive
from otelproc.sidecar.tracker import Ended, TrackedProcess, Tracker

log = logging.getLogger("otelproc")


def event_key(event: ProcessEvent) -> tuple:
    """Names one kernel event, so that the same event seen by two probes counts once."""
    if event.kind is EventKind.EXEC:
        return (event.kind, event.pid, event.start_ticks, event.exe, event.argv)
    return (event.kind, event.pid, event.start_ticks)


@dataclass
class Resumed:
    """What begin() hands the sidecar: the kernel side's loss counters as read then, and the lifetimes
    of the saved processes that ended while nobody read the probe, for it to export."""

    lost: dict[str, int]
    ended: list[Ended] = field(default_factory=list)


class Carryover:
    """What one otelproc hands to the next: the state file and the pinned probe's records."""

    def __init__(
        self,
        state_file: Path | None,
        config: str,
        redact: bool,
        adopt: bool,
        tracker: Tracker,
        stats: Stats,
        clock: BootClock,
        failed: Callable[[str, BaseException], None],
    ) -> None:
        self.state_file = state_file
        self.config = config  # the tracking configuration a state file must have been written with
        self.redact = redact
        self.adopt = adopt  # whether /proc is read at start besides, for the words of a warning
        self.tracker = tracker
        self.stats = stats
        self.clock = clock
        self.failed = failed
        self.writer: state.Writer | None = None
        self._overlap: set[tuple] = set()  # events the old probe of a takeover recorded while both ran
        self._overlap_from = 0  # Unix ns: when both began to run

    # at start

    def begin(self, probe: Probe, read_record: Callable[[bytes, EventLayout], None]) -> Resumed:
        """Resumes the state file's processes, reads what the pinned probe recorded meanwhile and
        ends those that are gone."""
        if probe.resumed:
            log.info(
                "resumed the probe pinned in %s; reading what it recorded while otelproc was down", probe.pinned_at
            )
        saved = self.resume()
        lost_then = probe.previous.lost() if probe.previous else probe.lost() if probe.resumed else None
        begun = self.tracker.begun
        self.take_over(probe, read_record)
        probe.poll(0)  # what the resumed probe recorded while nobody read it
        lost_now = probe.lost()
        gap = unattended.figures(probe.last_read, self.tracker.begun - begun, lost_then or {}, saved.lost)
        if gap is not None:
            (log.warning if gap.missed else log.info)("%s", gap)
        lost_while_down = lost_then is not None and self.count_downtime_losses(lost_then, saved)
        ended = self.settle(probe, saved, exits_read=lost_then is not None and not lost_while_down)
        return Resumed(lost_now, ended)

    def resume(self) -> state.Saved:
        """Takes the processes a previous otelproc recorded into the table, alive or not (see settle)."""
        if self.state_file is None:
            return state.Saved()
        try:
            saved = state.load(self.state_file, self.config)
        except state.StateFileError as exc:
            log.warning("%s; %s", exc, "starting from /proc alone" if self.adopt else "starting afresh")
            return state.Saved()
        # otelproc itself is left out, as from adoption: its own exit could never be reported.
        saved.processes = [p for p in saved.processes if p.pid != os.getpid()]
        for process in saved.processes:
            self.tracker.add(process)
        return saved

    def take_over(self, probe: Probe, read_record: Callable[[bytes, EventLayout], None]) -> None:
        """Reads what the old probe recorded up to now, in its own layout, then removes it.

        Both probes ran for a moment: what the old one recorded from then on is
        remembered, and the new probe's copy of it is skipped (seen_before).
        """
        previous = probe.previous
        if previous is None:
            return
        self._overlap_from = self.clock.to_wall(probe.attached_at)
        where, layout = previous.dir, previous.layout
        drained = probe.retire_previous(lambda raw: read_record(raw, layout))
        log.info(
            "took over the probe pinned in %s: %s read in its own layout, then removed", where, count(drained, "record")
        )

    def count_downtime_losses(self, lost: dict[str, int], saved: state.Saved) -> bool:
        """What the pinned probe dropped while nobody read it (its ring was full): counted, logged."""
        grown = {k: v - saved.lost.get(k, 0) for k, v in lost.items() if v > saved.lost.get(k, 0)}
        self.stats.drops.update(grown)
        grown.pop(unattended.MISSED, None)  # no record was lost there: begin() says it in a line of its own
        if grown:
            log.warning(
                "while otelproc was down the kernel side dropped %s; the sweep will reconcile",
                ", ".join(f"{v} ({k})" for k, v in grown.items()),
            )
        return bool(grown)

    def settle(self, probe: Probe, saved: state.Saved, exits_read: bool) -> list[Ended]:
        """After the downtime's records: the recorded processes that are gone with no exit record,
        forgotten; returns the lifetimes to export.

        exits_read: a pinned probe recorded the downtime and lost nothing, so
        their exits were read, by the previous otelproc in its last second.
        Otherwise each ends when it was last known alive, flagged approximate,
        with the window it ended in.
        """
        now = time.time_ns()
        gone = 0
        ended: list[Ended] = []
        for process in saved.processes:
            if process.key not in self.tracker.processes:
                continue  # its exit came through the ring buffer
            if alive(process.pid, process.identity.start_ticks):
                probe.track(process.pid, process.identity.start_ticks)
                continue
            self.tracker.forget(process.key)
            gone += 1
            if exits_read:
                self.stats.reconciled["exit_read_before_restart"] += 1
            else:
                self.stats.reconciled["exited_while_down"] += 1
                ended.append(Ended.between(process, saved.last_alive, now))
        if saved.processes:
            log.info(
                "resumed %s from the state file (%d gone with no exit record)",
                count(len(saved.processes), "process"),
                gone,
            )
        return ended

    def start_writing(self, table: Callable[[], list[TrackedProcess]], lost: Callable[[], dict[str, int]]) -> None:
        """Writes the state file now, and from now on at most a second after the table changes."""
        if self.state_file is None:
            return
        self.writer = state.Writer(self.state_file, table, self.redact, self.config, lost, self.failed)
        try:
            self.writer.write(force=True)
        except Exception as exc:  # noqa: BLE001 -- its thread tries again each second
            self.failed("state_file", exc)
        self.writer.start()

    # while running

    def seen_before(self, event: ProcessEvent, from_old_probe: bool) -> bool:
        """Whether a record of this probe is the copy of one the taken-over probe's ring gave already.

        The old probe's records of the time both ran are remembered for that."""
        if from_old_probe:
            if event.time >= self._overlap_from:  # both probes were attached: the new one has it too
                self._overlap.add(event_key(event))
            return False
        if not self._overlap:
            return False
        key = event_key(event)
        if key in self._overlap:
            self._overlap.discard(key)
            return True
        return False

    def end_overlap(self) -> None:
        """A takeover's overlap was read long ago: its copies in the new ring are all past."""
        self._overlap.clear()

    def mark_dirty(self) -> None:
        """The table changed: the state file is rewritten within a second."""
        if self.writer is not None:
            self.writer.dirty = True

    # at stop

    def finish(self, probe: Probe, detach: bool) -> str:
        """A clean stop leaves the probe pinned and recording, and the state file written for the next
        otelproc, unless detach (Ctrl-C) or a detach meanwhile: then the probe goes for good, and the
        state file with it. Returns what became of the probe, for the stop line."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop()
        if probe.pinned_at is not None and not probe.pinned_at.exists():
            if writer is not None:
                state.remove(writer.path)
            return "the probe was detached (`otelproc detach`) and goes with this process, with the state file"
        if detach:
            if writer is not None:
                state.remove(writer.path)
            if probe.pinned_at is not None:
                try:
                    pins.remove_all(probe.pinned_at.parent)
                except OSError as exc:
                    return (
                        f"could not detach the probe pinned in {probe.pinned_at} ({exc.strerror}); "
                        "`otelproc detach` removes it"
                    )
            return "detached the probe (Ctrl-C; --keep-probe keeps it pinned)"
        if writer is not None:
            try:
                writer.write(force=True)
            except Exception as exc:  # noqa: BLE001
                self.failed("state_file", exc)
        if probe.pinned_at is None:
            return ""
        return (
            f"the probe stays pinned in {probe.pinned_at} and keeps recording for the next otelproc; "
            "`otelproc detach` removes it"
        )

    def close(self) -> None:
        """Stops the state file's thread, where the loop ended before finish (an error)."""
        if self.writer is not None:
            self.writer.stop()
