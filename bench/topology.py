#!/usr/bin/env python3
"""The HA topology beside the single-node one (`scripts/bench --ha`): reads
each run's JSON (topology single, ha, ha-r1; one per repetition) and writes
<out>/<date>-ha.json and .md with medians (min-max) and the ratios:

- ha / single: the mesh's transfers/s and p99 on the HA topology against one
  node (synchronous standby, three-replica stream, Sentinel-watched Redis);
- sync replication: pgbench on the cluster's primary committing with the
  standby against committing locally (same SQL, same servers, same run);
- R3: the mesh on the cluster with a three-replica stream against one replica.

    python3 bench/topology.py OUT_DIR RUN.json...
"""
import datetime
import json
import pathlib
import statistics
import sys


def spread(values):
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main():
    out_dir = pathlib.Path(sys.argv[1])
    runs = [json.load(open(p)) for p in sys.argv[2:]]
    by = {}
    for r in runs:
        by.setdefault(r["topology"], []).append(r)
    reps = min(len(v) for v in by.values())

    def per_rep(topology, path):
        return [path(by[topology][i]) for i in range(reps)]

    tps = lambda r: r["mesh"]["per_second"]
    p99 = lambda r: r["mesh"]["p99_ms"]
    ratios = {
        "ha_over_single_transfers": [a / b for a, b in zip(per_rep("ha", tps), per_rep("single", tps))],
        "ha_over_single_p99": [a / b for a, b in zip(per_rep("ha", p99), per_rep("single", p99))],
        "sync_replication_pgbench": [
            r["pgbench"]["per_second"] / r["pgbench_local_commit"]["per_second"] for r in by["ha"][:reps]
        ],
        "r3_over_r1_transfers": [a / b for a, b in zip(per_rep("ha", tps), per_rep("ha-r1", tps))],
    }
    doc = {
        "repetitions": reps,
        "ratios": {k: spread(v) for k, v in ratios.items()},
        "figures": {
            t: {
                "mesh_transfers_per_second": spread(per_rep(t, tps)),
                "mesh_p99_ms": spread(per_rep(t, p99)),
                "pgbench_per_second": spread(per_rep(t, lambda r: r["pgbench"]["per_second"])),
                "pgbench_p99_ms": spread(per_rep(t, lambda r: r["pgbench"]["p99_ms"])),
                "pgbench_local_commit_per_second": spread(per_rep(t, lambda r: r["pgbench_local_commit"]["per_second"])),
                "stream_replicas": by[t][0]["stream_replicas"],
            }
            for t in by
        },
        "runs": runs,
    }
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stamp}-ha.json").write_text(json.dumps(doc, indent=1))
    f = lambda s: f"{s['median']} ({s['min']}–{s['max']})"
    lines = [
        f"# HA topology beside one node ({reps} interleaved repetitions, medians (min–max))",
        "",
        "| topology | mesh transfers/s | mesh p99 ms | pgbench/s | pgbench p99 ms | pgbench/s, local commit | stream replicas |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, v in doc["figures"].items():
        lines.append(
            f"| {t} | {f(v['mesh_transfers_per_second'])} | {f(v['mesh_p99_ms'])} | {f(v['pgbench_per_second'])} "
            f"| {f(v['pgbench_p99_ms'])} | {f(v['pgbench_local_commit_per_second'])} | {v['stream_replicas']} |"
        )
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {f(v)} |" for k, v in doc["ratios"].items()]
    (out_dir / f"{stamp}-ha.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
