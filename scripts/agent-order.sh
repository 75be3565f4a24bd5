#!/usr/bin/env bash
# Rewrites agent/link-order.txt, the function layout scripts/build-agent.sh
# links the agent with (docs/adr/0011-agent-build.md): the mangled names of
# every function of troupe-agent that a set of real runs executes, busiest
# first, found by running the agent under callgrind. Run it when
# build-agent.sh says the layout is stale, and commit the file.
#
# The runs (each in a new temporary directory): `facts`; `run --once` with
# an empty catalog; with a catalog of 300 files in 30 directories, into an
# empty tree, again (nothing to do), after drift (content, mode, a file
# removed), in noop mode; `rollback --list`; `--help`.
# Needs: valgrind, python3, nm.
set -euo pipefail
cd "$(dirname "$0")/.."
top="$(pwd)"
command -v valgrind >/dev/null || { echo "agent-order.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
bin="$(TROUPE_AGENT_ORDER=none ./scripts/build-agent.sh)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 - "$work" <<'PY'
import hashlib, json, os, sys
work = sys.argv[1]
root = os.path.join(work, "tree")
contents, resources = {}, []
def body(text):
    b = text.encode()
    h = hashlib.sha256(b).hexdigest()
    contents[h] = {"encoding": "utf8", "data": text}
    return {"sha256": h, "size": len(b)}
resources.append({"id": f"directory[{root}]", "type": "directory", "path": root,
                  "ensure": "present", "mode": 0o755})
for d in range(30):
    dp = f"{root}/d{d:02d}"
    resources.append({"id": f"directory[{dp}]", "type": "directory", "path": dp, "ensure": "present",
                      "mode": 0o755, "requires": [f"directory[{root}]"]})
    for f in range(10):
        fp = f"{dp}/f{f}.txt"
        resources.append({"id": f"file[{fp}]", "type": "file", "path": fp, "ensure": "present",
                          "content": body(f"file {d} {f}\nline two\n"), "mode": 0o644,
                          "requires": [f"directory[{dp}]"]})
cat = {"format": 1, "node": "order.example", "environment": "production", "code_version": "order",
       "resources": resources, "contents": dict(sorted(contents.items()))}
json.dump(cat, open(os.path.join(work, "catalog.json"), "w"), separators=(",", ":"))
json.dump(dict(cat, resources=[], contents={}, code_version="empty"),
          open(os.path.join(work, "empty.json"), "w"))
PY

n=0
trace() { # ARGS... : one run of the agent under callgrind (its exit status is not the point)
  n=$((n + 1))
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/cg.$n" \
    "$bin" "$@" >"$work/run.$n.log" 2>&1 || true
}
st="$work/state"
trace facts
trace run --once --output quiet --catalog "$work/empty.json" --state "$work/state-empty"
trace run --once --output quiet --catalog "$work/catalog.json" --state "$st"
trace run --once --catalog "$work/catalog.json" --state "$st"
echo drift >"$work/tree/d03/f1.txt"
chmod 0600 "$work/tree/d04/f2.txt"
rm "$work/tree/d05/f3.txt"
trace run --once --noop --catalog "$work/catalog.json" --state "$st"
trace run --once --catalog "$work/catalog.json" --state "$st"
trace rollback --list --state "$st"
trace --help

python3 - "$bin" "$top/agent/link-order.txt" "$work"/cg.* <<'PY'
import os, re, subprocess, sys
binary, out, files = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3:]
ours = set(l.split()[-1] for l in subprocess.run(["nm", binary], capture_output=True, text=True,
                                                 check=True).stdout.splitlines()
           if len(l.split()) == 3 and l.split()[1] in "tTwW")
cost = {}
for f in files:
    names = {"ob": {}, "fn": {}}
    ob = fn = None
    for line in open(f, errors="replace"):
        m = re.match(r"c?(ob|fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            kind, ident, name = m.groups()
            if name:
                names[kind][ident] = name
            if not line.startswith("c"):
                if kind == "ob":
                    ob = names["ob"].get(ident)
                else:
                    fn = names["fn"].get(ident)
            continue
        if fn and ob and os.path.realpath(ob) == binary and line[:1] in "0123456789+-*":
            p = line.split()
            if len(p) >= 2 and p[1].isdigit():
                # callgrind marks recursion levels as NAME'2
                name = fn.split("'")[0]
                cost[name] = cost.get(name, 0) + int(p[1])
order = sorted((n for n in cost if n in ours), key=lambda n: (-cost[n], n))
with open(out, "w") as o:
    o.write("".join(n + "\n" for n in order))
print(f"agent-order.sh: {len(order)} functions executed -> {out}", file=sys.stderr)
PY
