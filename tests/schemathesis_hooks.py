"""Schemathesis hooks for tests/tests/openapi.rs (loaded through SCHEMATHESIS_HOOKS).

The OpenAPI document describes an `application/x-ndjson` ingest body as the array of the
messages its lines hold (OpenAPI has no schema for line framing); this serializer writes such
an array as NDJSON: one JSON value per line. Anything else (negative tests generate numbers,
strings, objects...) is written as a single line, which the server must reject.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, list):
        return "".join(json.dumps(v) + "\n" for v in value).encode()
    return (json.dumps(value) + "\n").encode()
