#!/usr/bin/env bash
# A full-speed ingest run on a fresh release node, with the node's CPU per thread name for each
# interval (from /proc/<pid>/task/*/stat; tantivy's indexing threads end at every commit, so
# their time shows as "exited threads"), then what RocksDB's flushes and compactions wrote and
# cost per column family (rocksdb_log_summary.py on the node's RocksDB LOG). See BENCHMARKS.md
# (issue 8, session 11).
# Usage: cpu_by_thread.sh <release veil binary> <scratch dir, deleted first> [serve flags…]
# Env: SECONDS_TOTAL (default 60), INTERVAL (default 10), CLIENT (the binary running
# `veil bench ingest`, default the same one). Uses 127.0.0.1:17450/17451.
set -u
B=$1; R=$2; shift 2
TOTAL=${SECONDS_TOTAL:-60}; IV=${INTERVAL:-10}; N=$((TOTAL / IV))
rm -rf "$R"; mkdir -p "$R"
"$B" serve --data-dir "$R/data" --http-addr 127.0.0.1:17450 --grpc-addr 127.0.0.1:17451 --rocksdb-log-level info "$@" > "$R/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do grep -q "veil ready" "$R/serve.log" && break; sleep 0.2; done
snap() {
  echo "PROCESS $(awk '{print $14+$15}' /proc/$PID/stat)" > "$R/snap.$1"
  for t in /proc/$PID/task/*; do
    echo "$(tr ' ' '_' 2>/dev/null < "$t/comm") $(awk '{print $14+$15}' "$t/stat" 2>/dev/null)"
  done >> "$R/snap.$1"
}
"${CLIENT:-$B}" bench ingest --target 127.0.0.1:17450 --duration "${TOTAL}s" --concurrency 4 --batch 1000 --json > "$R/ingest.json" 2>/dev/null &
for i in $(seq 0 "$N"); do snap "$i"; [ "$i" = "$N" ] || sleep "$IV"; done
wait %2 2>/dev/null
kill "$PID"; wait "$PID"
python3 - "$R" "$N" "$(getconf CLK_TCK)" <<'PY'
import collections, json, re, sys
R, N, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def read(i):
    d = collections.Counter()
    for line in open(f'{R}/snap.{i}'):
        p = line.split()
        if len(p) == 2:
            d[re.sub(r'[-_]?\d+$', '', p[0])] += int(p[1])
    d['(exited threads)'] = d['PROCESS'] - sum(v for k, v in d.items() if k != 'PROCESS')
    return d
s = [read(i) for i in range(N + 1)]
names = sorted(set().union(*s), key=lambda k: -(s[N][k] - s[0][k]))
print('CPU seconds per interval, by thread name')
for k in names[:10]:
    print(f'{k:20s}', [round((s[i + 1][k] - s[i][k]) / tck, 1) for i in range(N)])
d = json.load(open(f'{R}/ingest.json'))
print(f"entries/s {d['entries_per_second']:.0f}; per second:", [x['entries'] for x in d['per_second']])
PY
python3 "$(dirname "$0")/rocksdb_log_summary.py" "$R/data/db/LOG"
