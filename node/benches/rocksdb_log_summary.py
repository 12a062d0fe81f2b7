"""What RocksDB's flushes and compactions wrote and cost, per column family, from a node's
RocksDB LOG (its EVENT_LOG_v1 lines), and the write stalls it logged.
Usage: python3 rocksdb_log_summary.py <data dir>/db/LOG"""
import collections
import json
import re
import sys

family_of_job = {}
written = collections.Counter()
compactions = collections.Counter()
compaction_cpu = collections.Counter()
compaction_out = collections.Counter()
stalls = collections.Counter()
for line in open(sys.argv[1], errors='replace'):
    m = re.search(r'\[([\w-]+)\] \[JOB (\d+)\] (Compacting|Flushing)', line)
    if m:
        family_of_job[int(m.group(2))] = m.group(1)
    m = re.search(r'\[([\w-]+)\] Stalling writes because (.*) rate', line)
    if m:
        stalls[(m.group(1), re.sub(r'\d+', 'N', m.group(2)))] += 1
    if 'EVENT_LOG_v1' not in line:
        continue
    event = json.loads(line[line.index('{'):])
    if event['event'] == 'table_file_creation':
        written[event['cf_name']] += event['file_size']
    elif event['event'] == 'compaction_finished':
        family = family_of_job.get(event['job'], '?')
        compactions[family] += 1
        compaction_cpu[family] += event['compaction_time_cpu_micros']
        compaction_out[family] += event['total_output_size']
print('column family: SST bytes written (flushes and compactions), compactions, their CPU')
for family in sorted(written, key=lambda f: -written[f]):
    if written[family] < 1e6:
        continue
    print(f'  {family}: {written[family] / 1e6:.0f} MB written; {compactions[family]} compactions, '
          f'{compaction_cpu[family] / 1e6:.1f} s CPU, {compaction_out[family] / 1e6:.0f} MB out')
for (family, why), n in sorted(stalls.items()):
    print(f'  write stalls in {family}: {n} × "{why}"')
