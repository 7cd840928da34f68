"""Measurements of a node backend in a process of its own, so that its peak memory is its own:
``python backend_worker.py CONFIG.json`` loads the node's data (timed apart: for Spark it starts the
JVM), runs each operation once and prints one JSON line: the seconds of each, the process's peak
resident memory after each, and checks.

- query: ``SELECT grp, COUNT(*), SUM(value) FROM events GROUP BY grp`` through the node's fixed
  operator (the plan a coordinator sends);
- encode: the linkage encoding pass: people streamed out of the backend in batches, normalised and
  encoded (keyed match keys, Bloom filters, blocking keys), the record map written to a Parquet file.

Used by ``test_bench_backends.py``.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def main(config_path: str) -> None:
    from fedlink.language.sql import plan_query
    from fedlink.linkage.concepts import normalise_concepts
    from fedlink.linkage.encode import EncodedRecords, concatenate
    from fedlink.linkage.fields import derive_spec_keys, encode_spec
    from fedlink.linkage.spec import load_spec
    from fedlink.node.config import NodeConfig
    from fedlink.node.data import NodeData
    from fedlink.node.linkage import LinkRequest, NodeLinkage
    from fedlink.plan.catalogue import FederationCatalogue, NodeStatus

    def peak_mib() -> float:
        """This process's own high-water mark of resident memory (VmHWM; ru_maxrss would also count the
        parent's memory at fork, which Linux carries across exec)."""
        status = Path("/proc/self/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    config = NodeConfig.model_validate_json(Path(config_path).read_text())
    report: dict[str, float | int] = {}
    started = time.perf_counter()
    data = NodeData(config)
    report["load_seconds"] = time.perf_counter() - started
    try:
        catalogue = FederationCatalogue(nodes=(NodeStatus(node=config.name, live=True, catalogue=data.catalogue),))
        plan = plan_query("SELECT grp, COUNT(*) AS n, SUM(value) AS total FROM events GROUP BY grp", catalogue)
        started = time.perf_counter()
        answer = data.aggregate(plan)
        report["query_seconds"] = time.perf_counter() - started
        report["query_rows"] = int(sum(answer.vectors["rows:*"]))
        report["query_peak_rss_mib"] = peak_mib()

        spec = load_spec().resolve(set(config.tables[0].linkage_mapping().concepts))  # as a coordinator sends it
        keys = derive_spec_keys(b"a benchmark link secret, 32 byte", "bench", spec)
        linkage = NodeLinkage(config, data, Path(tempfile.mkdtemp()))
        plan = linkage._plan(LinkRequest("bench", "bench-analyst", spec.text, spec.hash))
        parts: list[EncodedRecords] = []
        started = time.perf_counter()
        linkage._people(
            plan,
            Path(tempfile.mkdtemp()),
            lambda b: parts.append(encode_spec(normalise_concepts(b, plan.options), spec, keys)),
        )
        report["encode_people"] = concatenate(parts).count
        report["encode_seconds"] = time.perf_counter() - started
        report["encode_peak_rss_mib"] = peak_mib()
    finally:
        data.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
