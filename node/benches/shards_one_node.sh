#!/usr/bin/env bash
# One node at full speed with 4 and with 16 shards, interleaved, a fresh node each run (the
# mix of cluster_vs_one.sh). Run from the repository: `bash node/benches/shards_one_node.sh`
# (release build first).
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/veil}
SECS=${SECS:-20}
for round in 1 2; do
  for s in 4 16; do
    D=$(mktemp -d /var/tmp/veil-shards.XXXX)
    "$BIN" serve --data-dir "$D/d" --key-file "$D/k.toml" --http-addr 127.0.0.1:19820 \
      --grpc-addr 127.0.0.1:19821 --peer-addr 127.0.0.1:19822 --shards $s > "$D/out" 2> "$D/err" &
    n=$!
    until grep -q "veil ready" "$D/out" 2>/dev/null; do
      kill -0 $n 2>/dev/null || { cat "$D/err"; exit 1; }
      sleep 0.2
    done
    "$BIN" bench ingest --target 127.0.0.1:19820 --duration "${SECS}s" --concurrency 4 \
      --answer summary --exceptions 20 --json 2>/dev/null | python3 -c "
import json, sys
r = json.load(sys.stdin)
assert r['verified'], r
print('$s shards, round $round:', round(r['entries_per_second']), 'entries/s, p99', round(r['ack_latency']['p99_ms']), 'ms')"
    kill -TERM $n; wait $n || true
    rm -rf "$D"
  done
done
