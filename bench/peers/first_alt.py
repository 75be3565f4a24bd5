#!/usr/bin/env python3
"""first_alt.py N RUNS OUTDIR TOOL=CMD [TOOL=CMD ...] : first runs, tools alternated.

The harness's `bench` phase runs all of one tool's runs, then all of the other's, so a
burst of load from other processes lands on one tool only. Here every round runs each
tool once, in turn (the order rotates every round), each into an emptied tree, so both
see the same load: a bimodal tool shows up beside a steady one from the same minute.

Per run: wall (perf_counter around fork/exec/wait), CPU (user+sys of the child, from
wait4's rusage), peak RSS (GNU time's %M), the 1-minute load average just before, and the
tree is verified (content, modes, count: as run.sh's verify) after every run, and the
file system's dirty + writeback data just before (what a syncfs may have to wait for).

Env: BASE (/tmp/cmbench), FIRST_PREP=trash|rm (as run.sh; trash: the tree is moved into
BASE/trash, so no inode is freed while the scenario runs; rm: `rm -rf` as the shared
harness), each after a 61 s wait at the start (NOWAIT=1 skips it). RT_PRIO=N runs every tool under `chrt -f N` (SCHED_FIFO, root
only): on a shared machine other processes' builds then cannot preempt the measured runs, so
wall time is close to a quiet machine's (kernel RT throttling still leaves them 5 %). One untimed round first warms each tool up (state directory,
page cache).

Writes OUTDIR/first-alt-N-PREP.jsonl (a line per run; summarize.py tabulates them) and
prints a table: per tool min, median, max wall and CPU, max RSS; and the ratio of each
troupe tool to the cf-agent runs: median, worst (its slowest over cf-agent's fastest),
worst same-round, and the same for CPU time (user+sys, the figure load does not move).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

n, runs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tools = [a.split("=", 1) for a in sys.argv[4:]]
if os.environ.get("RT_PRIO"):
    tools = [[t, "chrt -f %d %s" % (int(os.environ["RT_PRIO"]), c)] for t, c in tools]
base = os.environ.get("BASE", "/tmp/cmbench")
prep = os.environ.get("FIRST_PREP", "trash")
tree, gen = os.path.join(base, "t%d" % n), os.path.join(base, "g%d" % n)
trash = os.path.join(base, "trash")
os.makedirs(out, exist_ok=True)
log = open(os.path.join(out, "first-alt-%d-%s.jsonl" % (n, prep)), "w")


def empty_tree(k):
    if os.path.exists(tree):
        if prep == "trash":
            os.makedirs(trash, exist_ok=True)
            os.rename(tree, os.path.join(trash, "t%d.%d" % (n, k)))
        else:
            shutil.rmtree(tree)
    subprocess.run(["sync"], check=True)


def verify():
    r = subprocess.run(["sha256sum", "-c", "--quiet", os.path.join(gen, "expected.sha256")],
                       capture_output=True)
    if r.returncode != 0:
        return "content"
    files = 0
    for d, dirs, fs in os.walk(tree):
        if os.stat(d).st_mode & 0o7777 != 0o755:
            return "mode " + d
        for f in fs:
            files += 1
            if os.lstat(os.path.join(d, f)).st_mode & 0o7777 != 0o644:
                return "mode " + f
    return None if files == n + 1 else "count %d" % files


def run_one(cmd):
    # Peak RSS from GNU time (as run.sh), not wait4's ru_maxrss: the child forked here
    # starts as a copy of this Python process and Linux keeps a process's largest RSS
    # across exec, so ru_maxrss never went below Python's own (~15 MB; it hid every
    # troupe figure under that). time's own child is forked from a small process.
    rss_file = os.path.join(out, ".first-alt-rss")
    t0 = time.perf_counter()
    p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file, "sh", "-c", cmd],
                         stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    # "Command exited with non-zero status N" may come first; the figure is last (KB).
    rss = int(open(rss_file).read().split()[-1]) / 1024.0
    return wall, ru.ru_utime + ru.ru_stime, rss, p.returncode


# Both preps start after 61 s without deletions of ours: with rm, the inodes the previous
# set freed (a trash directory of 15,000 at 1,000 files) would otherwise tax every create
# of the first minute (bench/README.md), and the figures would depend on what ran before.
if not os.environ.get("NOWAIT"):
    print("waiting 61 s: ext4 avoids inodes freed in the last 60 s (bench/README.md)", flush=True)
    subprocess.run(["sync"])
    time.sleep(61)
k = 0
# One untimed round: each tool's state directory, caches and binary pages
# as in the harness's hyperfine runs (which warm up the same way).
for name, cmd in tools:
    k += 1
    empty_tree(k)
    run_one(cmd)
rows = {t: [] for t, _ in tools}
for r in range(runs):
    order = tools[r % len(tools):] + tools[:r % len(tools)]
    for name, cmd in order:
        k += 1
        empty_tree(k)
        load = open("/proc/loadavg").read().split()[0]
        mem = dict(l.split(":", 1) for l in open("/proc/meminfo"))
        dirty = (int(mem["Dirty"].split()[0]) + int(mem["Writeback"].split()[0])) // 1024
        wall, cpu, rss, code = run_one(cmd)
        bad = verify()
        row = {"n": n, "prep": prep, "rt": os.environ.get("RT_PRIO", ""), "round": r, "tool": name, "wall": wall, "cpu": cpu, "rss_mb": rss, "exit": code,
               "load1": float(load), "dirty_mb": dirty, "verify": bad or "ok"}
        log.write(json.dumps(row) + "\n")
        log.flush()
        rows[name].append(row)
        print("round %d %-16s wall %.3f s cpu %.3f s rss %.1f MB load %s dirty %d MB %s" % (
            r, name, wall, cpu, rss, load, dirty, "ok" if not bad else "VERIFY FAIL " + bad), flush=True)
        if bad:
            sys.exit("verify failed after %s: %s" % (name, bad))
if prep == "trash":
    shutil.rmtree(trash, ignore_errors=True)
    subprocess.run(["sync"])

print()
print("N=%d, %d rounds, FIRST_PREP=%s%s, load average (1 min) %.1f-%.1f" % (
    n, runs, prep, ", RT_PRIO=" + os.environ["RT_PRIO"] if os.environ.get("RT_PRIO") else "", min(x["load1"] for v in rows.values() for x in v),
    max(x["load1"] for v in rows.values() for x in v)))
print("| tool | wall min | median | max | CPU s min / median / max | peak RSS MB max |")
print("|---|---|---|---|---|---|")
for name, v in rows.items():
    w = [x["wall"] for x in v]
    c = [x["cpu"] for x in v]
    print("| %s | %.3f | %.3f | %.3f | %.3f / %.3f / %.3f | %.1f |" % (
        name, min(w), statistics.median(w), max(w), min(c), statistics.median(c), max(c),
        max(x["rss_mb"] for x in v)))
cf = rows.get("cfengine")
if cf:
    print()
    print("| tool (FIRST_PREP=%s) | wall: median ÷ cf median | worst (max ÷ cf min) | worst same round "
          "| CPU: median ÷ cf median | worst (max ÷ cf min) |" % prep)
    print("|---|---|---|---|---|---|")
    for name, v in rows.items():
        if name == "cfengine":
            continue
        r = {}
        for k in ("wall", "cpu"):
            a, b = [x[k] for x in v], [x[k] for x in cf]
            r[k] = (statistics.median(a) / statistics.median(b), max(a) / min(b))
        same = max(a["wall"] / b["wall"] for a, b in zip(v, cf))
        print("| %s | %.3fx | %.3fx | %.3fx | %.3fx | %.3fx |" % (
            name, r["wall"][0], r["wall"][1], same, r["cpu"][0], r["cpu"][1]))
