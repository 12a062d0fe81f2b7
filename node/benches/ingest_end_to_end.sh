#!/usr/bin/env bash
# The ingest measurements of BENCHMARKS.md (issue 8) on one fresh release node: a 60 s run as
# fast as it goes, 30 s at 50,000/s (perf recording 6 s of it), 30 s at 40,000/s, compaction,
# and the in-process tantivy baseline. VEIL_BIN (default target/release/veil) and BENCH_DIR (default /var/tmp/b8) override.
set -euo pipefail
B=${VEIL_BIN:-target/release/veil}
R=${BENCH_DIR:-/var/tmp/b8}
rm -rf $R; mkdir -p $R
VEIL_KEY_FILE=$R/keys.toml $B serve --data-dir $R/data --http-addr 127.0.0.1:17440 --grpc-addr 127.0.0.1:17441 > $R/serve.log 2>&1 &
PID=$!
for i in $(seq 1 300); do grep -q "veil ready" $R/serve.log && break; sleep 0.2; done
T=127.0.0.1:17440
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
mask() { curl -s $T/metrics | awk '/^veil_mask_seconds_total/ {print $2}'; }
c0=$(cpu); m0=$(mask)
$B bench ingest --target $T --duration 60s --concurrency 4 --batch 1000 --json > $R/max60.json 2> $R/max60.err
c1=$(cpu); m1=$(mask)
echo "{\"cpu_ticks\": $((c1-c0)), \"clk_tck\": $(getconf CLK_TCK), \"mask_seconds\": $(echo "$m1 - $m0" | bc -l)}" > $R/max60_cpu.json
# System-wide: `perf -p` misses the node's short-lived threads on this VM. Set PERF=0 to skip.
if [ "${PERF:-1}" = 1 ]; then
  perf record -F 199 --call-graph dwarf,16384 -a -o $R/perf.data -- sleep 6 > $R/perf.log 2>&1 &
  PERF_PID=$!
fi
$B bench ingest --target $T --duration 30s --concurrency 8 --batch 500 --rate 50000 --json > $R/rate50k.json 2> $R/rate50k.err
[ -n "${PERF_PID:-}" ] && { wait $PERF_PID || true; }
$B bench ingest --target $T --duration 30s --concurrency 8 --batch 500 --rate 40000 --json > $R/rate40k.json 2> $R/rate40k.err
curl -s $T/metrics > $R/metrics.txt
du -sb $R/data > $R/du_before.txt
curl -s -X POST $T/api/v1/admin/compact > $R/compact.json
du -sb $R/data > $R/du_after.txt
du -sb $R/data/* > $R/du_parts.txt
kill -TERM $PID; wait $PID || true
$B bench index --entries 1000000 --json > $R/index.json 2> $R/index.err
echo done > $R/done
