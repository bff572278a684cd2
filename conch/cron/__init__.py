"""conch cron: jobs run once per tick on one of any number of conchd daemons (docs/cron.md).

One concept per module. Nothing is imported here: `conch elect`, `conch --help` and conchd's
start must not pay for the modules they do not use.

The recipe (used by `conch cron` and by conchd):

    model.py        pure: Job, RunRecord, RunStatus, ticks (Tick: int µs), status, limits
    listing.py      pure: what `conch cron ls` prints (the JSON document, the table)
    store.py        every etcd operation: definitions, snapshot, pruning, claim, result
    commands.py     `conch cron add | ls | run | show | logs | rm | suspend | resume` (added to
                    conch when asked for)
    manual.py       `conch cron run`: a manual run's request, and waiting for its result

The daemon, conchd:

    command.py      the `conchd` command line (`python -m conch.cron.command`)
    daemon.py       Daemon: lease, job watch, the scheduler loop, shutdown
    scheduler.py    pure: a job's schedule state and which tick is due when (fell behind)
    share.py        pure: which daemon claims a job first (rendezvous hash), the others when
    claimer.py      claiming the due ticks, many to a transaction, and acting on each outcome
    launcher.py     starts won ticks in claim order, from one thread
    runner.py       one run: its gated child started, its record
    follower.py     one thread following every child: output, end, timeout, stop
    guard.py        the daemon's one watchdog, guarding every run's process group
    results.py      writes finished runs' records, many to a transaction
    hooks.py        --on-failure hooks: claimed once per failed or lost run, and run
    output.py       a run's output: logged by line, its tail kept
    housekeeper.py  history pruning, off the scheduler thread
    heartbeat.py    heartbeats: this host's clock against the other daemons'
    metrics.py      Prometheus metrics (--metrics-addr)
"""
