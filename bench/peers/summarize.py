#!/usr/bin/env python3
"""summarize.py RESDIR : the shared summarize.py table, with troupe as a tool, plus a
troupe-vs-cf-agent ratio table for the scenarios both ran in this run."""
import glob
import json
import os
import statistics
import sys

res = sys.argv[1] if len(sys.argv) > 1 else "/tmp/cmbench/results-troupe"


def load(id_):
    with open(os.path.join(res, id_ + ".json")) as f:
        wall = json.load(f)["results"][0]["times"]
    rows = []
    tf = os.path.join(res, id_ + ".time")
    if os.path.exists(tf):
        for line in open(tf):
            p = line.split()
            if len(p) == 4 and not line.startswith("Command"):
                rows.append([float(x) for x in p])
    foreign = float("nan")
    load = "?"
    try:
        env = open(os.path.join(res, id_ + ".env")).read()
        for tok in env.split():
            if tok.startswith("foreign_pct="):
                foreign = float(tok.split("=")[1])
        if 'loadavg="' in env:
            load = env.split('loadavg="')[1].split('"')[0]
    except OSError:
        pass
    cpu = [r[1] + r[2] for r in rows]
    rss = [r[3] / 1024.0 for r in rows]
    return {"n": len(wall), "wall": statistics.median(wall), "min": min(wall), "max": max(wall),
            "cpu": statistics.median(cpu) if cpu else float("nan"),
            "rss": statistics.median(rss) if rss else float("nan"),
            "rssmax": max(rss) if rss else float("nan"), "foreign": foreign, "load": load}


order = {"troupe": 0, "cfengine": 1, "puppet": 2, "ansible": 3}
scen = {"first": 0, "noop": 1, "drift": 2}
data = {}
for p in glob.glob(os.path.join(res, "*.json")):
    i = os.path.basename(p)[:-5]
    try:
        data[i] = load(i)
    except (ValueError, KeyError, IndexError, statistics.StatisticsError):
        pass


def key(i):
    p = i.split("-")
    if p[0] == "floor":
        return (9, i, 0, 0)
    return (order.get(p[0], 5), p[0], int(p[1]), scen.get(p[2], 9))


if data:  # the bench phases' scenarios (hyperfine)
    print("| tool | N | scenario | runs | median wall s | min–max s | median CPU s (user+sys) | peak RSS MB (median / max) | other load % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i in sorted(data, key=key):
        d = data[i]
        p = i.split("-")
        tool, n, sc = (p[0], p[1], p[2]) if p[0] != "floor" else (i, "–", "startup floor")
        print("| %s | %s | %s | %d | %.3f | %.3f–%.3f | %.3f | %.1f / %.1f | %.0f |" % (
            tool, n, sc, d["n"], d["wall"], d["min"], d["max"], d["cpu"], d["rss"], d["rssmax"], d["foreign"]))

    print()
    # Every run counts: "worst" is troupe's slowest run over cf-agent's fastest.
    print("| N | scenario | troupe wall median (min–max) / RSS max | cf-agent wall median (min–max) / RSS max (same run) | troupe ÷ cf-agent median | worst (troupe max ÷ cf-agent min) | load avg troupe / cf-agent |")
    print("|---|---|---|---|---|---|---|")
    for n in sorted({int(i.split("-")[1]) for i in data if i.startswith("troupe-")}):
        for sc in ("first", "noop", "drift"):
            t, c = data.get("troupe-%d-%s" % (n, sc)), data.get("cfengine-%d-%s" % (n, sc))
            if t and c:
                print("| %d | %s | %.3f s (%.3f–%.3f) / %.1f MB | %.3f s (%.3f–%.3f) / %.1f MB | %.2fx | %.2fx | %s / %s |" % (
                    n, sc, t["wall"], t["min"], t["max"], t["rssmax"], c["wall"], c["min"], c["max"], c["rssmax"],
                    t["wall"] / c["wall"], t["max"] / c["min"], t["load"], c["load"]))

# First runs alternated with cf-agent (run.sh alternate, first_alt.py): every run counts.
alt = {}
for p in sorted(glob.glob(os.path.join(res, "first-alt-*-*.jsonl"))):
    for line in open(p):
        r = json.loads(line)
        alt.setdefault((r["n"], r["prep"]), {}).setdefault(r["tool"], []).append(r)
if alt:
    print()
    print("| N | FIRST_PREP | rounds | troupe wall min / median / max s | cf-agent wall min / median / max s "
          "| median ratio | worst run (troupe max ÷ cf min) | worst same round | CPU ratio median (worst) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (n, prep) in sorted(alt):
        t, c = alt[(n, prep)].get("troupe"), alt[(n, prep)].get("cfengine")
        if not t or not c:
            continue
        tw, cw = [x["wall"] for x in t], [x["wall"] for x in c]
        tc, cc = [x["cpu"] for x in t], [x["cpu"] for x in c]
        loads = [x["load1"] for v in alt[(n, prep)].values() for x in v]
        same = max(a["wall"] / b["wall"] for a, b in zip(t, c))
        print("| %d | %s | %d | %.3f / %.3f / %.3f | %.3f / %.3f / %.3f | %.3fx | %.3fx | %.3fx | %.3fx (%.3fx) | %.1f-%.1f |" % (
            n, prep, len(t), min(tw), statistics.median(tw), max(tw), min(cw), statistics.median(cw), max(cw),
            statistics.median(tw) / statistics.median(cw), max(tw) / min(cw), same,
            statistics.median(tc) / statistics.median(cc), max(tc) / min(cc), min(loads), max(loads)))
