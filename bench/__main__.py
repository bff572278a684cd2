"""Run every benchmark against local etcd clusters this command starts; write a report.

    python -m bench                 # full run (about 14 minutes): bench/results/
    python -m bench --tiny          # seconds: every benchmark once, tiny sizes (the test suite)
    python -m bench --only handover,crash --out /tmp/b
    python -m bench --only cron --cron-jobs 100,1000   # the cron section at chosen sizes
    python -m bench --only steady   # 10,000 cron jobs spread over an hour (~4 minutes)

conch and `etcdctl lock` (the binary that ships with the etcd extra) are measured in the same
run, interleaved, and reported as ratios. The report is bench/results/README.md with PNG plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from bench import report
from bench.suite import SECTIONS, Sizes, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run in seconds")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--cron-jobs", default="", help="comma-separated job counts for cron")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    sizes = Sizes.tiny() if args.tiny else Sizes.full()
    if args.cron_jobs:
        try:
            counts = tuple(int(x) for x in args.cron_jobs.split(","))
        except ValueError:
            ap.error("--cron-jobs: comma-separated positive integers")
        if min(counts) < 1:
            ap.error("--cron-jobs: comma-separated positive integers")
        sizes = dataclasses.replace(sizes, cron_jobs=counts)
    t0 = time.monotonic()
    results = run(only, sizes, log=lambda m: print(m, flush=True))
    results["meta"]["elapsed_s"] = round(time.monotonic() - t0, 1)
    results["meta"]["command"] = " ".join(["python -m bench", *(argv or sys.argv[1:])])
    path = report.write(results, Path(args.out), plots=not args.tiny)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
