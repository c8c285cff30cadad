#!/usr/bin/env python3
"""Summary of a tests/bench/run.sh run: `python3 tests/bench/report.py RESULTS_DIR`.

Reads seq.tsv (runtime, i, start_ns, end_ns, rc), conc.tsv (runtime, n, wall_ns, failures),
shims.tsv (pid, role shim|init, VmRSS kB, RssAnon kB, Pss kB), meta.env, and agent-seq.log (the agent's JSON log lines
written during the sequential phase) for the per-phase breakdown of berth's launch latency.
"""

import json
import os
import sys
from datetime import datetime, timezone

OUT = sys.argv[1]


def path(name):
    return os.path.join(OUT, name)


def pct(values, p):
    """Percentile with linear interpolation (numpy's default)."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def mean(values):
    return sum(values) / len(values) if values else float("nan")


meta = {}
with open(path("meta.env")) as f:
    for line in f:
        k, _, v = line.strip().partition("=")
        meta[k] = v.strip('"')

# ------------------------------------------------------------------ latency
seq = {}
seq_rows = []
with open(path("seq.tsv")) as f:
    for line in f:
        name, i, t0, t1, rc = line.split("\t")
        seq.setdefault(name, {"ms": [], "fail": 0})
        seq[name]["ms"].append((int(t1) - int(t0)) / 1e6)
        if int(rc) != 0:
            seq[name]["fail"] += 1
        seq_rows.append((name, int(i), int(t0), int(t1), int(rc)))

conc = {}
with open(path("conc.tsv")) as f:
    for line in f:
        name, n, wall, fails = line.split("\t")
        conc[name] = (int(n), int(wall) / 1e9, int(fails))

runtimes = [r for r in ("berth", "crun", "runc") if r in seq]
stats = {
    name: {
        "p50": pct(d["ms"], 50),
        "p99": pct(d["ms"], 99),
        "min": min(d["ms"]),
        "max": max(d["ms"]),
        "mean": mean(d["ms"]),
        "n": len(d["ms"]),
        "fail": d["fail"],
    }
    for name, d in seq.items()
}


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "-"


lines = []
w = lines.append
w("")
w("=" * 92)
w(f"berth benchmark summary ({OUT})")
w(
    f"load average at start {meta.get('LOAD_START', '?')}, at end {meta.get('LOAD_END', '?')} "
    f"on {meta.get('NPROC', '?')} CPUs"
)
try:
    if float(meta.get("LOAD_START", "0").split()[0]) > float(meta.get("NPROC", "1")):
        w("WARNING: the machine was busy when the run started: numbers are noisy; rerun on a quiet machine")
except ValueError:
    pass
w("=" * 92)
head = f"{'metric':<30}" + "".join(f"{r:>11}" for r in runtimes)
head += f"{'berth/crun':>12}" + (f"{'berth/runc':>12}" if "runc" in runtimes else "")
w(head)
w("-" * len(head))
for key in ("p50", "p99", "min", "max", "mean"):
    row = f"{'launch-to-exit ' + key + ' (ms)':<30}"
    row += "".join(f"{stats[r][key]:>11.1f}" for r in runtimes)
    row += f"{ratio(stats['berth'][key], stats['crun'][key]):>12}"
    if "runc" in runtimes:
        row += f"{ratio(stats['berth'][key], stats['runc'][key]):>12}"
    w(row)
row = f"{'launch failures':<30}" + "".join(
    f"{str(stats[r]['fail']) + '/' + str(stats[r]['n']):>11}" for r in runtimes
)
w(row)
tput = {r: conc[r][0] / conc[r][1] for r in runtimes if r in conc}
row = f"{'throughput (launches/s)':<30}" + "".join(f"{tput.get(r, float('nan')):>11.1f}" for r in runtimes)
row += f"{ratio(tput['berth'], tput['crun']):>12}"
if "runc" in runtimes:
    row += f"{ratio(tput['berth'], tput['runc']):>12}"
w(row)
row = f"{'  wall for N concurrent (s)':<30}" + "".join(f"{conc[r][1]:>11.2f}" for r in runtimes if r in conc)
w(row)
row = f"{'  concurrent failures':<30}" + "".join(
    f"{str(conc[r][2]) + '/' + str(conc[r][0]):>11}" for r in runtimes if r in conc
)
w(row)
w("")
for extra in ("unshare+umount", "unshare"):
    if extra in stats:
        s = stats[extra]
        w(
            f"{extra:<16} overhead: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, "
            f"min {s['min']:.2f} ms, max {s['max']:.2f} ms"
        )
if "unshare+umount" in stats:
    wrap = stats["unshare+umount"]["p50"]
    bare = stats["crun"]["p50"] - wrap
    w(
        f"crun's numbers include its per-run wrapper (unshare -m sh -c 'umount ...; crun ...'); "
        f"crun p50 minus the wrapper's p50 = {bare:.1f} ms -> berth/crun(bare) = "
        f"{ratio(stats['berth']['p50'], bare)}"
    )

# ------------------------------------------------------------------ berth breakdown
MARKS = [
    ("subscribed", lambda m, s: m == "framework subscribed"),
    ("starting", lambda m, s: m == "status update" and s == "TASK_STARTING"),
    ("cg_prepared", lambda m, s: m.startswith("cgroup") and "prepared" in m),
    ("cg_moved", lambda m, s: m == "process moved into container cgroups"),
    ("running", lambda m, s: m == "status update" and s == "TASK_RUNNING"),
    ("exited", lambda m, s: m == "container exited"),
    ("finished", lambda m, s: m == "status update" and s in ("TASK_FINISHED", "TASK_FAILED")),
]
PHASES = [
    ("cli_start", "subscribed", "CLI start -> framework subscribed (exec, GET /state, SUBSCRIBE)"),
    ("subscribed", "starting", "subscribed -> TASK_STARTING (offer, ACCEPT, run_task)"),
    ("starting", "cg_prepared", "STARTING -> cgroups prepared"),
    ("cg_prepared", "cg_moved", "cgroups prepared -> process in cgroups (shim spawn, clone)"),
    ("cg_moved", "running", "process in cgroups -> TASK_RUNNING"),
    ("running", "exited", "RUNNING -> container exited (true runs, shim reports)"),
    ("exited", "finished", "container exited -> TASK_FINISHED"),
    ("finished", "cli_end", "TASK_FINISHED -> CLI exited (event, ACK, logs, TEARDOWN, exit)"),
]


def ts_ns(text):
    # 2026-11-24T01:04:41.980166Z
    main, _, frac = text.rstrip("Z").partition(".")
    dt = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 10**9 + int((frac + "000000000")[:9])


segments = []
try:
    with open(path("agent-seq.log")) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            fields = rec.get("fields", {})
            msg = fields.get("message", "")
            state = fields.get("state", "")
            t = ts_ns(rec["timestamp"])
            if msg == "framework subscribed":
                segments.append({})
            if not segments:
                continue
            for name, match in MARKS:
                if name not in segments[-1] and match(msg, state):
                    segments[-1][name] = t
except FileNotFoundError:
    pass
berth_rows = [r for r in seq_rows if r[0] == "berth"]
w("")
if segments and len(segments) == len(berth_rows):
    per_phase = {p[0] + ">" + p[1]: [] for p in PHASES}
    for seg, row in zip(segments, berth_rows):
        seg = dict(seg, cli_start=row[2], cli_end=row[3])
        for a, b, _ in PHASES:
            if a in seg and b in seg:
                per_phase[a + ">" + b].append((seg[b] - seg[a]) / 1e6)
    w(f"where berth's launch-to-exit time goes (agent JSON log + CLI start/end, {len(segments)} runs):")
    w(f"  {'phase':<66}{'p50 ms':>9}{'mean ms':>9}{'p99 ms':>9}")
    total = 0.0
    for a, b, label in PHASES:
        v = per_phase[a + ">" + b]
        total += mean(v) if v else 0.0
        w(f"  {label:<66}{pct(v, 50):>9.2f}{mean(v):>9.2f}{pct(v, 99):>9.2f}")
    w(f"  {'sum of phase means':<66}{'':>9}{total:>9.2f}")
else:
    w(f"(no per-phase breakdown: {len(segments)} subscriptions in the log vs {len(berth_rows)} berth runs)")

# ------------------------------------------------------------------ RSS
procs = {"shim": [], "init": []}
try:
    with open(path("shims.tsv")) as f:
        for line in f:
            pid, role, rss, anon, pss = line.rstrip("\n").split("\t")
            procs.setdefault(role, []).append((int(rss), int(anon), int(pss or 0)))
except FileNotFoundError:
    pass
shims = procs["shim"]
idle = int(meta["AGENT_RSS_IDLE"])
after = int(meta["AGENT_RSS_AFTER"])
loaded = int(meta["AGENT_RSS_LOADED"])
w("")
w("memory (VmRSS from /proc/<pid>/status):")
w(f"  agent idle (fresh)                         {idle / 1024:8.1f} MB")
w(f"  agent idle after latency/throughput phases {after / 1024:8.1f} MB")
w(f"  agent with {meta['RUNNING']:>3} running tasks                {loaded / 1024:8.1f} MB")
labels = {
    "shim": "berth-executor shim (supervisor)",
    "init": "container init (fork of the shim, pid 1 inside)",
}
for role in ("shim", "init"):
    group = procs.get(role, [])
    if not group:
        w(f"  {labels[role]}: none found")
        continue
    rss = [g[0] for g in group]
    anon = [g[1] for g in group]
    pss = [g[2] for g in group]
    w(
        f"  {labels[role]}: n={len(group)}, VmRSS mean {mean(rss) / 1024:.2f} MB, max {max(rss) / 1024:.2f} MB; "
        f"RssAnon mean {mean(anon) / 1024:.2f} MB; Pss mean {mean(pss) / 1024:.2f} MB"
    )
w("")
w(
    f"cleanup: kill failures {meta['KILL_FAILS']}, agent exit code {meta['AGENT_RC']}, "
    f"leftover shims {meta['LEFT_SHIMS']}, leftover cgroup dirs {meta['LEFT_CGROUPS']}"
)

# ------------------------------------------------------------------ targets
w("")
w("targets (from the issue):")
b, c = stats["berth"]["p50"], stats["crun"]["p50"]


def verdict(ok):
    return "PASS" if ok else "MISS"


w(f"  [{verdict(b <= 2 * c)}] launch p50: berth {b:.1f} ms, crun {c:.1f} ms -> berth/crun = {b / c:.2f}x (target <= 2x)")
if "runc" in stats:
    r = stats["runc"]["p50"]
    w(f"  [info] launch p50: berth {b:.1f} ms, runc {r:.1f} ms -> berth/runc = {b / r:.2f}x")
w(f"  [{verdict(idle < 30 * 1024)}] agent RSS idle: {idle / 1024:.1f} MB (target < 30 MB)")
if shims:
    mx = max(s[0] for s in shims)
    w(
        f"  [{verdict(mx < 2 * 1024)}] shim RSS: mean {mean([s[0] for s in shims]) / 1024:.2f} MB, "
        f"max {mx / 1024:.2f} MB VmRSS (target < 2 MB); RssAnon mean {mean([s[1] for s in shims]) / 1024:.2f} MB"
    )
    inits = procs.get("init", [])
    if inits:
        w(
            f"  [info] per container, shim + init: VmRSS {(mean([s[0] for s in shims]) + mean([s[0] for s in inits])) / 1024:.2f} MB, "
            f"Pss {(mean([s[2] for s in shims]) + mean([s[2] for s in inits])) / 1024:.2f} MB"
        )
w("=" * 92)
print("\n".join(lines))
