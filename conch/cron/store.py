"""Every etcd operation of cron (all through conch.client): job definitions (`cron add` / `rm`),
the listing snapshot, history pruning, and the daemon's claim, re-attach and result.

Keys (conch.keys, all under the user's prefix):

    cron/jobs/{enc(NAME)}            job definition JSON, no lease
    cron/runs/{enc(NAME)}/{tick}     run record JSON, one per claimed tick, no lease (permanent)
    cron/alive/{enc(NAME)}/{tick}    alive marker of a running run, on the winner daemon's lease
    cron/output/{enc(NAME)}/{tick}   the run's output tail, written with its result
    cron/marks/{enc(NAME)}           the job's low-water mark: the newest tick claimed
    cron/requests/{enc(NAME)}/{tick} a `cron run` request, on the requester's lease

A claim is one transaction: *if create_revision(run key) == 0 and mod_revision(job key) is
the definition the daemon scheduled from, then put the run record (status running) and the
alive marker*. Exactly one daemon can win a tick, and a run key is only deleted (history
pruning, `cron rm`) once no daemon can still claim its tick, so a tick never runs twice. The
winner rewrites the record with the result and deletes the marker in one transaction. The
status shown by `cron ls` is derived: a record still saying `running` whose marker is gone
(the winner's lease expired) is `lost` (docs/cron.md).

A manual run (`cron run`) is claimed the same way, but by deleting its request key instead of
moving the mark: its tick (the request's time) is never one of the schedule's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from conch import __version__, keys
from conch.client import Client, Compare, KeyValue, Op, SubTxn
from conch.cron.model import (
    HISTORY,
    Job,
    Labels,
    RunRecord,
    RunStatus,
    Tick,
    beat_labels,
    format_tick,
    prune_choice,
)

CLAIM_TIMEOUT = 5.0  # longest single claim transaction (and any other etcd call of conchd's)


class JobExists(Exception):
    """`cron add` of a name that already has a definition (without --replace)."""


def host_record(cmd: Sequence[str], name: str, schedule: str, tz: str, **kw: Any) -> Job:
    """A Job as `cron add` stores it (stamped with host, time and version)."""
    import socket
    import time

    from conch.holder import rfc3339

    return Job(
        name=name,
        schedule=schedule,
        tz=tz,
        cmd=tuple(cmd),
        created=rfc3339(time.time()),
        host=socket.gethostname(),
        version=__version__,
        **kw,
    )


# -- definitions (conch cron add / rm) ---------------------------------------------------------


def add_job(client: Client, prefix: str, job: Job, replace: bool, now_tick: Tick) -> int:
    """Store the definition. Without `replace`, only if NAME has none (else JobExists).
    The job's low-water mark becomes `now_tick` (the adder's clock) — or stays where it is if
    it is ahead of that (ticks a daemon with a fast clock already ran, or a removed job of the
    same name ran): no daemon, whatever its clock, claims a tick from before the job (or its
    new definition) existed or one that already ran. The definition's `since` is `now_tick`.
    Safe to retry: a retried add that finds exactly what it wrote succeeded. Returns the
    revision written."""
    key, mark = keys.cron_job_key(prefix, job.name), keys.cron_mark_key(prefix, job.name)
    value = dataclasses.replace(job, since=now_tick).to_json()
    now_token = keys.tick_token(now_tick).encode()
    while True:
        old_mark, _ = client.get(mark)
        mark_value = max(now_token, old_mark.value) if old_mark is not None else now_token
        guards = [Compare(mark, "mod", "==", old_mark.mod_revision if old_mark else 0)]
        if not replace:
            guards.insert(0, Compare(key, "create", "==", 0))
        res = client.txn(
            guards, [Op("put", key, value), Op("put", mark, mark_value)], [Op("get", key)]
        )
        if res.succeeded:
            return res.revision
        got = res.responses[0] or []
        if replace or not got:
            continue  # the mark moved meanwhile (a daemon claimed): read it again
        if got[0].value == value:  # our own write, whose answer was lost and retried
            return got[0].mod_revision
        raise JobExists(job.name)


def remove_job(client: Client, prefix: str, name: str, now_tick: Tick) -> bool:
    """Delete NAME's definition (False if it had none), then its history except the records
    of runs still alive: those finish, and their winner writes the result (docs/cron.md).
    The job's low-water mark goes too — unless it is ahead of `now_tick` (a daemon with a fast
    clock ran ticks early): then it stays, so a job added again under the same name does not
    run those ticks a second time. Safe to retry: the delete is guarded by the definition it
    read, and a definition gone when the guard fails was deleted (by this call's own retried
    request, or by another rm at the same moment): done either way."""
    key, mark = keys.cron_job_key(prefix, name), keys.cron_mark_key(prefix, name)
    now_token = keys.tick_token(now_tick).encode()
    existed = False
    while True:
        kv, _ = client.get(key)
        if kv is None:
            break
        res = client.txn(
            [Compare(key, "mod", "==", kv.mod_revision)],
            [Op("delete", key)],
            [Op("get", key)],
        )
        existed = True
        if res.succeeded or not (res.responses[0] or []):
            break
        # changed meanwhile (cron add --replace): delete what is there now
    # the mark, unless it is ahead of the clock (guarded: a re-add may have set it meanwhile)
    mark_kv, _ = client.get(mark)
    if mark_kv is not None and mark_kv.value <= now_token:
        client.txn(
            [Compare(key, "create", "==", 0), Compare(mark, "mod", "==", mark_kv.mod_revision)],
            [Op("delete", mark)],
        )
    prune_history(client, prefix, name, keep=0)
    return existed


class Suspension(enum.Enum):
    """What `cron suspend` / `cron resume` did."""

    CHANGED = "changed"
    ALREADY = "already"  # the job was in that state already (or a retried call's own write)
    NO_JOB = "no job"


def set_suspended(
    client: Client, prefix: str, name: str, suspended: bool, now_tick: Tick
) -> Suspension:
    """Suspend or resume NAME: its definition rewritten with `suspended`, guarded by the one
    read. Daemons drop a suspended job (a run in progress finishes) and schedule a resumed one
    from the next tick after they see it; a resume also moves the job's low-water mark up to
    `now_tick` (the caller's clock), so that no daemon — whatever its clock — claims a tick
    from before the resume. Safe to retry. Raises ValueError for a damaged definition."""
    key, mark = keys.cron_job_key(prefix, name), keys.cron_mark_key(prefix, name)
    now_token = keys.tick_token(now_tick).encode()
    while True:
        kv, _ = client.get(key)
        if kv is None:
            return Suspension.NO_JOB
        job = Job.from_json(name, kv.value)
        if job.suspended == suspended:
            return Suspension.ALREADY
        guards = [Compare(key, "mod", "==", kv.mod_revision)]
        changed = replace(job, suspended=suspended, since=job.since if suspended else now_tick)
        ops = [Op("put", key, changed.to_json())]
        if not suspended:
            old_mark, _ = client.get(mark)
            if old_mark is None or old_mark.value < now_token:
                guards.append(Compare(mark, "mod", "==", old_mark.mod_revision if old_mark else 0))
                ops.append(Op("put", mark, now_token))
        if client.txn(guards, ops).succeeded:
            return Suspension.CHANGED
        # the definition or the mark moved meanwhile: read again


# -- cron run: requests -------------------------------------------------------------------------


def request_run(
    client: Client, prefix: str, name: str, job_rev: int, tick: Tick, lease: int, value: bytes
) -> bool:
    """Ask for a manual run of NAME at `tick` (`cron run`): its request key, on `lease`, only
    if the definition is still the one read (mod revision `job_rev`). False: it changed or was
    removed meanwhile (nothing written)."""
    job_key = keys.cron_job_key(prefix, name)
    request_key = keys.cron_request_key(prefix, name, tick)
    res = client.txn(
        [Compare(job_key, "mod", "==", job_rev), Compare(request_key, "create", "==", 0)],
        [Op("put", request_key, value, lease=lease)],
    )
    return res.succeeded


def withdraw_request(client: Client, prefix: str, name: str, tick: Tick) -> bool:
    """Delete the request of a manual run if no daemon took it: True. False: a daemon claimed
    it (or it expired with its lease)."""
    key = keys.cron_request_key(prefix, name, tick)
    return client.txn([Compare(key, "create", ">", 0)], [Op("delete", key)]).succeeded


@dataclass(frozen=True)
class RunState:
    """A manual run as its requester sees it, read at one revision."""

    requested: bool  # the request is still there: not claimed yet
    record: RunRecord | None  # its run record, once claimed
    alive: bool  # its alive marker is there
    output: str  # its stored output (written with the result)


def run_state(client: Client, prefix: str, name: str, tick: Tick) -> RunState:
    gets = [
        Op("get", keys.cron_request_key(prefix, name, tick), keys_only=True),
        Op("get", keys.cron_run_key(prefix, name, tick)),
        Op("get", keys.cron_alive_key(prefix, name, tick), keys_only=True),
        Op("get", keys.cron_output_key(prefix, name, tick)),
    ]
    req, run, alive, out = (r or [] for r in client.txn([], gets).responses)
    return RunState(
        requested=bool(req),
        record=RunRecord.from_json(run[0].value) if run else None,
        alive=bool(alive),
        output=out[0].value.decode("utf-8", "replace") if out else "",
    )


def list_requests(client: Client, prefix: str) -> tuple[list[tuple[str, Tick]], int]:
    """Every pending `cron run` request (job name, tick), and the revision read at."""
    d = keys.cron_requests_dir(prefix)
    kvs, revision = client.get_range(d, keys.prefix_range_end(d))
    out = []
    for kv in kvs:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            out.append(keys.cron_split_tick_key(d, kv.key))
    return out, revision


# -- reading: the listing, history pruning -----------------------------------------------------


def live_daemons(client: Client, prefix: str) -> dict[str, Labels]:
    """The conchd daemons whose heartbeat key is there, with the labels their beat gives."""
    d = keys.cron_daemons_dir(prefix)
    out = {}
    for kv in client.get_range(d, keys.prefix_range_end(d))[0]:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            out[keys.decode_name(kv.key[len(d) :].decode("ascii"))] = beat_labels(kv.value)
    return out


LIST_PAGE = 200  # jobs per read when listing (their records: ~7 KB each with 20 runs)
SCAN_PAGE = 1000  # keys per read of a range


@dataclass
class JobView:
    """One job as `cron ls` shows it: its definition (None: damaged), its kept run records and
    the ticks of its alive runs."""

    name: str
    job: Job | None
    runs: dict[Tick, RunRecord] = field(default_factory=dict)
    alive: set[Tick] = field(default_factory=set)
    outputs: dict[Tick, str] = field(default_factory=dict)  # only when asked for (job_view)


def job_view(client: Client, prefix: str, name: str, outputs: bool = False) -> JobView | None:
    """One job — its definition, kept run records, alive markers and (`outputs`) the stored
    output of each run — read in one transaction (one revision). None: no definition and no
    record (a removed job's runs still alive keep their records until they finish)."""
    key = keys.cron_job_key(prefix, name)
    dirs = [keys.cron_runs_dir(prefix, name), keys.cron_alive_dir(prefix, name)]
    if outputs:
        dirs.append(keys.cron_output_dir(prefix, name))
    gets = [Op("get", key)] + [
        Op("get", d, range_end=keys.prefix_range_end(d), keys_only=d == dirs[1]) for d in dirs
    ]
    job_kvs, run_kvs, alive_kvs, *out_kvs = (r or [] for r in client.txn([], gets).responses)
    if not job_kvs and not run_kvs:
        return None
    try:
        job: Job | None = Job.from_json(name, job_kvs[0].value) if job_kvs else None
    except ValueError:
        job = None
    view = JobView(name, job)
    for kv in run_kvs:
        with contextlib.suppress(ValueError):
            view.runs[keys.cron_tick(kv.key, dirs[0])] = RunRecord.from_json(kv.value)
    for kv in alive_kvs:
        with contextlib.suppress(ValueError):
            view.alive.add(keys.cron_tick(kv.key, dirs[1]))
    if outputs:
        # a record written by an older conch may hold its output itself
        view.outputs = {tick: rec.output for tick, rec in view.runs.items() if rec.output}
        for kv in out_kvs[0]:
            with contextlib.suppress(ValueError):
                view.outputs[keys.cron_tick(kv.key, dirs[2])] = kv.value.decode("utf-8", "replace")
    return view


def scan_jobs(client: Client, prefix: str, page: int = LIST_PAGE) -> Iterator[JobView]:
    """Every job with its run records (never outputs) and alive markers, by name, read `page`
    jobs at a time — all at one revision (the first read's), so a run that finishes while we
    read is never seen as a `running` record without its marker (which would look `lost`),
    and memory is bounded by a page, whatever the number of jobs. Raises EtcdError (also when
    that revision is compacted before the last page is read)."""
    jobs_dir = keys.cron_jobs_dir(prefix)
    jobs_end = keys.prefix_range_end(jobs_dir)
    runs_root, alive_root = keys.cron_runs_root(prefix), keys.cron_alive_root(prefix)
    start, revision = jobs_dir, 0
    while True:
        kvs, header, more = client.get_page(start, jobs_end, page, revision)
        revision = revision or header
        views: dict[str, JobView] = {}
        for kv in kvs:
            try:
                name = keys.cron_job_name(prefix, kv.key)
            except ValueError:
                continue
            try:
                job: Job | None = Job.from_json(name, kv.value)
            except ValueError:
                job = None
            views[name] = JobView(name, job)
        if views:
            # the page's jobs' runs and markers: one range each, over the span of their
            # directories ('/' ends a name's directory, so the span may take in a neighbour's
            # keys: ignored here, read with its own page)
            for kv in _scan(client, *_span(keys.cron_runs_dir, prefix, views), revision):
                with contextlib.suppress(ValueError):
                    name, tick = keys.cron_split_tick_key(runs_root, kv.key)
                    if name in views:
                        views[name].runs[tick] = RunRecord.from_json(kv.value)
            for kv in _scan(client, *_span(keys.cron_alive_dir, prefix, views), revision, True):
                with contextlib.suppress(ValueError):
                    name, tick = keys.cron_split_tick_key(alive_root, kv.key)
                    if name in views:
                        views[name].alive.add(tick)
        yield from views.values()
        if not more or not kvs:
            return
        start = kvs[-1].key + b"\0"


def _span(directory: Any, prefix: str, names: Iterable[str]) -> tuple[bytes, bytes]:
    dirs = [directory(prefix, n) for n in names]
    return min(dirs), max(keys.prefix_range_end(d) for d in dirs)


def _scan(
    client: Client, key: bytes, end: bytes, revision: int, keys_only: bool = False
) -> Iterator[KeyValue]:
    """Every key in [key, end) as of `revision`, SCAN_PAGE at a time."""
    while True:
        kvs, _, more = client.get_page(key, end, SCAN_PAGE, revision, keys_only=keys_only)
        yield from kvs
        if not more or not kvs:
            return
        key = kvs[-1].key + b"\0"


PRUNES_PER_TXN = 125  # guarded deletes nested in one transaction: 125 + 3 ops <= 128
JOBS_PER_PRUNE_READ = 64  # jobs whose keys one read transaction lists: 2 gets each <= 128


def prune_history(client: Client, prefix: str, name: str, keep: int = HISTORY) -> int:
    """prune_histories of one job."""
    return prune_histories(client, prefix, [(name, keep)])


def prune_histories(client: Client, prefix: str, jobs: Sequence[tuple[str, int]]) -> int:
    """Delete each job's run records beyond its newest `keep` (never an alive run's): `jobs`
    are (name, keep). Reads keys only (never the records and their output),
    JOBS_PER_PRUNE_READ jobs to a transaction.
    Each delete is guarded by the record's mod revision, so a record rewritten meanwhile (a
    result) stays; the deletes go nested, PRUNES_PER_TXN to a transaction. Returns how many
    were deleted."""
    doomed: list[tuple[KeyValue, bytes, bytes]] = []  # (run record, its output and hook keys)
    for i in range(0, len(jobs), JOBS_PER_PRUNE_READ):
        chunk = jobs[i : i + JOBS_PER_PRUNE_READ]
        dirs = [(keys.cron_runs_dir(prefix, n), keys.cron_alive_dir(prefix, n)) for n, _ in chunk]
        reads = [
            Op("get", d, range_end=keys.prefix_range_end(d), keys_only=True)
            for pair in dirs
            for d in pair
        ]
        res = client.txn([], reads)
        for k, (runs_dir, alive_dir) in enumerate(dirs):
            run_kvs, alive_kvs = res.responses[2 * k] or [], res.responses[2 * k + 1] or []
            by_tick: dict[Tick, KeyValue] = {}
            for kv in run_kvs:
                try:
                    by_tick[keys.cron_tick(kv.key, runs_dir)] = kv
                except ValueError:
                    continue
            alive: set[Tick] = set()
            for kv in alive_kvs:
                try:
                    alive.add(keys.cron_tick(kv.key, alive_dir))
                except ValueError:
                    continue
            name, keep = chunk[k]
            out_key, hook_key = keys.cron_output_key, keys.cron_hook_key
            doomed += [
                (by_tick[t], out_key(prefix, name, t), hook_key(prefix, name, t))
                for t in prune_choice(list(by_tick), alive, keep)
            ]
    deleted = 0
    for i in range(0, len(doomed), PRUNES_PER_TXN):
        # one guarded delete per record: a record rewritten meanwhile (a result) stays
        deletes = [
            SubTxn(
                [Compare(kv.key, "mod", "==", kv.mod_revision)],
                [Op("delete", kv.key), Op("delete", output_key), Op("delete", hook_key)],
            )
            for kv, output_key, hook_key in doomed[i : i + PRUNES_PER_TXN]
        ]
        deleted += sum(r.succeeded for r in client.txn([], deletes).responses)
    return deleted


# -- the daemon's side: claim, re-attach, result -----------------------------------------------


class ClaimOutcome(enum.Enum):
    WON = "won"  # this daemon claimed the tick: run it
    SKIPPED = "skipped"  # claimed, recorded as skipped (--overlap forbid, previous run alive)
    TAKEN = "taken"  # another daemon claimed it
    BEHIND = "behind"  # a tick at or before the job's low-water mark: never run (it was, or
    #                    a newer tick was already claimed, or it predates the definition)
    CHANGED = "changed"  # the definition changed or was removed meanwhile
    GONE = "gone"  # a `cron run` request no longer there (expired or cancelled), unclaimed


@dataclass
class Claim:
    outcome: ClaimOutcome
    revision: int = 0  # the claim revision: CONCH_REV, and the running record's mod revision
    record: RunRecord | None = None
    mark: Tick | None = None  # BEHIND: the job's low-water mark
    # WON / SKIPPED (scheduled ticks): the mark this claim moved on from — the newest tick
    # claimed before it (or when the job was added or resumed); None: no mark (every tick
    # passed) or a manual run's claim. Ticks of the schedule between it and this one were
    # never claimed by anyone: `missed` (conch.cron.claimer)
    prior_mark: Tick | None = None


def _own(stored: RunRecord, revision: int) -> Claim:
    """Our own claim found committed: WON, or SKIPPED as recorded."""
    mine = ClaimOutcome.SKIPPED if stored.status == RunStatus.SKIPPED else ClaimOutcome.WON
    return Claim(mine, revision, stored)


CLAIMS_PER_TXN = 123  # nested claims per transaction: 123 + 3 + the forbid check's 2 <= 128


@dataclass(frozen=True)
class ClaimRequest:
    """A tick to claim: `tick` of `job`, as defined at mod revision `job_rev`."""

    job: Job
    job_rev: int
    tick: Tick
    manual: bool = False  # a `cron run` request's tick: claimed by deleting the request


def claim_many(
    client: Client,
    prefix: str,
    wants: Sequence[ClaimRequest],
    *,
    daemon: str,
    claim_id: str,
    host: str,
    lease: int,
    now: str,
    timeout: float | None = None,
) -> list[Claim]:
    """Try to claim each tick in `wants` (at most CLAIMS_PER_TXN): the Claim of each, in order.

    Each claim is one transaction, nested in one outer transaction with the others (one round
    trip; each is judged on its own): *if the run key is absent, the definition is the one
    scheduled from, and the tick is above the job's low-water mark, then put the run record,
    the alive marker and the new mark*. The mark makes "at most once per tick" independent of
    clocks and of history pruning: a daemon whose clock lags cannot claim a tick whose record
    was already pruned, nor one from before a `cron rm` + `cron add`.

    With overlap forbid, a tick whose previous run of the job is still alive is claimed as
    SKIPPED (the record says so; nothing runs, no marker). The check is part of the claim's
    transaction (its job's alive markers must be none), so it sees a run that another daemon
    claimed an instant before (cron invariant seed 919059: a check read before the claim did
    not, and two runs overlapped). `claim_id` identifies this daemon process: a claim
    whose answer was lost and that is retried — by the client or by the daemon, even much
    later — finds its own record and is WON (or SKIPPED, as recorded), never TAKEN.

    An EtcdError fails the whole call: any of the claims may have committed."""
    if len(wants) > CLAIMS_PER_TXN:
        raise ValueError(f"at most {CLAIMS_PER_TXN} claims in one transaction")
    records = [
        RunRecord(
            tick=format_tick(w.tick), status=RunStatus.RUNNING, daemon=daemon, host=host,
            claim=claim_id, claimed=now, started=now, manual=w.manual,
        )
        for w in wants
    ]  # fmt: skip
    out: list[Claim | None] = [None] * len(wants)
    todo = list(range(len(wants)))
    for _attempt in range(2):
        if not todo:
            break
        res = client.txn(
            [], [_claim_txn(prefix, wants[i], records[i], lease) for i in todo], timeout=timeout
        )
        unmarked = []
        for i, r in zip(todo, res.responses, strict=True):
            if r.succeeded:
                out[i] = _won_claim(prefix, wants[i], records[i], r.responses, res.revision)
            else:
                c = _failed_claim(wants[i], r.responses, claim_id)
                if c is None:
                    unmarked.append(i)
                else:
                    out[i] = c
        # definitions without a mark (written by hand or by an older conch): give each one
        # that lets every tick through, then claim those again
        for i in unmarked:
            w = wants[i]
            job_key = keys.cron_job_key(prefix, w.job.name)
            mark_key = keys.cron_mark_key(prefix, w.job.name)
            client.txn(
                [Compare(mark_key, "create", "==", 0), Compare(job_key, "mod", "==", w.job_rev)],
                [Op("put", mark_key, b"")],
                timeout=timeout,
            )
        todo = unmarked
    return [c if c is not None else Claim(ClaimOutcome.CHANGED) for c in out]


SKIPPED_REASON = "previous run still running"


def _skipped(rec: RunRecord) -> RunRecord:
    return replace(rec, status=RunStatus.SKIPPED, started=None, reason=SKIPPED_REASON)


def _claim_txn(prefix: str, w: ClaimRequest, rec: RunRecord, lease: int) -> SubTxn:
    """The claim of one tick. With --overlap forbid, whether a previous run is alive is judged
    inside it (a nested txn guarded on the job's alive markers being none), at the claim's own
    revision: a run claimed an instant before by another daemon is always seen."""
    name, tick = w.job.name, w.tick
    run_key = keys.cron_run_key(prefix, name, tick)
    job_key = keys.cron_job_key(prefix, name)
    mark_key = keys.cron_mark_key(prefix, name)
    token = keys.tick_token(tick).encode()
    run = [
        Op("put", run_key, rec.to_json()),
        Op("put", keys.cron_alive_key(prefix, name, tick), rec.daemon.encode(), lease=lease),
    ]
    if w.job.overlap == "forbid":
        alive_dir = keys.cron_alive_dir(prefix, name)
        alive_end = keys.prefix_range_end(alive_dir)
        unless_busy = SubTxn(
            [Compare(alive_dir, "create", "==", 0, range_end=alive_end)],  # none alive
            run,
            [
                Op("put", run_key, _skipped(rec).to_json()),
                Op("get", alive_dir, range_end=alive_end, keys_only=True),
            ],
        )
        ops: list[Op | SubTxn] = [unless_busy]
    else:
        ops = list(run)
    if w.manual:  # claimed by taking the request: no mark (a schedule's ticks are not touched)
        request_key = keys.cron_request_key(prefix, name, tick)
        return SubTxn(
            [
                Compare(run_key, "create", "==", 0),
                Compare(job_key, "mod", "==", w.job_rev),
                Compare(request_key, "create", ">", 0),
            ],
            [Op("delete", request_key), *ops],
            [Op("get", run_key), Op("get", job_key, keys_only=True)],
        )
    return SubTxn(
        [
            Compare(run_key, "create", "==", 0),
            Compare(job_key, "mod", "==", w.job_rev),
            Compare(mark_key, "value", "<", token),
        ],
        [Op("get", mark_key), Op("put", mark_key, token), *ops],  # the get: the prior mark
        [Op("get", run_key), Op("get", job_key, keys_only=True), Op("get", mark_key)],
    )


def _won_claim(
    prefix: str, w: ClaimRequest, rec: RunRecord, responses: list[Any], revision: int
) -> Claim:
    """A claim that committed: WON, or SKIPPED when its forbid check found a run alive (the
    record returned names that run's tick, for the log). (The forbid check follows the mark's
    get and put, or the request's delete.)"""
    prior = None
    if not w.manual:
        mark_kvs = responses[0] or []
        prior = _mark_tick(mark_kvs[0].value) if mark_kvs else None
    inner = responses[1 if w.manual else 2] if w.job.overlap == "forbid" else None
    if inner is None or inner.succeeded:
        return Claim(ClaimOutcome.WON, revision, rec, prior_mark=prior)
    busy = []
    alive_dir = keys.cron_alive_dir(prefix, w.job.name)
    for kv in inner.responses[1] or []:
        with contextlib.suppress(ValueError):
            busy.append(keys.cron_tick(kv.key, alive_dir))
    skipped = _skipped(rec)
    if busy:
        skipped = replace(skipped, reason=f"previous run (tick {format_tick(max(busy))}) "
                                          "still running")  # fmt: skip
    return Claim(ClaimOutcome.SKIPPED, revision, skipped, prior_mark=prior)


def _failed_claim(w: ClaimRequest, responses: list[Any], claim_id: str) -> Claim | None:
    """Why a claim's guards failed, from its failure branch's reads (run, job, and the mark
    unless `w` is a `cron run` request); None: the job has no mark yet."""
    run_kvs, job_kvs, *mark = (r or [] for r in responses)
    if run_kvs:
        kv = run_kvs[0]
        stored = RunRecord.from_json(kv.value)
        if _is_own_claim(stored, kv, claim_id):
            # ours, as claimed and never touched since: the answer was lost and the claim
            # retried. A record rewritten since (a result) is a tick this daemon already ran —
            # its schedule came back to it (the definition was replaced, its clock stepped
            # back): never again.
            return _own(stored, kv.create_revision)
        return Claim(ClaimOutcome.TAKEN, kv.create_revision)
    if not job_kvs or job_kvs[0].mod_revision != w.job_rev:
        return Claim(ClaimOutcome.CHANGED)
    if w.manual:
        return Claim(ClaimOutcome.GONE)
    if mark[0]:
        return Claim(ClaimOutcome.BEHIND, mark=_mark_tick(mark[0][0].value))
    return None


def _is_own_claim(stored: RunRecord, kv: KeyValue, claim_id: str) -> bool:
    """Whether a run record is the claim of daemon process `claim_id`, as claimed and never
    rewritten since — never a `missed` record (conch.cron.claimer writes those, claim id empty,
    for ticks nobody claimed)."""
    return stored.claim == claim_id and kv.version == 1 and stored.status != RunStatus.MISSED


def _mark_tick(value: bytes) -> Tick | None:
    """The tick of a mark's value; None for the empty mark (every tick passes) or a damaged
    one."""
    try:
        return keys.cron_tick(value)
    except ValueError:
        return None


def record_missed(
    client: Client,
    prefix: str,
    missed: Sequence[tuple[str, Sequence[tuple[Tick, RunRecord]]]],
    timeout: float | None = None,
) -> None:
    """Write `missed` records — (job name, its (tick, record) pairs: ticks nobody claimed) —
    each job's in a nested transaction guarded on its first record's key being absent (so
    written once). At most CLAIMS_PER_TXN jobs, and MISSED_RECORDS records a job."""
    subs = []
    for name, recs in missed:
        run_keys = [keys.cron_run_key(prefix, name, tick) for tick, _ in recs]
        subs.append(
            SubTxn(
                [Compare(run_keys[0], "create", "==", 0)],
                [Op("put", k, r.to_json()) for k, (_, r) in zip(run_keys, recs, strict=True)],
            )
        )
    client.txn([], subs, timeout=timeout)


def claimed_ticks(
    client: Client, prefix: str, ticks: Sequence[tuple[str, Tick]], timeout: float | None = None
) -> list[int]:
    """For each (job name, tick), at most CLAIMS_PER_TXN: the create revision of its run record
    if the tick is claimed already, else 0 — one read of keys only. The daemon's peek before it
    claims other daemons' shares (conch.cron.claimer): most are claimed by their owners, and
    a claim that fails costs far more than a key read. Only a hint: the claim decides."""
    if len(ticks) > CLAIMS_PER_TXN:
        raise ValueError(f"at most {CLAIMS_PER_TXN} ticks in one read")
    gets = [Op("get", keys.cron_run_key(prefix, n, t), keys_only=True) for n, t in ticks]
    res = client.txn([], gets, timeout=timeout)
    return [kvs[0].create_revision if kvs else 0 for kvs in res.responses]


def own_claim(
    client: Client, prefix: str, name: str, tick: Tick, claim_id: str, timeout: float | None = None
) -> Claim | None:
    """The claim of `tick` made by the daemon process `claim_id`, if one committed (its
    answer was lost and the daemon moved on): WON or SKIPPED as recorded, or None."""
    kv, _ = client.get(keys.cron_run_key(prefix, name, tick), timeout=timeout)
    if kv is None:
        return None
    stored = RunRecord.from_json(kv.value)
    if not _is_own_claim(stored, kv, claim_id):  # not ours, or already run
        return None
    return _own(stored, kv.create_revision)


def reattach(
    client: Client,
    prefix: str,
    name: str,
    tick: Tick,
    record_rev: int,
    daemon: str,
    lease: int,
    timeout: float | None = None,
) -> bool:
    """After the daemon got a new lease: put the alive marker of a run that is still running
    back, on the new lease — only if its record is still the running record we wrote."""
    run_key = keys.cron_run_key(prefix, name, tick)
    alive_key = keys.cron_alive_key(prefix, name, tick)
    res = client.txn(
        [Compare(run_key, "mod", "==", record_rev)],
        [Op("put", alive_key, daemon.encode(), lease=lease)],
        timeout=timeout,
    )
    return res.succeeded


# results written in one transaction: 3 ops each, and a hook claim (a nested txn of 1 guard,
# 1 put) for a failed run of an --on-failure job: 31 * 4 + 1 <= --max-txn-ops 128 (SubTxn)
RESULTS_PER_TXN = 31


def finish_many(
    client: Client,
    prefix: str,
    results: Sequence[tuple[Job, Tick, RunRecord]],
    hook_value: bytes = b"",
    timeout: float | None = None,
) -> list[bool]:
    """Write each result (job, tick, record): the record, its output under its own key, the
    delete of its run's alive marker, and — for a failed run of a job with --on-failure — the
    claim of its hook (created unless there: a hook runs once a run; none without
    `hook_value`); all in one transaction (at most RESULTS_PER_TXN results). Returns, for
    each result, whether this call claimed its hook (the caller runs it)."""
    if len(results) > RESULTS_PER_TXN:
        raise ValueError(f"at most {RESULTS_PER_TXN} results in one transaction")
    ops: list[Op | SubTxn] = []
    hooked: list[int] = []  # the index in ops of each hook claim, -1: none
    for job, tick, rec in results:
        name = job.name
        ops.append(Op("put", keys.cron_run_key(prefix, name, tick), rec.to_json()))
        ops.append(Op("put", keys.cron_output_key(prefix, name, tick), rec.output.encode()))
        ops.append(Op("delete", keys.cron_alive_key(prefix, name, tick)))
        if hook_value and job.on_failure and rec.status == RunStatus.FAILED:
            hooked.append(len(ops))
            ops.append(_hook_claim([], prefix, name, tick, hook_value))
        else:
            hooked.append(-1)
    res = client.txn([], ops, timeout=timeout)
    return [i >= 0 and res.responses[i].succeeded for i in hooked]


def _hook_claim(guards: list[Compare], prefix: str, name: str, tick: Tick, value: bytes) -> SubTxn:
    key = keys.cron_hook_key(prefix, name, tick)
    return SubTxn([*guards, Compare(key, "create", "==", 0)], [Op("put", key, value)])


@dataclass(frozen=True)
class LostRun:
    """A run whose record still says running but whose alive marker is gone (its winner's
    lease expired) and whose --on-failure hook nobody claimed yet."""

    name: str
    tick: Tick
    record: RunRecord
    record_rev: int  # the record's mod revision


LOST_JOBS_PER_READ = 42  # jobs whose runs one read transaction lists: 3 gets each <= 128


def lost_runs(client: Client, prefix: str, names: Sequence[str]) -> list[LostRun]:
    """The lost runs of the jobs `names` whose hooks nobody claimed (at most
    LOST_JOBS_PER_READ jobs: one read)."""
    gets = []
    for n in names:
        for d, only_keys in ((keys.cron_runs_dir(prefix, n), False),
                             (keys.cron_alive_dir(prefix, n), True),
                             (keys.cron_hooks_dir(prefix, n), True)):  # fmt: skip
            gets.append(Op("get", d, range_end=keys.prefix_range_end(d), keys_only=only_keys))
    res = client.txn([], gets)
    out = []
    for k, n in enumerate(names):
        run_kvs, alive_kvs, hook_kvs = (res.responses[3 * k + j] or [] for j in range(3))
        settled: set[Tick] = set()
        for kvs, d in ((alive_kvs, keys.cron_alive_dir(prefix, n)),
                       (hook_kvs, keys.cron_hooks_dir(prefix, n))):  # fmt: skip
            for kv in kvs:
                with contextlib.suppress(ValueError):
                    settled.add(keys.cron_tick(kv.key, d))
        runs_dir = keys.cron_runs_dir(prefix, n)
        for kv in run_kvs:
            try:
                tick = keys.cron_tick(kv.key, runs_dir)
            except ValueError:
                continue
            if tick in settled:
                continue
            rec = RunRecord.from_json(kv.value)
            if rec.status == RunStatus.RUNNING:
                out.append(LostRun(n, tick, rec, kv.mod_revision))
    return out


def claim_lost_hook(client: Client, prefix: str, lost: LostRun, value: bytes) -> bool:
    """Claim the --on-failure hook of a lost run: only while its record is unchanged and its
    alive marker absent (the run is still lost), and only if nobody claimed it. True: won."""
    run_key = keys.cron_run_key(prefix, lost.name, lost.tick)
    alive_key = keys.cron_alive_key(prefix, lost.name, lost.tick)
    sub = _hook_claim(
        [Compare(run_key, "mod", "==", lost.record_rev), Compare(alive_key, "create", "==", 0)],
        prefix, lost.name, lost.tick, value,
    )  # fmt: skip
    return client.txn(list(sub.compare), list(sub.success)).succeeded
