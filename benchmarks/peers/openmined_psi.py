"""Peer benchmark: openmined-psi (ECDH PSI in C++ over P-256, OpenMined) on two sets of N items with
half of them in common, both parties in this one process, as the fedlink PSI benchmark runs.

Runs in its own Python (openmined-psi pins protobuf 6.30.2, which clashes with flwr's pin):

    python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install openmined-psi
    /tmp/peers-venv/bin/python benchmarks/peers/openmined_psi.py 100000

Prints one JSON line: items per party, seconds for the whole protocol, and the intersection size.
"""

from __future__ import annotations

import json
import sys
import time

import private_set_intersection.python as psi


def main(n: int) -> None:
    server_items = [f"person-{i}" for i in range(n)]
    client_items = [f"person-{i}" for i in range(n // 2, n // 2 + n)]
    started = time.perf_counter()
    server = psi.server.CreateWithNewKey(True)
    client = psi.client.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(client_items), server_items, psi.DataStructure.RAW)
    request = client.CreateRequest(client_items)
    response = server.ProcessRequest(request)
    common = client.GetIntersection(setup, response)
    seconds = time.perf_counter() - started
    print(json.dumps({"items": n, "seconds": seconds, "intersection": len(common)}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
