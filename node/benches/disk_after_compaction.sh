#!/usr/bin/env bash
# Bytes on disk per raw NDJSON byte after 30 s of template ingest and an admin compaction, by
# part (RocksDB, tantivy; snapshot files too in builds before format 6). Usage: disk_after_compaction.sh <release veil binary> <scratch dir> [more veil bench ingest flags, e.g. --replay FILE]
# (the scratch dir is deleted first). Uses 127.0.0.1:7720/7721. See BENCHMARKS.md.
set -u
B=$1; R=$2; shift 2; rm -rf $R; mkdir -p $R
$B serve --data-dir $R/data --http-addr 127.0.0.1:7720 --grpc-addr 127.0.0.1:7721 > $R/node.out 2> $R/node.err &
pid=$!
for i in $(seq 1 300); do grep -q "veil ready" $R/node.out && break; sleep 0.2; done
$B bench ingest --target 127.0.0.1:7720 --duration 30s --concurrency 4 --batch 1000 --json "$@" > $R/ingest.json 2>/dev/null
curl -s -X POST 127.0.0.1:7720/api/v1/admin/compact > $R/compact.json
kill $pid; wait $pid
python3 - "$R" <<'PY'
import json,sys,os,subprocess
R=sys.argv[1]; d=json.load(open(R+'/ingest.json'))
raw=d['entries_acknowledged']*d['bytes_per_entry']
def du(p): return int(subprocess.check_output(['du','-sb',p]).split()[0])
total=du(R+'/data')
parts={p:du(os.path.join(R,'data',p)) for p in os.listdir(R+'/data')}
print(f"entries/s {d['entries_per_second']:.0f} acked {d['entries_acknowledged']} raw {raw/1e6:.1f} MB total {total/1e6:.1f} MB ratio {total/raw:.3f}")
print({k: round(v/raw,3) for k,v in parts.items()})
PY
