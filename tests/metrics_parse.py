#!/usr/bin/env python3
"""Parses `/metrics` expositions with Python's prometheus_client (a parser independent of the
Rust library that wrote them) and prints what it read as JSON, for tests/tests/metrics.rs.

Usage: metrics_parse.py PROMETHEUS_TEXT_FILE OPENMETRICS_FILE

Exits non-zero (with the reason on stderr) when either file does not parse, or when a family
appears twice or a sample falls outside any declared family (the Prometheus text parser turns
such samples into extra "untyped" families instead of failing: both mean a family's samples
were not kept together). Prints {"prometheus": [...], "openmetrics": [...]}, each a list of
{"name", "type", "samples": [{"name", "labels", "value"}]} in exposition order.
"""

import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus


def families(parse, text, fmt):
    out = []
    seen = set()
    for family in parse(text):
        if family.name in seen:
            raise SystemExit(f"{fmt}: family {family.name} appears twice (samples split)")
        seen.add(family.name)
        if family.type in ("untyped", "unknown"):
            raise SystemExit(
                f"{fmt}: {family.name} has no declared type (a sample outside its family?)"
            )
        out.append(
            {
                "name": family.name,
                "type": family.type,
                "samples": [
                    {"name": s.name, "labels": dict(s.labels), "value": s.value}
                    for s in family.samples
                ],
            }
        )
    return out


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        prometheus = f.read()
    with open(sys.argv[2], encoding="utf-8") as f:
        openmetrics = f.read()
    try:
        result = {
            "prometheus": families(parse_prometheus, prometheus, "prometheus text"),
            "openmetrics": families(parse_openmetrics, openmetrics, "openmetrics"),
        }
    except ValueError as e:
        raise SystemExit(f"does not parse: {e}")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
