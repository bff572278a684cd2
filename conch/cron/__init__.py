"""conch cron: jobs run once per tick on one of any number of conchd daemons (docs/cron.md).

One concept per module (nothing is imported here: `conch` commands other than cron must not
pay for this package):

    model.py      pure: Job, RunRecord, RunStatus, ticks, status derivation, limits
    listing.py    pure: what `conch cron ls` prints (JSON document, table)
    store.py      every etcd operation: definitions, snapshot, pruning, claim, result
"""
