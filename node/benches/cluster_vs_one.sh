#!/usr/bin/env bash
# Issue 22's benchmark: a one-node Veil and a three-node cluster (three processes sharing this
# machine's cores) in the same run, same load generator and mix.
#   1. entries/s at full speed for $SECS s against one node, then against the cluster's node 1
#      (the founder, which leads every shard: writes go to leaders, so no forwarding here);
#   2. acknowledgement latency at a steady half of the cluster's rate;
#   3. CPU per entry per replica (each process's utime+stime over the full-speed run);
#   4. idle CPU of the cluster's groups (nothing sent, $IDLE s).
# Run from the repository: `bash node/benches/cluster_vs_one.sh` (release build first).
set -euo pipefail
SECS=${SECS:-30}
IDLE=${IDLE:-30}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/veil}
WORK=$(mktemp -d /var/tmp/veil-bench.XXXX)
trap 'pkill -TERM -f "serve.*$WORK" 2>/dev/null || true; sleep 3; rm -rf "$WORK"' EXIT
tick=$(getconf CLK_TCK)
cpu_of() { awk '{print $14+$15}' /proc/$1/stat; }
bench() { "$BIN" bench ingest --target "$1" --duration "${2}s" --concurrency 4 --answer summary --exceptions 20 ${3:-} --json; }

echo "== one node"
"$BIN" serve --data-dir "$WORK/one" --key-file "$WORK/keys.toml" --http-addr 127.0.0.1:19420 \
  --grpc-addr 127.0.0.1:19421 --peer-addr 127.0.0.1:19422 > "$WORK/one.out" 2> "$WORK/one.err" &
one=$!
until grep -q "veil ready" "$WORK/one.out" 2>/dev/null; do
  kill -0 $one 2>/dev/null || { cat "$WORK/one.err"; exit 1; }
  sleep 0.2
done
c0=$(cpu_of $one)
bench 127.0.0.1:19420 "$SECS" > "$WORK/one.json"
c1=$(cpu_of $one)
kill -TERM $one; wait $one || true
python3 - "$WORK/one.json" "$c0" "$c1" "$tick" <<'PY'
import json,sys
r=json.load(open(sys.argv[1])); n=r["entries_acknowledged"]; cpu=(float(sys.argv[3])-float(sys.argv[2]))/float(sys.argv[4])
assert r["verified"], r
print(f"one node: {r['entries_per_second']:.0f} entries/s, p99 ack {r['ack_latency']['p99_ms']:.1f} ms, node CPU {cpu:.1f} s = {cpu/n*1e6:.1f} us/entry")
PY

echo "== three nodes"
"$BIN" cluster up --nodes 3 --dir "$WORK/three" --base-port 19500 > "$WORK/three.out" 2>&1 &
up=$!
until grep -q "cluster ready" "$WORK/three.out" 2>/dev/null; do
  kill -0 $up 2>/dev/null || { cat "$WORK/three.out"; exit 1; }
  sleep 0.2
done
pids=$(pgrep -f "$WORK/three/node-.* " | tr '\n' ' ')
before=$(for p in $pids; do cpu_of $p; done | tr '\n' ' ')
sleep "$IDLE"
after=$(for p in $pids; do cpu_of $p; done | tr '\n' ' ')
python3 - "$before" "$after" "$tick" "$IDLE" <<'PY'
import sys
b=[float(x) for x in sys.argv[1].split()]; a=[float(x) for x in sys.argv[2].split()]; t=float(sys.argv[3]); s=float(sys.argv[4])
per=[(y-x)/t/s*100 for x,y in zip(b,a)]
print("idle cluster CPU: " + ", ".join(f"{p:.2f} %" for p in per) + f" of one core per node; {sum(per)/2:.2f} % of the machine's two cores")
PY
before=$(for p in $pids; do cpu_of $p; done | tr '\n' ' ')
bench 127.0.0.1:19500 "$SECS" > "$WORK/three.json"
after=$(for p in $pids; do cpu_of $p; done | tr '\n' ' ')
python3 - "$WORK/three.json" "$before" "$after" "$tick" "$WORK/one.json" <<'PY'
import json,sys
r=json.load(open(sys.argv[1])); n=r["entries_acknowledged"]; t=float(sys.argv[4])
b=[float(x) for x in sys.argv[2].split()]; a=[float(x) for x in sys.argv[3].split()]
cpu=[(y-x)/t for x,y in zip(b,a)]
one=json.load(open(sys.argv[5]))["entries_per_second"]
assert r["verified"], r
print(f"three nodes: {r['entries_per_second']:.0f} entries/s ({r['entries_per_second']/one*100:.0f} % of one node), p99 ack {r['ack_latency']['p99_ms']:.1f} ms")
print("CPU per entry per replica: " + ", ".join(f"{c/n*1e6:.1f} us" for c in cpu) + f" (sum {sum(cpu)/n*1e6:.1f} us)")
print(f"HALF_RATE={int(r['entries_per_second']/2)}")
PY
half=$(python3 -c "import json;print(int(json.load(open('$WORK/three.json'))['entries_per_second']/2))")
bench 127.0.0.1:19500 "$SECS" "--rate $half" > "$WORK/half.json"
python3 - "$WORK/half.json" <<'PY'
import json,sys
r=json.load(open(sys.argv[1])); l=r["ack_latency"]
print(f"steady {r['entries_per_second']:.0f} entries/s on three nodes: ack p50 {l['p50_ms']:.1f} ms, p99 {l['p99_ms']:.1f} ms, max {l['max_ms']:.1f} ms")
PY
kill -TERM $up; wait $up || true
