"""Heartbeats: each conchd publishes its wall-clock time and compares it with its peers'
(conch.clockskew turns the offsets into the correction of this host's clock; docs/cron.md,
"Decisions", Clocks)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from conch import __version__, keys
from conch.client import Client, EtcdClusterChanged, EtcdError, EventType, Watch
from conch.cron.metrics import NoMetrics
from conch.cron.model import Labels, beat_labels
from conch.cron.store import CLAIM_TIMEOUT

log = logging.getLogger(__name__)

HEARTBEAT = 2.0  # seconds between two heartbeats of a daemon
SETTLE = 1.5 * HEARTBEAT  # wait at start for peers' heartbeats when none is listed
SETTLE_LISTED = 3 * HEARTBEAT  # longest wait at start for the heartbeats of listed peers
CLOCK_STEP = 0.5  # a jump of this host's wall clock against its steady clock: a step


class Heartbeat(threading.Thread):
    """Publishes this daemon's wall-clock time every HEARTBEAT seconds under
    `cron/daemons/{enc(id)}` (on its lease, so it vanishes with the daemon) and watches the
    other daemons' heartbeats; conch.clockskew turns them into the correction of this host's
    clock. A disagreement beyond clockskew.THRESHOLD is logged and exported as
    `conchd_clock_offset_seconds`. On any trouble the correction stays as last known and the
    thread goes on: it never dies silently."""

    def __init__(
        self,
        client: Client,
        prefix: str,
        daemon_id: str,
        host: str,
        lease_of: Callable[[], int | None],
        metrics: NoMetrics,
        labels: Labels = (),
    ) -> None:
        from conch.clockskew import PeerClocks

        super().__init__(name="heartbeat", daemon=True)
        self.client, self.prefix, self.id, self.host = client, prefix, daemon_id, host
        self._lease_of = lease_of
        self._metrics = metrics
        self._labels = labels  # published with each beat (jobs added --on need them)
        self._labels_of: dict[str, Labels] = {}  # each present daemon's, from its beats
        self._dir = keys.cron_daemons_dir(prefix)
        self._key = keys.cron_daemon_key(prefix, daemon_id)
        self._clocks = PeerClocks()
        self._correction = 0.0
        self._skewed = False
        self._halt = threading.Event()
        self._watch: Watch | None = None
        # Until it has heard the peers listed at its start (or, with none listed — they may
        # be starting too — for SETTLE), a daemon does not know whether its clock agrees
        # with theirs: it claims nothing yet.
        self._settle_at = math.inf
        self._waiting_for: set[str] = set()
        self._heard = False
        self._heard_any = False
        # my own heartbeats coming back through my watch: since when without a gap, and the
        # last one (a watch that delivers my beats would have delivered a live peer's too)
        self._echo_since: float | None = None
        self._last_echo = -math.inf
        self._settled = False
        self._present: frozenset[str] = frozenset()  # ids whose heartbeat key is there
        self._lock = threading.Lock()
        self._base = time.time() - time.monotonic()  # this host's wall clock - steady clock

    def settled(self) -> bool:
        """True once this daemon knows how its clock compares with its peers': it has heard
        every peer listed at its start, or its settle time has passed while its watch was
        working (its own beats came back through it for SETTLE: a live peer's would have
        too) — not while it heard nothing because etcd did not answer. Once true, stays."""
        now = time.monotonic()
        with self._lock:
            if self._settled:
                return True
            if now < self._settle_at:
                return False
            heard_all = self._heard and not self._waiting_for
            watched = (
                self._echo_since is not None
                and now - self._echo_since >= SETTLE
                and now - self._last_echo <= SETTLE
            )
            self._settled = heard_all or watched
            if self._settled:
                peers = len(self._clocks.offsets(now))
                log.info(
                    "clock checked against %d peer(s)%s: claiming ticks",
                    peers, "" if peers else " (none heard; the watch works)",
                )  # fmt: skip
            return self._settled

    def correction(self) -> float:
        """Seconds to add to this host's wall clock to get the group's (0 within THRESHOLD).
        Notices at once a step of this host's own clock (its distance from the steady clock
        jumps) and carries the correction along with it."""
        with self._lock:
            base = time.time() - time.monotonic()
            step = base - self._base
            self._base = base
            if abs(step) > CLOCK_STEP and self._heard_any:
                log.warning("this host's clock stepped by %+.1fs", step)
                self._clocks.shift(step)
                self._update(time.monotonic())
            return self._correction

    def peers(self) -> frozenset[str]:
        """The ids of the daemons whose heartbeat key is there (this one's included once it
        beats): the live daemons, as of the last listing and the events since. A dead daemon's
        key stays until its lease expires."""
        with self._lock:
            return self._present

    def peer_labels(self) -> dict[str, Labels]:
        """The labels of the daemons in peers(), as their last beats gave them."""
        with self._lock:
            return dict(self._labels_of)

    def halt(self) -> None:
        """Stop beating and watching (join() to wait for it)."""
        self._halt.set()
        w = self._watch
        if w is not None:
            w.cancel(wait=False)

    def run(self) -> None:
        next_beat = 0.0
        while not self._halt.is_set():
            try:
                if self._watch is None:
                    self._watch = self._start_watch()
                if time.monotonic() >= next_beat:
                    # the first beat as soon as the daemon has a lease: peers starting now
                    # must hear it within their settle time
                    beat = self._beat()
                    next_beat = time.monotonic() + (HEARTBEAT if beat else 0.2)
                events = self._watch.get(max(0.0, next_beat - time.monotonic()))
                self._observe(events)
            except EtcdClusterChanged:
                return  # the daemon stops (it sees the client's identity problem)
            except EtcdError as e:
                log.debug("heartbeat: %s; again in a moment", e)
                self._drop_watch()
                self._halt.wait(1.0)
            except Exception:
                log.exception("heartbeat: internal error; going on")
                self._drop_watch()
                self._halt.wait(1.0)
        self._drop_watch()

    def _drop_watch(self) -> None:
        w, self._watch = self._watch, None
        if w is not None:
            w.cancel()

    def _start_watch(self) -> Watch:
        end = keys.prefix_range_end(self._dir)
        kvs, rev = self.client.get_range(self._dir, end)
        present = set()
        labels_of = {}
        for kv in kvs:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                peer = keys.decode_name(kv.key[len(self._dir) :].decode("ascii"))
                present.add(peer)
                labels_of[peer] = beat_labels(kv.value)
        w = self.client.watch(self._dir, end, start_revision=rev + 1)
        with self._lock:
            self._present = frozenset(present)
            self._labels_of = labels_of
        if self._settle_at == math.inf:  # the first listing
            self._waiting_for = present - {self.id}
            # with peers listed, wait for each of them (a dead one's key lingers until its
            # lease expires: bounded by SETTLE_LISTED); with none, for SETTLE: they may be
            # starting too, and beat as soon as they have a lease
            wait = SETTLE_LISTED if self._waiting_for else SETTLE
            self._settle_at = time.monotonic() + wait
        return w

    def _beat(self) -> bool:
        lease = self._lease_of()
        if lease is None:
            return False
        value = json.dumps(
            {"id": self.id, "host": self.host, "pid": os.getpid(), "time": time.time(),
             "version": __version__, "labels": dict(self._labels)},
            separators=(",", ":"),
        )  # fmt: skip
        self.client.put(self._key, value.encode(), lease=lease, timeout=CLAIM_TIMEOUT)
        return True

    def _observe(self, events: list[Any]) -> None:
        now_m = time.monotonic()
        heard: set[str] = set()
        for ev in events:
            if ev.kv.key == self._key:
                if ev.type is EventType.PUT:
                    with self._lock:
                        if self._echo_since is None or now_m - self._last_echo > SETTLE:
                            self._echo_since = now_m  # a gap: the watch was not working
                        self._last_echo = now_m
                continue
            try:
                peer = keys.decode_name(ev.kv.key[len(self._dir) :].decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                continue
            with self._lock:
                if ev.type is EventType.DELETE:
                    self._present -= {peer}
                    self._labels_of.pop(peer, None)
                else:
                    self._present |= {peer}
                    self._labels_of[peer] = beat_labels(ev.kv.value)
            if ev.type is EventType.DELETE:
                continue  # a peer gone quiet: its last offsets age out (clockskew.SAMPLE_AGE)
            try:
                peer_time = json.loads(ev.kv.value)["time"]
            except (ValueError, UnicodeDecodeError, KeyError, TypeError):
                continue
            if isinstance(peer_time, int | float) and math.isfinite(peer_time):
                self.correction()  # first: a step of my own clock shifts what is stored
                with self._lock:
                    self._clocks.observe(peer, float(peer_time), time.time(), now_m)
                    self._heard_any = True
                heard.add(peer)
        with self._lock:
            self._update(now_m)
            # a peer counts as heard only with the correction its beat gives set: settled()
            # (another thread) must never see it heard and the clock not yet corrected
            if heard & self._waiting_for:
                self._waiting_for -= heard
                self._heard = True
            if self._heard and not self._waiting_for:
                # every peer listed at start has been heard (after the correction is set)
                self._settle_at = min(self._settle_at, now_m)

    def _update(self, now_m: float) -> None:
        """Recompute the correction from the peers' offsets (the caller holds the lock)."""
        from conch.clockskew import THRESHOLD

        c = self._clocks.correction(now_m)
        skewed = abs(c) > THRESHOLD
        self._metrics.clock_offset(-c)
        if skewed and (not self._skewed or abs(c - self._correction) > THRESHOLD):
            log.warning(
                "this host's clock is %.1fs %s the other conchd daemons' (%d peer(s)): "
                "scheduling by their time; fix the clock (NTP)",
                abs(c), "ahead of" if c < 0 else "behind", len(self._clocks.offsets(now_m)),
            )  # fmt: skip
        elif self._skewed and not skewed:
            log.info("this host's clock agrees with the other daemons' again")
        self._skewed = skewed
        self._correction = c if skewed else 0.0
