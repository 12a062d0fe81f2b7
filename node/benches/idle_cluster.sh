#!/usr/bin/env bash
# Idle CPU of a three-node cluster with N shards (issue 22's bound: under 5 % of this machine):
# `veil cluster up --nodes 3 -- --shards N`, 20 s to settle (elections, leader balance), then each
# process's utime+stime over 30 s. Run from the repository: `bash node/benches/idle_cluster.sh 16`
# (release build first).
set -euo pipefail
SHARDS=${1:-16}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/veil}
D=$(mktemp -d /var/tmp/veil-idle.XXXX)
"$BIN" cluster up --nodes 3 --dir "$D" --base-port 19700 -- --shards "$SHARDS" > "$D/up.out" 2>&1 &
up=$!
trap 'kill -TERM $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$D"' EXIT
until grep -q "cluster ready" "$D/up.out" 2>/dev/null; do
  kill -0 $up 2>/dev/null || { cat "$D/up.out"; exit 1; }
  sleep 0.5
done
sleep 20
pids=$(pgrep -f "serve.*$D/node-" | tr '\n' ' ')
tick=$(getconf CLK_TCK)
b=$(for p in $pids; do awk '{print $14+$15}' /proc/$p/stat; done | tr '\n' ' ')
sleep 30
a=$(for p in $pids; do awk '{print $14+$15}' /proc/$p/stat; done | tr '\n' ' ')
python3 - "$b" "$a" "$tick" "$SHARDS" <<'PY'
import sys
b=[float(x) for x in sys.argv[1].split()]; a=[float(x) for x in sys.argv[2].split()]; t=float(sys.argv[3])
per=[(y-x)/t/30*100 for x,y in zip(b,a)]
print(f"{sys.argv[4]} shards: " + ", ".join(f"{p:.2f} %" for p in per) + f" of a core per node; {sum(per)/2:.2f} % of the machine")
PY
