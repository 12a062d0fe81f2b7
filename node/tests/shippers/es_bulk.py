"""Sends documents to a Veil node with the official Python Elasticsearch client's bulk helper.

Usage: es_bulk.py URL INDEX COUNT

The client checks that the server is Elasticsearch (`X-Elastic-Product`), sends its versioned
`compatible-with` content type, and gzips bodies (`http_compress=True`). Documents are ECS:
document i has `_id` "doc-i", "@timestamp", `log.level`, `message` "payment i by
user{i}@example.com", `service.name` INDEX-svc for even i (odd ones take the index name),
`host.name`, and a free field. The same actions are then sent again, as a shipper's retry would
(`index` answers 200 noop), and once more as `create` (409 for each). Prints one JSON line with
the counts each round saw.
"""

import json
import sys
from datetime import datetime, timezone

from elasticsearch import Elasticsearch, helpers

url, index, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
es = Elasticsearch(url, http_compress=True, request_timeout=30)
info = es.info()


def actions(op):
    now = datetime.now(timezone.utc)
    for i in range(count):
        doc = {
            "_op_type": op,
            "_index": index,
            "_id": f"doc-{i}",
            "@timestamp": now.isoformat(),
            "log": {"level": "error" if i % 4 == 0 else "info"},
            "message": f"payment {i} by user{i}@example.com",
            "host": {"name": "es-host"},
            "cart": {"items": i % 7},
        }
        if i % 2 == 0:
            doc["service"] = {"name": f"{index}-svc"}
        yield doc


first = helpers.bulk(es, actions("index"), chunk_size=50, stats_only=True)
again = helpers.bulk(es, actions("index"), chunk_size=50, stats_only=True)
created = helpers.bulk(es, actions("create"), chunk_size=50, raise_on_error=False, stats_only=False)
statuses = sorted({list(item.values())[0]["status"] for item in created[1]})
print(json.dumps({"version": info["version"]["number"], "first": first, "again": again,
                  "create_ok": created[0], "create_error_statuses": statuses,
                  "create_errors": len(created[1])}))
