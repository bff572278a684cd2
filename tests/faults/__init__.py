"""Test-only fault tools: faults that etcd and signals alone cannot produce.

* `faults.proxy.Proxy`: a loopback TCP proxy in front of one etcd member's client port that
  can delay answers, lose them (while requests still commit), freeze both directions, or
  reset every connection.
* `faults.shim`: an LD_PRELOAD shim (`faultshim.c`, compiled at run time) that skews the wall
  clock, advances CLOCK_BOOTTIME (a simulated host suspend) and makes chosen execs fail.
* `faults.fixtures`: pytest fixtures over both, for a conftest to re-export.

Never imported by the `conch` package.
"""
