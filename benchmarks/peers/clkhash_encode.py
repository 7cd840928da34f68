"""Peer measurement: Bloom-filter encoding with clkhash (Data61), for comparison with fedlink's encoder.

Runs in its own virtual environment, because clkhash pins ``cryptography<41`` while fedlink needs a
newer one::

    python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install clkhash
    /tmp/peers-venv/bin/python benchmarks/peers/clkhash_encode.py records.csv

The input is a CSV file of *normalised* identifiers with a header naming the columns below (clkhash
does no normalisation, so fedlink's normaliser has already run). The clkhash schema mirrors
fedlink's default Bloom features and bits per token (1024-bit filter, bigrams of first and last
name, whole-value date parts, sex and postcode parts), without record-level salting or XOR folding,
which clkhash does not offer. Encoding runs in this one process (``max_workers=1``). Prints one line
of JSON: records, seconds, records_per_s and the clkhash version.
"""

from __future__ import annotations

import base64
import csv
import json
import sys
import time
from importlib.metadata import version

from clkhash import clk
from clkhash.schema import from_json_dict

COLUMNS = ("first_formal", "last", "dob_day", "dob_month", "sex", "postcode_sector", "postcode")
BITS_PER_TOKEN = {"first_formal": 8, "last": 8, "dob_day": 30, "dob_month": 30, "sex": 10, "postcode_sector": 20}
BITS_PER_TOKEN["postcode"] = 40
BIGRAMS = {"first_formal", "last"}


def feature(name: str) -> dict[str, object]:
    comparison = {"type": "ngram", "n": 2, "positional": False} if name in BIGRAMS else {"type": "exact"}
    return {
        "identifier": name,
        "format": {"type": "string", "encoding": "utf-8"},
        "hashing": {
            "comparison": comparison,
            "strategy": {"bitsPerToken": BITS_PER_TOKEN[name]},
            "hash": {"type": "blakeHash"},
            "missingValue": {"sentinel": ""},
        },
    }


SCHEMA = {
    "version": 3,
    "clkConfig": {
        "l": 1024,
        "kdf": {
            "type": "HKDF",
            "hash": "SHA256",
            "salt": base64.b64encode(b"fedlink peer benchmark salt").decode(),
            "info": "",
            "keySize": 64,
        },
    },
    "features": [feature(name) for name in COLUMNS],
}


def main(path: str) -> None:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [[row[name] for name in COLUMNS] for row in reader]
    schema = from_json_dict(SCHEMA)
    started = time.perf_counter()
    filters = clk.generate_clks(rows, schema, "fedlink-peer-secret", validate=False, max_workers=1)
    seconds = time.perf_counter() - started
    assert len(filters) == len(rows)
    print(
        json.dumps(
            {
                "records": len(rows),
                "seconds": round(seconds, 4),
                "records_per_s": round(len(rows) / seconds, 1),
                "clkhash": version("clkhash"),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
