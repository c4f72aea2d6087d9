#!/usr/bin/env python3
"""Plots from a bench result JSON: bench/plot.py <result.json> <out.png>.

Left: each headline ratio per repetition against its target. Middle:
latency against offered rate, service and pgbench side by side. Right
(BENCH_LONG runs): throughput, p99 and disk bytes per transfer per minute."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

result = json.load(open(sys.argv[1]))
long = result.get("long") or []
fig, axes = plt.subplots(1, 3 if long else 2, figsize=(17 if long else 12, 5))

ax = axes[0]
targets = [
    ("uniform_ratio", "uniform ÷ pgbench", 1.2),
    ("hot_ratio", "hot ÷ pgbench hot", 1.5),
    ("get_balance_ratio", "GetBalance ÷ no-op", 0.85),
    ("get_balance_p99_ratio", "GetBalance p99 ÷ no-op p99", 1.5),
]
for x, (key, label, goal) in enumerate(targets):
    each = result["spread"][key]["each"]
    ax.scatter([x] * len(each), each, color="tab:blue", zorder=3)
    ax.hlines(result["spread"][key]["median"], x - 0.3, x + 0.3, color="tab:blue")
    ax.hlines(goal, x - 0.3, x + 0.3, color="tab:red", linestyles="dashed")
ax.set_xticks(range(len(targets)))
ax.set_xticklabels([t[1] for t in targets], rotation=20, fontsize=8)
ax.set_title("ratios per repetition (line: median, dashed: target)", fontsize=9)
ax.grid(True, alpha=0.3)

ax = axes[1]
for side, label, style in (("service", "command-service Transfer (gRPC)", "o-"), ("pgbench", "pgbench, same SQL", "s--")):
    pts = [(p[side]["offered_rate"], p[side]["p50_ms"], p[side]["p99_ms"]) for p in result["sweep"]]
    rates = [p[0] for p in pts]
    ax.plot(rates, [p[2] for p in pts], style, label=f"{label} p99")
    ax.plot(rates, [p[1] for p in pts], style, alpha=0.4, label=f"{label} p50")
ax.set_xlabel("offered rate (transfers/s, open loop)")
ax.set_ylabel("latency from scheduled send (ms)")
ax.set_yscale("log")
ax.set_title(f"transfers vs pgbench — {result['date'][:19]}", fontsize=9)
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=7)

if long:
    ax = axes[2]
    minutes = [m["minute"] for m in long]
    ax.plot(minutes, [m["per_second"] for m in long], "o-", label="transfers/s")
    ax.set_xlabel("minute at half load")
    ax.set_ylabel("transfers/s")
    ax2 = ax.twinx()
    ax2.plot(minutes, [m["p99_ms"] for m in long], "s--", color="tab:orange", label="p99 ms")
    ax2.plot(minutes, [m["disk_bytes_per_transfer"] for m in long], "^:", color="tab:green", label="disk bytes/transfer")
    ax2.set_ylabel("p99 (ms) · disk bytes per transfer")
    ax.set_title("BENCH_LONG", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    ax.grid(True, alpha=0.3)

fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
