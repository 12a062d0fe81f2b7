#!/usr/bin/env bash
# Issue 26's benchmark: entries/s through Veil's own NDJSON, Elasticsearch `_bulk`, OTLP/gRPC
# and OTLP/HTTP (protobuf) into one node, in the same run, with the same generated entries
# (`veil bench ingest --protocol`, which converts them on the client), $ROUNDS rounds of $SECS s
# each, protocols interleaved, each run against a fresh node (a node that already holds earlier
# runs' entries is slower, which would favour whichever protocol ran first). Also the node's CPU
# per entry in each protocol (its utime+stime over the run).
# Run from the repository: `bash node/benches/shippers.sh` (release build first).
set -euo pipefail
SECS=${SECS:-20}
ROUNDS=${ROUNDS:-2}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/veil}
WORK=$(mktemp -d /var/tmp/veil-bench.XXXX)
node=
trap '[ -n "$node" ] && kill -TERM $node 2>/dev/null && wait $node; rm -rf "$WORK"' EXIT
tick=$(getconf CLK_TCK)
cpu_of() { awk '{print $14+$15}' /proc/$1/stat; }

start_node() {
  rm -rf "$WORK/one"
  "$BIN" serve --data-dir "$WORK/one" --key-file "$WORK/keys.toml" --http-addr 127.0.0.1:19420 \
    --grpc-addr 127.0.0.1:19421 --peer-addr 127.0.0.1:19422 > "$WORK/one.out" 2> "$WORK/one.err" &
  node=$!
  until grep -q "veil ready" "$WORK/one.out" 2>/dev/null; do
    kill -0 $node 2>/dev/null || { cat "$WORK/one.err"; exit 1; }
    sleep 0.2
  done
}
for round in $(seq 1 "$ROUNDS"); do
  for p in ndjson bulk otlp-grpc otlp-http; do
    start_node
    c0=$(cpu_of $node)
    "$BIN" bench ingest --target 127.0.0.1:19420 --grpc-target 127.0.0.1:19421 --protocol $p \
      --duration "${SECS}s" --concurrency 4 --batch 1000 --answer summary --exceptions 20 \
      --idempotency-keys --json > "$WORK/$p-$round.json"
    c1=$(cpu_of $node)
    echo "$p $round $c0 $c1" >> "$WORK/cpu.txt"
    kill -TERM $node; wait $node || true; node=
  done
done
python3 - "$WORK" "$tick" <<'PY'
import json, sys, collections
work, tick = sys.argv[1], float(sys.argv[2])
rows = collections.defaultdict(list)
for line in open(f"{work}/cpu.txt"):
    p, r, c0, c1 = line.split()
    res = json.load(open(f"{work}/{p}-{r}.json"))
    assert res["verified"] and res["requests_failed"] == 0, res
    n = res["entries_acknowledged"]
    rows[p].append((res["entries_per_second"], res["ack_latency"]["p99_ms"],
                    (float(c1) - float(c0)) / tick / n * 1e6, res["bytes_per_entry"]))
base = sum(r[0] for r in rows["ndjson"]) / len(rows["ndjson"])
print("| protocol | entries/s (each round) | mean | vs NDJSON | p99 ack ms | node CPU µs/entry | bytes/entry on the wire |")
print("|---|---|---|---|---|---|---|")
for p, rs in rows.items():
    mean = sum(r[0] for r in rs) / len(rs)
    print(f"| {p} | {' / '.join(f'{r[0]:,.0f}' for r in rs)} | {mean:,.0f} | {mean / base * 100:.0f} % | "
          f"{' / '.join(f'{r[1]:.0f}' for r in rs)} | {sum(r[2] for r in rs) / len(rs):.1f} | "
          f"{sum(r[3] for r in rs) / len(rs):.0f} |")
PY
