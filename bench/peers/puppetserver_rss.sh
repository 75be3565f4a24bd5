#!/bin/bash
# puppetserver_rss.sh: puppetserver 7.9's resident memory per node, measured (issue 20 item 1).
#
# Runs the Debian puppetserver (JVM + JRuby) on 127.0.0.1:8140, then asks it for the node
# object and a compiled catalog of WARM and then K more distinct nodes (certnames
# fleetN.puppet.example.com, each with its own facts: the facts checkin_bench's agents send,
# hostname/fqdn/ip made distinct), each on a new TLS connection, as an agent run does
# (GET /puppet/v3/node, POST /puppet/v3/catalog with the facts). The catalog is the shared
# peers harness's N=100 workload (112 file/directory resources, one template) plus a file
# whose content names the node (116 catalog resources with Puppet's stage and classes),
# i.e. about the size of the catalogs Troupe's bench serves (~100 resources) and distinct
# per node.
#
# Prints the java process's VmRSS idle (started, one catalog compiled: JRuby warm), after
# WARM nodes and after WARM+K nodes, and one summary line for checkin_bench:
#   puppetserver_rss heap=-Xms1g,-Xmx1g warm=100 k=500 idle_kib=... warm_kib=... \
#     after_kib=... slope_kib_per_node=... hwm_kib=... resources=116
# slope = (after - warm) / K: what each further node added once the server was warm (with a
# fixed heap mostly heap pages touched for the first time: bounded by the heap).
#
# Requests come from the server's own certificate, allowed in auth.conf to fetch any node's
# node object and catalog (one certificate instead of K signed ones: signing and K agent
# runs would cost minutes of Ruby CPU on the client side and change nothing the server
# keeps in memory; no PuppetDB, so facts and catalogs go to the server's yaml cache on disk).
#
# Knobs: HEAP (default: keep the package's JAVA_ARGS, Debian's -Xms1g -Xmx1g),
#   WARM=100 K=500, INSTALL=1 (apt-get install puppetserver when missing),
#   WORK=/tmp/troupe-puppetserver-rss. Needs root (configures /etc/puppet).
set -euo pipefail
WARM=${WARM:-100}
K=${K:-500}
WORK=${WORK:-/tmp/troupe-puppetserver-rss}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
log() { echo "[puppetserver_rss $(date +%H:%M:%S)] $*" >&2; }

if ! command -v puppetserver >/dev/null; then
  if [ "${INSTALL:-0}" = 1 ]; then
    log "installing puppetserver (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q puppetserver >/dev/null
  else
    echo "puppetserver_rss unavailable: puppetserver is not installed (INSTALL=1 installs it)"
    exit 0
  fi
fi
[ "$(id -u)" = 0 ] || { echo "puppetserver_rss unavailable: needs root"; exit 0; }
if curl -sk --max-time 2 https://127.0.0.1:8140/status/v1/simple >/dev/null 2>&1; then
  echo "puppetserver_rss unavailable: something already serves 127.0.0.1:8140"
  exit 0
fi

rm -rf "$WORK"
mkdir -p "$WORK"
# The manifest: the shared peers harness's N=100 workload (../shared/bench/peers beside
# the repository).
GEN=${GEN:-$REPO/../shared/bench/peers/gen_workload.py}
if [ ! -f "$GEN" ]; then
  echo "puppetserver_rss unavailable: $GEN not found (set GEN=.../gen_workload.py)"
  exit 0
fi
python3 "$GEN" 100 "$WORK/tree" "$WORK/g100" >/dev/null
{
  cat "$WORK/g100/puppet/site.pp"
  # Distinct per node, like Troupe's templates naming the host.
  echo "file { '$WORK/tree/node.conf': ensure => file, mode => '0644', content => \"node \${facts['networking']['fqdn']} ip \${facts['networking']['ip']}\\n\" }"
} > "$WORK/site.pp"

CONF=/etc/puppet/puppetserver/conf.d
ENVDIR=/etc/puppet/code/environments/production
# Every file changed here is put back at exit (the CA made once is kept).
SAVED=(/etc/default/puppetserver $CONF/auth.conf $CONF/webserver.conf /etc/puppet/puppet.conf
       $ENVDIR/manifests/site.pp)
mkdir -p "$WORK/saved"
for f in "${SAVED[@]}"; do
  [ -f "$f" ] && cp -p "$f" "$WORK/saved/$(echo "$f" | tr / _)"
done
restore() {
  for f in "${SAVED[@]}"; do
    s="$WORK/saved/$(echo "$f" | tr / _)"
    if [ -f "$s" ]; then cp -p "$s" "$f"; else rm -f "$f"; fi
  done
  if [ -n "${JPID:-}" ] && kill -0 "$JPID" 2>/dev/null; then kill "$JPID"; sleep 3; fi
  if [ -n "${SPID:-}" ] && kill -0 "$SPID" 2>/dev/null; then kill "$SPID"; fi
}
trap restore EXIT

sed -i 's/^\(\s*ssl-host:\).*/\1 127.0.0.1/' $CONF/webserver.conf
if [ -n "${HEAP:-}" ]; then
  sed -i "s/^JAVA_ARGS=.*/JAVA_ARGS=\"-Xms$HEAP -Xmx$HEAP -Djruby.logger.class=com.puppetlabs.jruby_utils.jruby.Slf4jLogger\"/" /etc/default/puppetserver
fi
HEAP_ARGS=$(sed -n 's/^JAVA_ARGS="\(.*\)"/\1/p' /etc/default/puppetserver | grep -o -- '-Xm[sx][^ ]*' | tr '\n' ' ')
puppet config set autosign true --section server
mkdir -p $ENVDIR/manifests
cp "$WORK/site.pp" $ENVDIR/manifests/site.pp
chmod -R a+rX /etc/puppet/code "$WORK"
if [ ! -f /etc/puppet/puppetserver/ca/ca_crt.pem ]; then
  puppetserver ca setup --subject-alt-names DNS:localhost,IP:127.0.0.1 >&2
fi
chown -R puppet:puppet /etc/puppet/puppetserver/ca /var/lib/puppet/ssl
SERVER=$(puppet config print certname --section server)
SSL=/var/lib/puppet/ssl
# The server's certificate may fetch any node's node object and catalog.
python3 - "$CONF/auth.conf" "$SERVER" <<'EOF'
import re, sys
path, server = sys.argv[1], sys.argv[2]
text = open(path).read()
for pat in (r'"\^/puppet/v3/catalog/\(\[\^/\]\+\)\$"', r'"\^/puppet/v3/node/\(\[\^/\]\+\)\$"'):
    m = re.search(pat + r'.*?allow: "\$1"', text, re.S)
    if not m:
        sys.exit("auth.conf: rule %s with allow: \"$1\" not found" % pat)
    seg = m.group(0)
    text = text.replace(seg, seg[:-len('allow: "$1"')] + 'allow: ["$1", "%s"]' % server)
open(path, "w").write(text)
EOF

log "starting puppetserver ($HEAP_ARGS)"
t0=$(date +%s)
puppetserver foreground > "$WORK/puppetserver.out" 2>&1 &
SPID=$!
for _ in $(seq 1 600); do
  [ "$(curl -sk --max-time 2 https://127.0.0.1:8140/status/v1/simple 2>/dev/null)" = running ] && break
  kill -0 $SPID 2>/dev/null || { tail -20 "$WORK/puppetserver.out" >&2; echo "puppetserver_rss unavailable: puppetserver exited at start"; exit 0; }
  sleep 1
done
[ "$(curl -sk --max-time 2 https://127.0.0.1:8140/status/v1/simple)" = running ] \
  || { echo "puppetserver_rss unavailable: not running after 600 s"; exit 0; }
JPID=$(pgrep -u puppet -f puppetserver.jar | head -1 || true)
[ -n "$JPID" ] || { echo "puppetserver_rss unavailable: no java process of user puppet found"; exit 0; }
log "running after $(( $(date +%s) - t0 )) s, java pid $JPID"

python3 - "$JPID" "$WARM" "$K" "$SSL" "$SERVER" "$REPO/catalog/compiler/tests/facts/debian12.json" "${HEAP_ARGS% }" <<'EOF'
import http.client, json, ssl, sys, time, urllib.parse
jpid, warm, k, sslroot, server, facts_path, heap = sys.argv[1:8]
warm, k = int(warm), int(k)
ctx = ssl.create_default_context(cafile=f"{sslroot}/certs/ca.pem")
ctx.load_cert_chain(f"{sslroot}/certs/{server}.pem", f"{sslroot}/private_keys/{server}.pem")
base = json.load(open(facts_path))

def status(key):
    for line in open(f"/proc/{jpid}/status"):
        if line.startswith(key):
            return int(line.split()[1])

def node(i):
    name = f"fleet{i}.puppet.example.com"
    f = json.loads(json.dumps(base))
    f["hostname"], f["fqdn"] = name.split(".")[0], name
    f.setdefault("networking", {})
    f["networking"].update({"hostname": f["hostname"], "fqdn": name,
                            "ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"})
    f["clientcert"] = name
    conn = http.client.HTTPSConnection("127.0.0.1", 8140, context=ctx, timeout=300)
    conn.request("GET", f"/puppet/v3/node/{name}?environment=production",
                 headers={"Accept": "application/json"})
    r = conn.getresponse(); body = r.read()
    if r.status != 200:
        sys.exit(f"node {name}: HTTP {r.status}: {body[:300]!r}")
    facts = {"name": name, "values": f}
    form = urllib.parse.urlencode({
        "environment": "production", "facts_format": "application/json",
        "facts": json.dumps(facts), "transaction_uuid": f"00000000-0000-0000-0000-{i:012d}",
        "static_catalog": "true", "checksum_type": "sha256"})
    conn.request("POST", f"/puppet/v3/catalog/{name}?environment=production", body=form,
                 headers={"Accept": "application/json",
                          "Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse(); body = r.read()
    if r.status != 200:
        sys.exit(f"catalog {name}: HTTP {r.status}: {body[:300]!r}")
    cat = json.loads(body)
    conn.close()
    return len(cat.get("resources", []))

def settle():
    time.sleep(5)
    return status("VmRSS:")

n = node(0)
idle = settle()
print(f"puppetserver: catalog of {n} resources; RSS idle (warm JRuby) {idle/1024:.1f} MB", flush=True)
t = time.time()
for i in range(1, warm + 1):
    node(i)
warm_kib = settle()
print(f"puppetserver: RSS after {warm} nodes {warm_kib/1024:.1f} MB "
      f"({warm/(time.time()-t):.1f} nodes/s)", flush=True)
t = time.time()
for i in range(warm + 1, warm + k + 1):
    node(i)
    if i % 500 == 0:
        print(f"puppetserver: {i} nodes, RSS {status('VmRSS:')/1024:.1f} MB", flush=True)
took = time.time() - t
after = settle()
hwm = status("VmHWM:")
slope = (after - warm_kib) / k
print(f"puppetserver: RSS after {warm + k} nodes {after/1024:.1f} MB (peak {hwm/1024:.1f} MB, "
      f"{k/took:.1f} nodes/s): {slope:.2f} KB per further node", flush=True)
print(f"puppetserver_rss heap={heap.replace(' ', ',')} warm={warm} k={k} idle_kib={idle} "
      f"warm_kib={warm_kib} after_kib={after} slope_kib_per_node={slope:.3f} hwm_kib={hwm} "
      f"resources={n}", flush=True)
EOF
log "stopping puppetserver"
