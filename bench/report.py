"""The benchmark report: bench/results/README.md, results.json and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def targets(r: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for every target issue 8 states that this run measured."""
    out: list[tuple[str, bool, str]] = []
    if "handover" in r:
        c, e = r["handover"]["conch"]["p50"], r["handover"]["etcdctl"]["p50"]
        out.append(("hand-over p50 <= etcdctl lock's", c <= e, f"{c:.1f} vs {e:.1f} ms"))
    if "queue" in r:
        q = r["queue"]["conch"]
        lo, hi = min(q, key=int), max(q, key=int)
        a, b = q[lo]["p50"], q[hi]["p50"]
        out.append(
            (
                f"flat queue: p50 at {hi} waiters <= 1.2x p50 at {lo}",
                b <= 1.2 * a,
                f"{b:.1f} vs {a:.1f} ms ({_ratio(b, a)})",
            )
        )
    if "oneshot" in r:
        c = r["oneshot"]["tools"]["conch"]["p50"]
        e = r["oneshot"]["tools"]["etcdctl"]["p50"]
        out.append(
            (
                "one-shot <= 2.5x etcdctl lock",
                c <= 2.5 * e,
                f"{c:.0f} vs {e:.0f} ms ({_ratio(c, e)})",
            )
        )
    if "memory" in r:
        w = r["memory"]["conch"]["waiter"]
        floor = r["memory"]["floor"]["python + grpc + stubs"]
        out.append(
            (
                "waiter RSS within 5 MB of python + grpc + stubs",
                w <= floor + 5,
                f"{w:.1f} vs {floor:.1f} MB",
            )
        )
    if "crash" in r:
        c = r["crash"]["conch"]["p50"]
        out.append(
            (f"crash failover p50 < 1 s (--ttl {r['crash']['ttl_s']}s)", c < 1000, f"{c:.0f} ms")
        )
    if "load" in r:
        out += load_checks(r["load"])
    for c in r.get("cron", []):
        if c["jobs"] < 1000:
            continue
        lag, fl = c["lag_s"]["p99"], c["floor_s"]["p99"]
        out.append((f"cron, {c['jobs']} jobs on one tick: start p99 <= 1.5x the floor's",
                    lag <= 1.5 * fl, f"{lag * 1000:.0f} vs {fl * 1000:.0f} ms "
                    f"({_ratio(lag, fl)})"))  # fmt: skip
        out.append((f"cron, {c['jobs']} jobs on one tick: 0 duplicates, 0 misses",
                    c["duplicates"] == 0 and c["misses"] == 0,
                    f"{c['duplicates']} duplicates, {c['misses']} misses"))  # fmt: skip
    st = r.get("steady")
    if st:
        out.append((f"cron, {st['jobs']} jobs spread over {st['spread_s']:g} s: 0 duplicates, "
                    "0 misses, none early", st["duplicates"] == st["misses"] == st["early"] == 0,
                    f"{st['duplicates']} duplicates, {st['misses']} misses, {st['early']} early "
                    f"of {st['due']} due"))  # fmt: skip
    return out


def _why_missed(r: dict[str, Any]) -> list[str]:
    """For each target missed: by how much, why, and what would close it (from this run)."""
    out: list[str] = []
    if "oneshot" in r:
        o = r["oneshot"]
        e = o["tools"]["etcdctl"]["p50"]
        c = o["tools"]["conch"]["p50"]
        floor = o["floors"]["python + grpc + stubs"]["p50"]
        if c > 2.5 * e:
            out.append(
                f"- **one-shot**: conch {c:.0f} ms is {c / e:.1f}x `etcdctl lock` ({e:.0f} ms); "
                f"the target is 2.5x ({2.5 * e:.0f} ms). Starting Python and importing grpc "
                f"and the generated stubs alone takes {floor:.0f} ms ({floor / e:.1f}x), before "
                "conch does anything: grpc imports asyncio and its Cython core, protobuf builds "
                "the descriptors of the stubs. What would close it: a transport that imports "
                "in a few ms (a small HTTP/2 client of conch's own), or a long-lived local "
                "helper the one-shot hands its work to; neither is worth its risk yet."
            )
    if "memory" in r:
        w = r["memory"]["conch"]["waiter"]
        floor = r["memory"]["floor"]["python + grpc + stubs"]
        if w > floor + 5:
            out.append(
                f"- **waiter memory**: {w:.1f} MB, {w - floor:.1f} MB over the floor of Python "
                f"+ grpc + stubs ({floor:.1f} MB); the target is 5 MB. The rest is click "
                "(~4 MB with its imports) and the live channel and threads (~3 MB). What would "
                "close it: argument parsing without click for the elect/sema hot path."
            )
    if "handover" in r:
        c, e = r["handover"]["conch"]["p50"], r["handover"]["etcdctl"]["p50"]
        if c > e:
            out.append(
                f"- **hand-over**: conch {c:.1f} ms vs {e:.1f} ms. Both pay one etcd round trip "
                "(the release) and the child's exec. What is left is Python on both "
                "sides, on 2 cores: the holder's (SIGCHLD, reaping the group, the LeaseRevoke "
                "call through grpc) and the successor's (the watch event through grpc's stream "
                "reader, the decision, arming the watchdog, opening the child's gate: the "
                "child's process too was started while next in line, and only execs the "
                "command now). What would close it: a profile of those two paths first."
            )
    if "queue" in r:
        q = r["queue"]["conch"]
        lo, hi = min(q, key=int), max(q, key=int)
        if q[hi]["p50"] > 1.2 * q[lo]["p50"]:
            idle = r.get("memory", {}).get("conch", {}).get("waiter CPU %")
            cpu = "" if idle is None else f" (an idle waiting conch uses {idle:.2f} % of a core)"
            out.append(
                f"- **flat queue**: p50 {q[hi]['p50']:.1f} ms with {hi} waiters vs "
                f"{q[lo]['p50']:.1f} ms with {lo}. The recipe itself is flat (a release wakes "
                f"2 waiters, see the sema section); the machine is not{cpu}: {hi} Python "
                "processes on 2 cores, each with its threads and its memory, slow the one "
                "that must wake. What would close it: fewer processes per host (one conch per "
                "job step is the model), or more cores."
            )
    for c in r.get("cron", []):
        lag, fl = c["lag_s"]["p99"], c["floor_s"]["p99"]
        if c["jobs"] < 1000 or lag <= 1.5 * fl:
            continue
        out.append(_why_cron_missed(c))
    return (
        ["", "### Targets missed: by how much, why, what would close it", "", *out] if out else []
    )


def _table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def markdown(r: dict[str, Any], plots: list[str]) -> str:
    m = r["meta"]
    md = [
        "# conch benchmarks",
        "",
        f"- command: `{m['command']}` ({m['elapsed_s']} s)",
        f"- date: {m['date']}",
        f"- machine: {m['machine']}; Python {m['python']}; conch {m['conch']}; "
        f"etcd {m['etcd']} (local, 1 member)",
        "- every figure is measured side by side with `etcdctl lock` (same etcd, same child, "
        "interleaved); ratio = conch / etcdctl lock",
        "",
        "## Targets",
        "",
        _table(
            [["target", "result", "measured"]] + [[t, _verdict(ok), v] for t, ok, v in targets(r)]
        ),
    ]
    md += _why_missed(r)
    if "handover" in r:
        h = r["handover"]
        md += [
            "",
            "## Hand-over: holder's child exits -> waiter's child starts (ms)",
            "",
            _table(
                [["tool", "n", "p50", "p95", "p99", "max"]]
                + [
                    [k, str(h[k]["n"]), *(f"{h[k][p]:.1f}" for p in ("p50", "p95", "p99", "max"))]
                    for k in ("conch", "etcdctl")
                ]
                + [
                    [
                        "ratio",
                        "",
                        *(
                            _ratio(h["conch"][p], h["etcdctl"][p])
                            for p in ("p50", "p95", "p99", "max")
                        ),
                    ]
                ]
            ),
        ]
    if "queue" in r:
        q = r["queue"]
        md += [
            "",
            "## Hand-over while a queue drains (ms, p50 / p95)",
            "",
            _table(
                [["waiters", "conch", "etcdctl lock", "ratio (p50)"]]
                + [
                    [
                        str(n),
                        f"{q['conch'][n]['p50']:.1f} / {q['conch'][n]['p95']:.1f}",
                        f"{q['etcdctl'][n]['p50']:.1f} / {q['etcdctl'][n]['p95']:.1f}",
                        _ratio(q["conch"][n]["p50"], q["etcdctl"][n]["p50"]),
                    ]
                    for n in q["conch"]
                ]
            ),
        ]
    if "oneshot" in r:
        o = r["oneshot"]
        rows = [["what", "p50 ms", "p95 ms"]]
        rows += [
            [f"`{k} NAME -- true`", f"{v['p50']:.0f}", f"{v['p95']:.0f}"]
            for k, v in o["tools"].items()
        ]
        rows += [[k, f"{v['p50']:.0f}", f"{v['p95']:.0f}"] for k, v in o["floors"].items()]
        md += ["", "## One-shot: the whole process, uncontended", "", _table(rows)]
    if "memory" in r:
        mem = r["memory"]
        rows = [["tool", "waiter MB", "waiter + spares MB", "holder MB",
                 "holder + watchdog MB", "idle waiter CPU (% of a core)"]]  # fmt: skip
        rows += [
            [k, f"{v['waiter']:.1f}", f"{v.get('waiter+spares', v['waiter']):.1f}",
             f"{v['holder']:.1f}", f"{v['holder+watchdog']:.1f}",
             f"{v['waiter CPU %']:.2f}" if "waiter CPU %" in v else "-"]
            for k, v in mem.items()
            if k != "floor"
        ]  # fmt: skip
        md += [
            "",
            "## Memory (RSS, median)",
            "",
            _table(rows),
            "",
            f"Floor: python importing grpc and conch's stubs: "
            f"{mem['floor']['python + grpc + stubs']:.1f} MB.",
        ]
    if "crash" in r:
        c = r["crash"]
        md += [
            "",
            f"## Crash failover: SIGKILL of the holder -> successor's child starts "
            f"(--ttl {c['ttl_s']}s, ms)",
            "",
            _table(
                [["tool", "n", "p50", "max"]]
                + [
                    [k, str(c[k]["n"]), f"{c[k]['p50']:.0f}", f"{c[k]['max']:.0f}"]
                    for k in ("conch", "etcdctl")
                ]
            ),
        ]
    if "ghost" in r:
        g = r["ghost"]
        md += ["", f"## A waiter SIGKILLed while queued (--ttl {g['ttl_s']}s): holder's child "
               "ends -> the next live waiter's child starts (ms)", "",
               "The dead waiter's key keeps its place until its lease expires; nothing on its "
               "host is left to revoke it (a waiter's watchdog is not armed). Documented in "
               "docs/guarantees.md.", "",
               _table([["tool", "n", "p50", "max"]]
                      + [[k, str(g[k]["n"]), f"{g[k]['p50']:.0f}", f"{g[k]['max']:.0f}"]
                         for k in ("conch", "etcdctl")])]  # fmt: skip
    if "sema" in r:
        s = r["sema"]
        md += [
            "",
            f"## sema --max {s['slots']}, {s['waiters']} contenders (in-process, "
            "conch's own recipe)",
            "",
            f"- release -> next holder: p50 {s['latency_ms']['p50']:.1f} ms, "
            f"p95 {s['latency_ms']['p95']:.1f} ms",
            f"- watch wake-ups per release: mean {s['wakes_mean']:.2f}, max {s['wakes_max']}",
            f"- etcd requests per release (gRPC messages, keepalives excluded): "
            f"{s['requests_per_release']:.1f}",
        ]
    if "load" in r:
        md += _load_md(r["load"])
    if r.get("cron"):
        md += _cron_md(r["cron"])
    if r.get("steady"):
        md += _steady_md(r["steady"])
    if plots:
        md += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(md) + "\n"


def _why_cron_missed(c: dict[str, Any]) -> str:
    n, lag, fl = c["jobs"], c["lag_s"]["p99"], c["floor_s"]["p99"]
    head = (f"- **cron, {n} jobs on one tick**: start p99 {lag:.2f} s vs the floor's {fl:.2f} s "
            f"({lag / fl:.1f}x; the target is 1.5x).")  # fmt: skip
    if "host_cpu_s" not in c or "gate_cpu_ms" not in c:  # results from before these columns
        return head
    host, floor_host, etcd = c["host_cpu_s"], c["floor_host_cpu_s"], c.get("etcd_cpu_s", 0.0)
    gate = c["gate_cpu_ms"] * n / 1000
    rest = (floor_host + gate + etcd) / floor_host if floor_host else 0.0
    return (
        f"{head} On 2 cores the tick is CPU-bound: the machine spent {host:.1f} s of CPU on it "
        f"(children, watchdogs, everything) where the floor's loop and its children spent "
        f"{floor_host:.1f} s. The difference is conchd ({c['conchd_cpu_s']:.1f} s: "
        f"{c['conchd_cpu_s'] / n * 1000:.2f} ms a run — its claim, 123 to a transaction; its "
        "spawn; the follower; its share of a result transaction, 42 to one, and of pruning), "
        f"etcd ({etcd:.1f} s) and the gate shell ({c['gate_cpu_ms']:.2f} ms a run, measured "
        f"beside: {gate:.1f} s) — the exec of /bin/sh that holds each command until the "
        "watchdog guards its group, the price of 'no command ever runs unguarded'. Even a "
        f"conchd that cost nothing would leave the gate and etcd: {rest:.1f}x the floor's CPU. "
        "What would close it: a gate that costs no exec (a spawner process — the watchdog — "
        "that starts the children itself and so guards their groups from birth, reporting "
        "their ends back), a cheaper conchd per run, more cores."
    )


def load_checks(load: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(threshold, met, measured) for every load run."""
    th = load["thresholds"]
    out = []
    for key in ("processes", "in-process", "member-kill"):
        if key not in load:
            continue
        run = load[key]
        bound = th["p95_ms"][run["view"]]
        rate, p95 = run["success_rate"], run["latency_ms"]["p95"]
        out.append((f"{key}: success rate >= {th['success_rate'] * 100:.1f} %",
                    rate >= th["success_rate"], f"{rate * 100:.2f} %"))  # fmt: skip
        out.append((f"{key}: acquire p95 < {bound:.0f} ms", p95 < bound, f"{p95:.0f} ms"))
    return out


def _load_md(load: dict[str, Any]) -> list[str]:
    rows = [["run", "clients", "acquisitions", "per s", "success", "p50 ms", "p95 ms",
             "p99 ms", "etcd requests / acq.", "errors"]]  # fmt: skip
    for key in ("processes", "in-process", "member-kill"):
        if key not in load:
            continue
        run = load[key]
        lat = run["latency_ms"]
        rpa = run["requests_per_acquisition"]
        errors = ", ".join(f"{k}: {v}" for k, v in run["errors"].items()) or "none"
        rows.append([key, str(run["clients"]), str(run["acquisitions"]),
                     f"{run['throughput_per_s']:.1f}", f"{run['success_rate'] * 100:.2f} %",
                     f"{lat['p50']:.0f}", f"{lat['p95']:.0f}", f"{lat['p99']:.0f}",
                     "-" if rpa is None else f"{rpa:.1f}", errors])  # fmt: skip
    first = next(iter(v for k, v in load.items() if k != "thresholds"))
    md = ["", f"## Load test: sema --max {first['slots']}, {first['duration_s']:.0f} s per run, "
          "3-member cluster", "",
          "processes = `conch sema` processes in a loop (the user's view: latency = process "
          "start -> child start; fewer clients, as each process costs ~0.25 s of CPU and 50 "
          "at once on 2 cores measure the CPU starvation, past conch's dial timeout); "
          "in-process = threads using conch's own modules, a new lease per acquisition "
          "(the recipe's and etcd's view: latency = enqueue -> holder).", "",
          _table(rows), "", _table([["threshold", "result", "measured"]]
                                   + [[t, "PASS" if ok else "FAIL", v]
                                      for t, ok, v in load_checks(load)])]  # fmt: skip
    mk = load.get("member-kill")
    if mk and mk.get("fault"):
        rec = mk.get("recovery_s")
        md += ["", f"Member kill: killed at {mk['fault']['killed_at_s']:.1f} s, restarted at "
               f"{mk['fault']['restarted_at_s']:.1f} s; throughput back to 80 % of its level "
               f"{'-' if rec is None else f'{rec:.1f} s'} after the kill."]  # fmt: skip
    return md


def _host_cpu(c: dict[str, Any]) -> str:
    if "host_cpu_s" not in c:  # results from before the column
        return "-"
    return f"{c['host_cpu_s']:.1f} ({c['floor_host_cpu_s']:.1f})"


def _cron_md(runs: list[dict[str, Any]]) -> list[str]:
    rows = [["jobs", "start p50 ms", "p99 ms", "max ms", "floor p50 / p99 / max ms",
             "p99 / floor", "duplicates", "misses", "claims / s", "etcd Txn / Range",
             "conchd CPU s", "etcd CPU s", "machine CPU s (floor's)",
             "conchd peak RSS MB"]]  # fmt: skip
    for c in runs:
        lag, fl, req = c["lag_s"], c["floor_s"], c["etcd_requests"]
        rows.append([str(c["jobs"]), f"{lag['p50'] * 1000:.0f}", f"{lag['p99'] * 1000:.0f}",
                     f"{lag['max'] * 1000:.0f}",
                     f"{fl['p50'] * 1000:.0f} / {fl['p99'] * 1000:.0f} / {fl['max'] * 1000:.0f}",
                     _ratio(lag["p99"], fl["p99"]), str(c["duplicates"]), str(c["misses"]),
                     f"{c['claims_per_s']:.0f}", f"{req.get('Txn', 0)} / {req.get('Range', 0)}",
                     f"{c['conchd_cpu_s']:.1f}", f"{c.get('etcd_cpu_s', 0.0):.1f}",
                     _host_cpu(c),
                     " / ".join(f"{x:.0f}" for x in c["conchd_peak_rss_mb"])])  # fmt: skip
    return ["", f"## cron: N jobs due on one tick, {runs[0]['daemons']} conchd, 1 etcd member",
            "", "Start = the child's first line (bash's `$EPOCHREALTIME`) - the tick. The floor: "
            "one bare Python loop starting the same N children, in the same run (start - the "
            "loop's start). etcd requests and CPU, conchd CPU, the machine's CPU (all its cores, "
            "everything: children and watchdogs too): from the tick until 1 s after the last "
            "start; the floor's machine CPU: from the loop's start until its children ended.",
            "", _table(rows)]  # fmt: skip


def _steady_md(st: dict[str, Any]) -> list[str]:
    lag, req = st["lag_s"], st["etcd_requests_per_s"]
    rows = [["jobs", "due in the window", "start lag p50 / p99 / max ms", "duplicates",
             "misses", "early", "etcd Txn / Range per s", "etcd CPU %",
             "conchd CPU % (3 together)", "conchd peak RSS MB"],
            [str(st["jobs"]), str(st["due"]),
             f"{lag['p50'] * 1000:.0f} / {lag['p99'] * 1000:.0f} / {lag['max'] * 1000:.0f}",
             str(st["duplicates"]), str(st["misses"]), str(st["early"]),
             f"{req.get('Txn', 0):g} / {req.get('Range', 0):g}",
             f"{st['etcd_cpu_pct']:.1f}", f"{st['conchd_cpu_pct']:.1f}",
             " / ".join(f"{x:.0f}" for x in st["conchd_peak_rss_mb"])]]  # fmt: skip
    return ["", f"## cron steady state: {st['jobs']} jobs spread over {st['spread_s']:g} s, "
            f"{st['daemons']} conchd", "",
            f"Job i ticks at T0 + i x {st['spread_s']:g} s / {st['jobs']} (as H-style minutes "
            "spread an hour's jobs; each an `@every` schedule of about a day that falls there); "
            f"every job is defined and watched by every daemon, and the first {st['window_s']:g} "
            "s of the spread are measured: lag = the child's first line - its job's tick; "
            "early = started before it; etcd requests and CPU, conchd CPU: over the window "
            "(% of one core).", "", _table(rows)]  # fmt: skip


def write(r: dict[str, Any], out: Path, plots: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    names = _plots(r, out) if plots else []
    path = out / "README.md"
    path.write_text(markdown(r, names))
    return path


def _plots(r: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        names.append(name)

    if "handover" in r:
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in ("conch", "etcdctl"):
            xs = sorted(r["handover"][k]["raw_ms"])
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=k)
        ax.set(xlabel="hand-over (ms)", ylabel="fraction", title="Hand-over, one waiter (CDF)")
        ax.legend()
        save(fig, "handover.png")
    if "queue" in r:
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in ("conch", "etcdctl"):
            ns = sorted(r["queue"][k], key=int)
            ax.plot(ns, [r["queue"][k][n]["p50"] for n in ns], marker="o", label=f"{k} p50")
            ax.plot(ns, [r["queue"][k][n]["p95"] for n in ns], ls="--", label=f"{k} p95")
        ax.set(
            xscale="log",
            xlabel="waiters queued",
            ylabel="hand-over (ms)",
            title="Hand-over while a queue drains",
        )
        ax.legend()
        save(fig, "queue.png")
    if "oneshot" in r:
        o = r["oneshot"]
        labels = list(o["tools"]) + list(o["floors"])
        vals = [v["p50"] for v in o["tools"].values()] + [v["p50"] for v in o["floors"].values()]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.barh(labels, vals, color=["C0", "C1"] + ["C7"] * len(o["floors"]))
        ax.set(xlabel="wall time p50 (ms)", title="One-shot `X NAME -- true` and floors")
        save(fig, "oneshot.png")
    if "memory" in r:
        mem = r["memory"]
        fig, ax = plt.subplots(figsize=(7, 4))
        rows = [
            (f"{k} {f}", v[f]) for k, v in mem.items() if k != "floor" for f in v if "CPU" not in f
        ]
        rows += [(k, v) for k, v in mem["floor"].items()]
        ax.barh([a for a, _ in rows], [b for _, b in rows])
        ax.set(xlabel="RSS (MB)", title="Memory")
        save(fig, "memory.png")
    if "crash" in r:
        c = r["crash"]
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.barh(["conch", "etcdctl"], [c["conch"]["p50"], c["etcdctl"]["p50"]])
        ax.set(
            xlabel="SIGKILL -> successor starts, p50 (ms)",
            title=f"Crash failover (--ttl {c['ttl_s']}s)",
        )
        save(fig, "crash.png")
    if "load" in r:
        fig, ax = plt.subplots(figsize=(8, 4))
        for key in ("processes", "in-process", "member-kill"):
            if key in r["load"]:
                ps = r["load"][key]["per_second"]
                ax.plot(range(len(ps)), ps, label=key)
        mk = r["load"].get("member-kill", {}).get("fault")
        if mk:
            ax.axvspan(mk["killed_at_s"], mk["restarted_at_s"], color="red", alpha=0.15,
                       label="member down")  # fmt: skip
        ax.set(xlabel="second", ylabel="acquisitions / s", title="Load test throughput")
        ax.legend()
        save(fig, "load.png")
    if r.get("cron"):
        runs = r["cron"]
        ns = [c["jobs"] for c in runs]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(ns, [c["lag_s"]["p99"] * 1000 for c in runs], marker="o", label="conchd p99")
        ax.plot(ns, [c["lag_s"]["p50"] * 1000 for c in runs], marker="o", ls="--",
                label="conchd p50")  # fmt: skip
        ax.plot(ns, [c["floor_s"]["p99"] * 1000 for c in runs], marker="s", color="C7",
                label="floor p99 (bare spawn loop)")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="jobs due on one tick",
               ylabel="tick -> child start (ms)", title="cron at scale: lag vs floor")  # fmt: skip
        ax.legend()
        save(fig, "cron.png")
    return names
