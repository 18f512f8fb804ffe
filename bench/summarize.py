"""Markdown tables from bench/results/*.json, for docs/performance.md.

    python -m bench.summarize
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine_line(d: dict) -> str:
    m, load = d["machine"], d.get("load_average_1_5_15", {}).get("before")
    text = f"{m['cpu']}, {m['cores']} cores, ONNX Runtime {m['onnxruntime']}, {m['date']}"
    return text + (f", load average {load[0]:.2f} at start" if load else "")


def main() -> None:
    out = sys.stdout
    if d := load("compare_servers"):
        out.write(f"Servers ({machine_line(d)}); req/s at saturation, p50/p99 ms at half that rate:\n\n")
        servers = d["servers"]
        sizes = [k for k in next(iter(servers.values())) if k.isdigit()]
        out.write("| server | " + " | ".join(f"{n} cand. req/s | p50 / p99" for n in sizes) + " |\n")
        out.write("|---|" + "---|---|" * len(sizes) + "\n")
        for name, r in servers.items():
            cells = []
            for n in sizes:
                sat, half = r[n]["saturation"], r[n]["half_load"]
                cells += [f"{sat['throughput_rps']:.0f}", f"{half['p50_ms']:.1f} / {half['p99_ms']:.1f}"]
            out.write(f"| {name} | " + " | ".join(cells) + " |\n")
        for engine in ("onnxruntime", "pytorch"):
            cells = [c for n in sizes for c in (f"{d['engines_alone_runs_per_s'][n][engine]:.0f}", "")]
            out.write(f"| ({engine} alone, no server; runs/s) | " + " | ".join(cells) + " |\n")
        out.write("\n")
    if d := load("rank_latency"):
        out.write(f"Service vs bare ONNX Runtime, same batch, sequential ({machine_line(d)}); p50 ms:\n\n")
        out.write("| candidates | bare ORT | in-process service | ratio | HTTP | ratio |\n|---|---|---|---|---|---|\n")
        for n, bare in d["bare_ort"].items():
            s, h = d["in_process"][n]["p50_ms"], d["http"][n]["p50_ms"]
            out.write(f"| {n} | {bare['p50_ms']:.2f} | {s:.2f} | {s / bare['p50_ms']:.2f}x | {h:.2f} | {h / bare['p50_ms']:.2f}x |\n")
        out.write("\n")
    if d := load("train_throughput"):
        out.write(f"Training samples/s, batch {d['batch_size']} ({machine_line(d)}):\n\n")
        out.write("| torch threads | ple-ranker | torch-rechub | ratio |\n|---|---|---|---|\n")
        for t, ours in d["ours"].items():
            theirs = d["torch_rechub"][t].get("samples_per_second")
            out.write(f"| {t} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |\n" if theirs else f"| {t} | {ours:,.0f} | n/a | |\n")


if __name__ == "__main__":
    main()
