"""conch: bounded-concurrency coordination primitives over etcd.

Keep this module import-free: every `conch` invocation (and the watchdog) imports it.
"""

__version__ = "0.1.0"
