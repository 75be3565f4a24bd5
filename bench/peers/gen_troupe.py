#!/usr/bin/env python3
"""gen_troupe.py N DIR OUT : the peer workload (../shared/bench/peers/gen_workload.py)
as a Troupe catalog, OUT/troupe/catalog.json (format 1, as Catalog::to_canonical_json).

The same objects as the Puppet/CFEngine/Ansible policies: DIR (0755), N/10 directories
(0755), N files (0644, distinct 2-line content) and DIR/bench.conf (0644). The template is
rendered here (the compiler's job in Troupe), so the agent gets the final bytes, just as
the peers' templates render to the byte-identical result. Content comes from the shared
generator itself (imported), so the trees cannot differ.
"""
import hashlib
import importlib.util
import json
import os
import sys


def load_shared(path):
    spec = importlib.util.spec_from_file_location("gen_workload", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    n = int(sys.argv[1])
    root = os.path.abspath(sys.argv[2]).rstrip("/")
    out = os.path.abspath(sys.argv[3])
    shared = os.environ.get("PEERS", os.path.join(os.path.dirname(__file__), "../../../shared/bench/peers"))
    gw = load_shared(os.path.join(shared, "gen_workload.py"))
    ndirs = max(1, n // 10)
    dirs = ["d%04d" % k for k in range(ndirs)]
    files = [("%s/f%05d.txt" % (dirs[min(i // 10, ndirs - 1)], i), gw.content_of(i, n)) for i in range(n)]
    items = [{"key": "item%02d" % j, "value": "value-%02d-%s" % (j, hashlib.md5(b"%d" % j).hexdigest()[:8])}
             for j in range(10)]
    rendered = "# bench.conf - managed by %s\nname = %s\nfiles = %d\n[items]\n" % ("cm-bench", "bench", n)
    rendered += "".join("%s = %s\n" % (it["key"], it["value"]) for it in items)
    rendered += "# end\n"

    contents = {}
    resources = []

    def add(body):
        b = body.encode()
        h = hashlib.sha256(b).hexdigest()
        contents[h] = {"encoding": "utf8", "data": body}
        return {"sha256": h, "size": len(b)}

    def directory(path, requires):
        r = {"id": "directory[%s]" % path, "type": "directory", "path": path, "ensure": "present", "mode": 0o755}
        if requires:
            r["requires"] = requires
        return r

    def file(path, body, requires):
        return {"id": "file[%s]" % path, "type": "file", "path": path, "ensure": "present",
                "content": add(body), "mode": 0o644, "requires": requires}

    resources.append(directory(root, []))
    for d in dirs:
        resources.append(directory("%s/%s" % (root, d), ["directory[%s]" % root]))
    for p, c in files:
        parent = "%s/%s" % (root, p.split("/")[0])
        resources.append(file("%s/%s" % (root, p), c, ["directory[%s]" % parent]))
    resources.append(file("%s/bench.conf" % root, rendered, ["directory[%s]" % root]))

    cat = {"format": 1, "node": "bench.example", "environment": "production",
           "code_version": "bench-%d" % n, "resources": resources,
           "contents": dict(sorted(contents.items()))}
    os.makedirs(os.path.join(out, "troupe"), exist_ok=True)
    with open(os.path.join(out, "troupe", "catalog.json"), "w") as f:
        json.dump(cat, f, separators=(",", ":"), ensure_ascii=False)
    print("generated troupe catalog N=%d (%d resources) -> %s/troupe/catalog.json" % (n, len(resources), out))


if __name__ == "__main__":
    main()
