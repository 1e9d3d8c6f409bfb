"""
Turning benchmark runs into medians, same-run ratios, the issue's targets,
a table, JSON files and a PNG chart.

Ratios are always "how many times better Kiwi is": Kiwi / baseline for
frames per second, baseline / Kiwi for latency and memory. Each one is the
median of per-repetition ratios (repetition i of Kiwi against repetition i
of the baseline, which ran right next to it).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

IMPL_ORDER = ("kiwi", "websockets", "autobahn")
LABELS = {"kiwi": "Kiwi", "websockets": "websockets bridge", "autobahn": "naive Autobahn"}
BASELINES = ("websockets", "autobahn")



LOAD_CLIENT_BUSY = 0.5
"""
The load client's share of a core above which, with one worker, the
workers scenario cannot show a second worker's gain on a 2-core machine.
"""

def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _per_cpu(run: dict[str, Any]) -> float | None:
    """
    Delivered frames per second of server CPU time (older result files
    lack the field; it is derived from the CPU seconds then).
    """
    value = run.get("frames_per_cpu_s")
    if value is None and run.get("cpu", {}).get("server_s"):
        value = round(run["delivered"] / run["cpu"]["server_s"], 1)
    return value


def _ok(run: dict[str, Any]) -> bool:
    return "error" not in run and "skipped" not in run


def _ratios(
    kiwi: dict[int, float | None], other: dict[int, float | None], kiwi_over_other: bool
) -> tuple[float | None, list[float]]:
    per_rep = []
    for rep in sorted(set(kiwi) & set(other)):
        a, b = kiwi[rep], other[rep]
        if a and b and a > 0 and b > 0:
            per_rep.append(round(a / b if kiwi_over_other else b / a, 3))
    return _median(per_rep), per_rep


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Medians and ratios per scenario and size.
    """
    summary: dict[str, Any] = {}

    # Fan-out floods and paced latency: keyed by size.
    for scenario in ("flood", "latency"):
        groups: dict[str, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
        for run in runs:
            if run.get("scenario") != scenario or not _ok(run):
                continue
            key = str(run["conns"]) if scenario == "flood" else f"{run['conns']}x{run['rate']:g}"
            groups[key][run["impl"]][run["rep"]] = run
        section: dict[str, Any] = {}
        for key, by_impl in groups.items():
            entry: dict[str, Any] = {"impls": {}, "vs": {}}
            for impl, reps in by_impl.items():
                fps = {rep: r["frames_per_s"] for rep, r in reps.items()}
                per_cpu = {rep: _per_cpu(r) for rep, r in reps.items()}
                p50 = {rep: r["latency_ms"]["p50"] for rep, r in reps.items()}
                p99 = {rep: r["latency_ms"]["p99"] for rep, r in reps.items()}
                entry["impls"][impl] = {
                    "frames_per_s": _median(list(fps.values())),
                    "frames_per_s_reps": [fps[r] for r in sorted(fps)],
                    "frames_per_cpu_s": _median(list(per_cpu.values())),
                    "frames_per_cpu_s_reps": [per_cpu[r] for r in sorted(per_cpu)],
                    "p50_ms": _median(list(p50.values())),
                    "p99_ms": _median(list(p99.values())),
                    "p50_ms_reps": [p50[r] for r in sorted(p50)],
                    "p99_ms_reps": [p99[r] for r in sorted(p99)],
                    "server_util": _median([r["cpu"]["server_util"] for r in reps.values()]),
                    "client_util": _median([r["cpu"]["client_util"] for r in reps.values()]),
                    "loss": sum(r["loss"] for r in reps.values()),
                }
            kiwi = by_impl.get("kiwi", {})
            for base in BASELINES:
                other = by_impl.get(base)
                if not kiwi or not other:
                    continue
                fps_ratio, fps_reps = _ratios(
                    {k: v["frames_per_s"] for k, v in kiwi.items()},
                    {k: v["frames_per_s"] for k, v in other.items()},
                    True,
                )
                cpu_ratio, cpu_reps = _ratios(
                    {k: _per_cpu(v) for k, v in kiwi.items()},
                    {k: _per_cpu(v) for k, v in other.items()},
                    True,
                )
                p50_ratio, p50_reps = _ratios(
                    {k: v["latency_ms"]["p50"] for k, v in kiwi.items()},
                    {k: v["latency_ms"]["p50"] for k, v in other.items()},
                    False,
                )
                p99_ratio, p99_reps = _ratios(
                    {k: v["latency_ms"]["p99"] for k, v in kiwi.items()},
                    {k: v["latency_ms"]["p99"] for k, v in other.items()},
                    False,
                )
                entry["vs"][base] = {
                    "frames_per_s": fps_ratio,
                    "frames_per_s_reps": fps_reps,
                    "frames_per_cpu_s": cpu_ratio,
                    "frames_per_cpu_s_reps": cpu_reps,
                    "p50": p50_ratio,
                    "p50_reps": p50_reps,
                    "p99": p99_ratio,
                    "p99_reps": p99_reps,
                }
            section[key] = entry
        summary[scenario] = section

    # Idle memory.
    idle: dict[str, Any] = {}
    groups_idle: dict[str, dict[str, dict[int, float | None]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        if run.get("scenario") == "idle" and _ok(run) and "per_conn_kib" in run:
            groups_idle[str(run["conns"])][run["impl"]][run["rep"]] = run["per_conn_kib"]
    for key, idle_by_impl in groups_idle.items():
        entry = {"impls": {}, "vs": {}}
        for impl, kib in idle_by_impl.items():
            entry["impls"][impl] = {
                "per_conn_kib": _median(kib.values()),
                "per_conn_kib_reps": [kib[r] for r in sorted(kib)],
            }
        for base in BASELINES:
            if "kiwi" in idle_by_impl and base in idle_by_impl:
                ratio, per_rep = _ratios(idle_by_impl["kiwi"], idle_by_impl[base], False)
                entry["vs"][base] = {"per_conn_kib": ratio, "per_conn_kib_reps": per_rep}
        idle[key] = entry
    summary["idle"] = idle

    # Workers.
    skipped = [r for r in runs if r.get("scenario") == "workers" and "skipped" in r]
    if skipped:
        summary["workers"] = {"skipped": skipped[0]["skipped"]}
    else:
        by_count: dict[int, dict[int, float | None]] = defaultdict(dict)
        client_util: list[float] = []
        for run in runs:
            if run.get("scenario") == "workers" and _ok(run):
                by_count[run["workers"]][run["rep"]] = run["frames_per_s"]
                if run["workers"] == 1:
                    client_util.append(run["cpu"]["client_util"])
        if by_count:
            ratio, per_rep = _ratios(by_count.get(2, {}), by_count.get(1, {}), True)
            summary["workers"] = {
                "frames_per_s": {str(k): _median(list(v.values())) for k, v in by_count.items()},
                "ratio_2_vs_1": ratio,
                "ratio_reps": per_rep,
                # How busy the load client already was with one worker:
                # past about half a core on a 2-core machine it is what
                # limits a second worker (docs/performance.md).
                "client_util_1_worker": _median(client_util) if client_util else None,
            }

    capacity = [r for r in runs if r.get("scenario") == "capacity"]
    if capacity:
        summary["capacity"] = {
            "frames_per_s": capacity[0]["frames_per_s"],
            "loss": capacity[0]["loss"],
            "client_cpu_per_frame_us": capacity[0].get("client_cpu_per_frame_us"),
        }

    delivery = [r for r in runs if r.get("scenario") in ("flood", "latency", "workers") and _ok(r)]
    summary["loss"] = {
        "runs": len(delivery),
        "lossy": [
            f"{r['scenario']} {r['impl']}{' workers=' + str(r['workers']) if 'workers' in r else ''} "
            f"{r['conns']} clients rep {r['rep']}: {r['delivered']}/{r['expected']}"
            for r in delivery
            if r["loss"] != 0 or r.get("failed_connections")
        ],
        "errors": [f"{r.get('scenario')} {r.get('impl')} rep {r.get('rep')}: {r['error'][:200]}" for r in runs if "error" in r],
    }
    return summary


def targets(summary: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The issue's targets next to what this run measured. C{met} is C{None}
    when the run did not measure it.
    """
    found: list[dict[str, Any]] = []

    def add(name: str, goal: str, measured: float | None, met: bool | None, unit: str = "") -> None:
        text = "not measured" if measured is None else f"{measured:,.2f}{unit}" if measured < 1000 else f"{measured:,.0f}{unit}"
        found.append({"target": name, "goal": goal, "measured": measured, "measured_text": text, "met": met})

    flood = summary.get("flood", {}).get("1000", {})
    ws = flood.get("vs", {}).get("websockets", {}).get("frames_per_s")
    ab = flood.get("vs", {}).get("autobahn", {}).get("frames_per_s")
    fps = flood.get("impls", {}).get("kiwi", {}).get("frames_per_s")
    add("fan-out 1,000 clients: Kiwi / websockets bridge", ">= 5x", ws, None if ws is None else ws >= 5, "x")
    add("fan-out 1,000 clients: Kiwi / naive Autobahn", ">= 4x", ab, None if ab is None else ab >= 4, "x")
    add("fan-out 1,000 clients: Kiwi frames/s", "~400,000 (this class of machine)", fps, None if fps is None else fps >= 400_000)
    for size in ("1000", "5000"):
        kib = summary.get("idle", {}).get(size, {}).get("impls", {}).get("kiwi", {}).get("per_conn_kib")
        add(f"idle connection RSS, {int(size):,} connections", "<= 12 KiB", kib, None if kib is None else kib <= 12, " KiB")
    latency = summary.get("latency", {}).get("1000x20", {}).get("impls", {}).get("kiwi", {})
    p50, p99 = latency.get("p50_ms"), latency.get("p99_ms")
    add("latency 1,000 clients x 20 msg/s: p50", "<= 15 ms", p50, None if p50 is None else p50 <= 15, " ms")
    add("latency 1,000 clients x 20 msg/s: p99", "<= 40 ms", p99, None if p99 is None else p99 <= 40, " ms")
    workers = summary.get("workers", {})
    ratio = workers.get("ratio_2_vs_1")
    name = "workers 2 vs 1: delivered frames/s"
    if "skipped" in workers:
        found.append({"target": name, "goal": ">= 1.5x", "measured": None, "measured_text": "skipped (server.workers unknown)", "met": None})
    elif ratio is not None and ratio < 1.5 and (workers.get("client_util_1_worker") or 0) > LOAD_CLIENT_BUSY:
        # The issue asks for the gain "when the load client is not the
        # bottleneck": with one worker it already was, so say so.
        busy = workers["client_util_1_worker"]
        found.append(
            {
                "target": name,
                "goal": ">= 1.5x",
                "measured": ratio,
                "measured_text": f"{ratio:.2f}x, load client {busy:.0%} busy",
                "met": None,
            }
        )
    else:
        add(name, ">= 1.5x", ratio, None if ratio is None else ratio >= 1.5, "x")
    kiwi_runs = [r for r in runs if r.get("impl") == "kiwi" and r.get("scenario") in ("flood", "latency", "workers")]
    lossy = [r for r in kiwi_runs if _ok(r) and (r["loss"] != 0 or r.get("failed_connections"))]
    broken = [r for r in kiwi_runs if "error" in r]
    measured = len(kiwi_runs) - len(lossy) - len(broken)
    found.append(
        {
            "target": "zero loss: every Kiwi run delivers clients x messages",
            "goal": "all runs",
            "measured": measured,
            "measured_text": f"{measured}/{len(kiwi_runs)} runs exact" + (f", {len(broken)} failed" if broken else ""),
            "met": None if not kiwi_runs else not lossy and not broken,
        }
    )
    return found


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def table(data: dict[str, Any]) -> str:
    """
    The summary printed at the end of a run.
    """
    summary = data["summary"]
    lines = []
    meta = data["meta"]
    lines.append(
        f"Kiwi {meta.get('kiwi_commit')}  {'quick' if meta.get('quick') else 'full'} run, "
        f"{meta.get('reps')} repetition(s), servers on CPU {meta.get('server_cpus')}, "
        f"load client and broker on CPU {meta.get('client_cpus')}, {meta.get('elapsed_s')} s"
    )
    lines.append("Medians; 'x' columns: median of per-repetition ratios, > 1 means Kiwi is better.")
    lines.append("")
    header = f"{'scenario':34} {'Kiwi':>12} {'websockets':>12} {'Autobahn':>12} {'x ws':>7} {'x ab':>7}"
    lines.append(header)
    lines.append("-" * len(header))

    def row(label: str, entry: dict[str, Any], field: str, ratio_field: str, digits: int, suffix: str = "") -> None:
        impls = entry.get("impls", {})
        values = [_fmt(impls.get(i, {}).get(field), digits, suffix) for i in IMPL_ORDER]
        ratios = [_fmt(entry.get("vs", {}).get(b, {}).get(ratio_field), 2, "x") for b in BASELINES]
        lines.append(f"{label:34} {values[0]:>12} {values[1]:>12} {values[2]:>12} {ratios[0]:>7} {ratios[1]:>7}")

    for key, entry in sorted(summary.get("flood", {}).items(), key=lambda kv: int(kv[0])):
        row(f"flood {int(key):,} clients, frames/s", entry, "frames_per_s", "frames_per_s", 0)
        row(f"  frames per server CPU-second", entry, "frames_per_cpu_s", "frames_per_cpu_s", 0)
        row(f"  server CPU (1.0 = one core)", entry, "server_util", "-", 2)
        row(f"  load client CPU", entry, "client_util", "-", 2)
    for key, entry in summary.get("latency", {}).items():
        conns, rate = key.split("x")
        row(f"latency {int(conns):,} x {rate}/s, p50 ms", entry, "p50_ms", "p50", 1)
        row(f"latency {int(conns):,} x {rate}/s, p99 ms", entry, "p99_ms", "p99", 1)
    for key, entry in sorted(summary.get("idle", {}).items(), key=lambda kv: int(kv[0])):
        row(f"idle {int(key):,} conns, KiB each", entry, "per_conn_kib", "per_conn_kib", 1)
    workers = summary.get("workers")
    if workers:
        if "skipped" in workers:
            lines.append(f"{'workers 1 vs 2':34} skipped: {workers['skipped'].strip().splitlines()[-1].strip()[:90]}")
        else:
            fps = workers.get("frames_per_s", {})
            lines.append(
                f"{'workers=1 / workers=2, frames/s':34} {_fmt(fps.get('1'))} / {_fmt(fps.get('2'))}"
                f"  (2 vs 1: {_fmt(workers.get('ratio_2_vs_1'), 2, 'x')})"
            )
    capacity = summary.get("capacity")
    if capacity:
        per_frame = capacity.get("client_cpu_per_frame_us")
        lines.append(
            f"{'load client vs trivial server':34} {_fmt(capacity['frames_per_s'])} frames/s received "
            f"(a lower bound: the trivial server shares the busy core); its CPU: {_fmt(per_frame, 2)} us per frame, "
            f"so ~{_fmt(1e6 / per_frame if per_frame else None)} frames/s per core"
        )
    lines.append("")
    lines.append("Targets (issue 7)")
    for target in data.get("targets", []):
        mark = {True: "met", False: "MISSED", None: "-"}[target["met"]]
        lines.append(f"  {target['target']:54} goal {target['goal']:34} measured {target['measured_text']:>18}  {mark}")
    loss = summary.get("loss", {})
    if loss.get("lossy"):
        lines.append("")
        lines.append("!!! RUNS THAT DID NOT DELIVER EXACTLY clients x messages:")
        lines.extend(f"!!!   {item}" for item in loss["lossy"])
    if loss.get("errors"):
        lines.append("")
        lines.append("!!! RUNS THAT FAILED:")
        lines.extend(f"!!!   {item}" for item in loss["errors"])
    if data.get("notes"):
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"  - {note.splitlines()[0][:200]}" for note in data["notes"])
    return "\n".join(lines)


def chart(data: dict[str, Any], path: str) -> None:
    """
    A PNG: frames/s per implementation, latency percentiles, idle memory.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = data["summary"]
    colors = {"kiwi": "#2e7d32", "websockets": "#1565c0", "autobahn": "#ef6c00", "kiwi-2w": "#66bb6a"}
    fig, axes = plt.subplots(1, 4, figsize=(21, 5.4))

    def bars(ax: Any, groups: list[str], series: dict[str, list[float | None]], ylabel: str, title: str) -> None:
        width = 0.8 / max(1, len(series))
        for index, (impl, values) in enumerate(series.items()):
            xs = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
            heights = [v or 0 for v in values]
            drawn = ax.bar(xs, heights, width, label=LABELS.get(impl, impl), color=colors.get(impl, "#888"))
            for rect, value in zip(drawn, values):
                if value:
                    text = f"{value / 1000:.0f}k" if value >= 10000 else f"{value:.1f}"
                    ax.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                                ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)

    flood = summary.get("flood", {})
    keys = sorted(flood, key=int)
    series = {impl: [flood[k]["impls"].get(impl, {}).get("frames_per_s") for k in keys] for impl in IMPL_ORDER}
    bars(axes[0], [f"{int(k):,} clients" for k in keys], series, "delivered frames/s (median)", "Fan-out flood, one source")

    cpu_series = {impl: [flood[k]["impls"].get(impl, {}).get("frames_per_cpu_s") for k in keys] for impl in IMPL_ORDER}
    bars(
        axes[1], [f"{int(k):,} clients" for k in keys], cpu_series, "frames per second of server CPU (median)",
        "Fan-out flood: work per CPU-second\n(robust to a busy machine)",
    )

    latency = summary.get("latency", {})
    groups = []
    lat_series: dict[str, list[float | None]] = {impl: [] for impl in IMPL_ORDER}
    for key in latency:
        conns, rate = key.split("x")
        for pct in ("p50", "p99"):
            groups.append(f"{int(conns):,}x{rate}/s\n{pct}")
            for impl in IMPL_ORDER:
                lat_series[impl].append(latency[key]["impls"].get(impl, {}).get(f"{pct}_ms"))
    bars(axes[2], groups, lat_series, "ms, produce -> receive (median of runs, log scale)", "Latency percentiles (Kafka included)")
    axes[2].set_yscale("log")
    axes[2].set_ylim(bottom=1)
    if groups:
        axes[2].axhline(15, color="#c62828", linestyle=":", linewidth=1)
        axes[2].axhline(40, color="#c62828", linestyle="--", linewidth=1)
        axes[2].annotate("targets (1,000x20/s): p50 15 ms, p99 40 ms", (-0.45, 16), fontsize=7, color="#c62828", va="bottom")

    idle = summary.get("idle", {})
    keys = sorted(idle, key=int)
    idle_series = {impl: [idle[k]["impls"].get(impl, {}).get("per_conn_kib") for k in keys] for impl in IMPL_ORDER}
    bars(axes[3], [f"{int(k):,} connections" for k in keys], idle_series, "KiB of RSS per connection", "Idle subscribed connections")
    axes[3].axhline(12, color="#c62828", linestyle="--", linewidth=1)
    axes[3].annotate("target 12 KiB", (-0.4, 12), fontsize=7, color="#c62828", va="bottom")
    workers = summary.get("workers", {})
    if workers.get("frames_per_s"):
        fps = workers["frames_per_s"]
        axes[0].set_title(
            "Fan-out flood, one source\n(Kiwi workers 1 / 2, both cores: "
            f"{_fmt(fps.get('1'))} / {_fmt(fps.get('2'))} frames/s)",
            fontsize=10,
        )

    meta = data["meta"]
    fig.suptitle(
        f"Kiwi {meta.get('kiwi_commit')} vs baselines, {meta.get('started')} "
        f"({'quick' if meta.get('quick') else 'full'}, {meta.get('reps')} rep.; server on 1 core, client on the other)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(data: dict[str, Any], directory: str) -> list[str]:
    """
    Write the run as C{bench-<time>.json} and C{.png}, and copy both to
    C{latest.json} and C{latest.png}.
    """
    os.makedirs(directory, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = os.path.join(directory, f"bench-{stamp}.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    shutil.copyfile(json_path, os.path.join(directory, "latest.json"))
    paths = [json_path, os.path.join(directory, "latest.json")]
    png_path = os.path.join(directory, f"bench-{stamp}.png")
    try:
        chart(data, png_path)
    except ImportError as e:
        print(f"NOTE: no chart: {e} (install the bench extra: pip install -e '.[bench]')")
        return paths
    shutil.copyfile(png_path, os.path.join(directory, "latest.png"))
    return paths + [png_path, os.path.join(directory, "latest.png")]
