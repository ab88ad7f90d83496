#!/usr/bin/env python3
"""Parses a Prometheus text exposition with the official client's parser, for tests/it/metrics.rs.

Usage: metrics_parse.py MODELS_DIR < exposition → JSON {family: {"type": T, "samples":
[[name, labels, value], ...]}} on stdout. Exits non-zero (with the parser's error) on anything the
parser rejects. The package lives in MODELS_DIR/.cache/pyref (scripts/test installs it).
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(sys.argv[1], ".cache", "pyref"))
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    if family.name in out:
        sys.exit(f"metrics_parse.py: family {family.name} appears twice")
    out[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value if math.isfinite(s.value) else str(s.value)] for s in family.samples],
    }
json.dump(out, sys.stdout)
