#!/usr/bin/env python3
"""check_outputs.py <output file> <python expression over docs>...: the JSON
documents a walk-through printed, one after another, as `docs`; every
expression must be true of them (the walk-through tests, 46 and 60)."""
import json
import sys

text = open(sys.argv[1]).read()
docs, i, dec = [], 0, json.JSONDecoder()
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    doc, i = dec.raw_decode(text, i)
    docs.append(doc)
for expr in sys.argv[2:]:
    if not eval(expr, {"docs": docs}):
        sys.exit(f"not true of the walk-through's output: {expr}\n{json.dumps(docs[-3:], indent=1)}")
