"""Schemathesis hooks for tests/tests/openapi.rs (loaded through SCHEMATHESIS_HOOKS).

The OpenAPI document describes an `application/x-ndjson` ingest body like a JSON one (OpenAPI
has no schema for line framing): one message (a one-line body) or the array of the messages
its lines hold. This serializer writes an array as NDJSON, one JSON value per line, and
anything else as a single line: an object is then a one-line body (valid when the object is a
valid message), and the numbers, strings... that negative tests generate are lines the server
must reject.
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
