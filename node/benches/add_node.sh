#!/usr/bin/env bash
# Issue 24's benchmark: how long adding a fourth node to a three-node cluster takes with some
# data, and what ingest does meanwhile.
#   1. a three-node cluster (`cluster up`, 16 shards) is filled at full speed until node 1's
#      data directory holds $GB GB (each node holds every shard's replica);
#   2. a steady ingest at $RATE entries/s runs throughout what follows (its ack latency is
#      reported for a quiet minute first, then for the join);
#   3. node 4, started with `veil serve --await-add`, is added by `veil admin nodes add
#      --wait`: timed from the command to node 4's ready line (it votes in every shard placed
#      on it) and to every shard at exactly its placed voters (the replaced replicas removed,
#      when the command returns), with the replicas moved, node 4's directory size and the
#      snapshot bytes the three nodes sent (`--snapshot-send-bytes-per-sec`, 64 MiB/s each by
#      default; SNAPSHOT_RATE sets it on every node).
# Run from the repository: `bash node/benches/add_node.sh` (release build first). Every process
# it starts is stopped by its pid.
set -euo pipefail
GB=${GB:-1}
RATE=${RATE:-5000}
QUIET=${QUIET:-30}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/veil}
WORK=$(mktemp -d /var/tmp/veil-bench-add.XXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
bench() { "$BIN" bench ingest --target 127.0.0.1:19600 --duration "${1}s" --concurrency 4 --answer summary ${2:-} --json; }
settled() {
  curl -s 127.0.0.1:19600/api/v1/cluster | python3 -c '
import json,sys
d=json.load(sys.stdin); s=d["shards"]
ok=all(sorted(x["replicas"])==sorted(x["placed"]) and not x["learners"] and x["leader"] is not None for x in s)
print("yes" if ok else "no")'
}

RATE_FLAGS=()
if [ -n "${SNAPSHOT_RATE:-}" ]; then RATE_FLAGS=(--snapshot-send-bytes-per-sec "$SNAPSHOT_RATE"); fi
snapshot_bytes() {
  for p in 19600 19610 19620; do curl -s 127.0.0.1:$p/metrics; done |
    awk '/^veil_raft_snapshot_bytes_sent_total/ {s += $2} END {printf "%d\n", s}'
}
"$BIN" cluster up --nodes 3 --dir "$WORK/c" --base-port 19600 -- "${RATE_FLAGS[@]}" > "$WORK/up.out" 2>&1 &
pids+=($!)
until grep -q "cluster ready" "$WORK/up.out" 2>/dev/null; do sleep 0.2; done
echo "== filling to $GB GB on node 1"
while [ "$(du -sb "$WORK/c/node-1" | cut -f1)" -lt $((GB * 1024 * 1024 * 1024)) ]; do
  bench 20 > /dev/null
done
curl -s -XPOST 127.0.0.1:19600/api/v1/logs/query -H content-type:application/json \
  -d '{"limit":0,"consistency":"strong"}' | python3 -c 'import json,sys; print("entries stored:", json.load(sys.stdin)["total"])'
echo "node 1 holds $(du -sh "$WORK/c/node-1" | cut -f1)"

echo "== steady $RATE entries/s, quiet ${QUIET} s, then node 4 joins"
bench "$QUIET" "--rate $RATE" > "$WORK/quiet.json"
# During the join: 10 s runs back to back until it is done, each reported on its own.
(i=0; until [ -e "$WORK/joined" ]; do bench 10 "--rate $RATE" > "$WORK/during-$i.json"; i=$((i+1)); done) &
load=$!
pids+=($load)
"$BIN" serve --data-dir "$WORK/c/node-4" --http-addr 127.0.0.1:19650 --grpc-addr 127.0.0.1:19651 \
  --peer-addr 127.0.0.1:19652 --await-add --key-file "$WORK/c/keys.toml" "${RATE_FLAGS[@]}" \
  > "$WORK/n4.out" 2> "$WORK/n4.err" &
pids+=($!)
until grep -q "veil awaiting add" "$WORK/n4.out" 2>/dev/null; do sleep 0.2; done
sent0=$(snapshot_bytes)
t0=$(date +%s.%N)
# Node 4's ready line, timed on the side while the command waits.
(until grep -q "veil ready" "$WORK/n4.out" 2>/dev/null; do sleep 0.2; done; date +%s.%N > "$WORK/t1") &
"$BIN" admin --addr 127.0.0.1:19600 nodes add 127.0.0.1:19650 --wait --json > "$WORK/added.json"
until [ "$(settled)" = yes ]; do sleep 0.5; done
t2=$(date +%s.%N)
until [ -e "$WORK/t1" ]; do sleep 0.2; done
t1=$(cat "$WORK/t1")
sent=$(( $(snapshot_bytes) - sent0 ))
touch "$WORK/joined"
wait $load || true
moved=$(curl -s 127.0.0.1:19600/api/v1/cluster | python3 -c '
import json,sys
print(sum(1 for s in json.load(sys.stdin)["shards"] if 4 in s["replicas"]))')
python3 - "$t0" "$t1" "$t2" "$moved" "$(du -sh "$WORK/c/node-4" | cut -f1)" "$WORK" "$sent" <<'PY'
import glob,json,sys
t0,t1,t2=map(float,sys.argv[1:4]); moved=sys.argv[4]; size=sys.argv[5]; work=sys.argv[6]
sent=int(sys.argv[7])
print(f"node 4: ready after {t1-t0:.1f} s, every shard at its placed voters after {t2-t0:.1f} s; "
      f"{moved} replicas moved to it, its directory {size}")
print(f"snapshots sent meanwhile: {sent/2**20:.0f} MiB, {sent/2**20/(t2-t0):.1f} MiB/s over the add")
print("veil admin nodes add --wait --json:", json.dumps(json.load(open(f"{work}/added.json"))))
def line(name, r):
    l=r["ack_latency"]
    print(f"{name}: {r['entries_per_second']:.0f} entries/s, ack p50 {l['p50_ms']:.1f} ms, "
          f"p99 {l['p99_ms']:.1f} ms, max {l['max_ms']:.1f} ms, rejected {r.get('entries_rejected', 0)}")
line("quiet", json.load(open(f"{work}/quiet.json")))
runs=sorted(glob.glob(f"{work}/during-*.json"), key=lambda p: int(p.rsplit('-',1)[1].split('.')[0]))
for i,p in enumerate(runs):
    try:
        line(f"join +{10*i:>3}-{10*i+10} s", json.load(open(p)))
    except (ValueError, KeyError) as e:
        print(f"join +{10*i} s: no answer ({e})")
PY
