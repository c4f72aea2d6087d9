#!/usr/bin/env python3
"""Latency against offered rate, service and pgbench side by side, from a
bench result JSON: bench/plot.py <result.json> <out.png>."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

result = json.load(open(sys.argv[1]))
fig, ax = plt.subplots(figsize=(8, 5))
for side, label, style in (("service", "command-service Transfer (gRPC)", "o-"), ("pgbench", "pgbench, same SQL", "s--")):
    pts = [(p[side]["offered_rate"], p[side]["p50_ms"], p[side]["p99_ms"]) for p in result["sweep"]]
    rates = [p[0] for p in pts]
    ax.plot(rates, [p[2] for p in pts], style, label=f"{label} p99")
    ax.plot(rates, [p[1] for p in pts], style, alpha=0.4, label=f"{label} p50")
ax.set_xlabel("offered rate (transfers/s, open loop)")
ax.set_ylabel("latency from scheduled send (ms)")
ax.set_yscale("log")
ax.set_title(f"bankmesh transfers vs pgbench — {result['date'][:19]}")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
