"""The peer comparison's report: a markdown table (one row per peer; each figure with its spread over the
rounds) and a chart (CPU per streamed request and added TTFT against concurrency, and the non-streaming
CPU per request), from the results :func:`loadtests.peer.__main__.main` writes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from loadtests.kit.report import fmt


def spread(xs: list[float], d: int = 2) -> str:
    """``(min-max)`` of the finite values, or "" for fewer than two."""
    ys = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return f" ({min(ys):.{d}f}-{max(ys):.{d}f})" if len(ys) > 1 else ""


def table(rows: list[dict[str, Any]], conc: list[int], ns_conc: int) -> str:
    head = ["peer", "version"]
    for c in conc:
        head += [f"CPU ms / streamed req @{c}", f"added TTFT p50 @{c} (ms)"]
    head += [f"non-stream req/s @{ns_conc} via (direct)", "CPU ms / non-stream req", "errors"]
    head += ["foreign CPU, mean / max of phases (cores)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            cells = [r["name"], r.get("version", "?"), "could not run: " + r["error"]] + [""] * (len(head) - 3)
            out.append("| " + " | ".join(cells) + " |")
            continue
        m = r["m"]
        cells = [r["name"], r["version"]]
        by = {s["conc"]: s for s in m["streaming"]}
        for c in conc:
            s = by.get(c)
            if s is None:
                cells += ["", ""]
                continue
            v = s["via"]
            cells.append(f"{fmt(v['gateway_cpu_ms_per_req'])}{spread(v['gateway_cpu_ms_per_req_rounds'])}")
            cells.append(f"{fmt(s['added_ttft_p50_ms'], 1)}{spread(s['added_ttft_p50_per_round_ms'], 1)}")
        ns = m.get("non_streaming")
        if ns:
            v, d = ns["via"], ns["direct"]
            share = 100 * v["rps_median"] / d["rps_median"] if d["rps_median"] else float("nan")
            cells.append(f"{v['rps_median']:,.0f} ({d['rps_median']:,.0f}; {share:.0f} %)")
            cells.append(f"{fmt(v['gateway_cpu_ms_per_req'])}{spread(v['gateway_cpu_ms_per_req_rounds'])}")
        else:
            cells += ["", ""]
        mean = m.get("foreign_cpu_mean")
        cells += [
            str(m["errors"]),
            f"{fmt(mean)} / {fmt(m['foreign_cpu_max'])}" if mean is not None else fmt(m["foreign_cpu_max"]),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def chart(res: dict[str, Any], path: Path) -> str | None:
    """Draw the chart to ``path`` (PNG); the reason when it cannot (matplotlib missing, nothing measured)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    rows = [r for r in res["rows"] if "m" in r]
    if not rows:
        return "no peer was measured"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax_cpu, ax_ttft, ax_ns = axes
    for r in rows:
        ss = sorted(r["m"]["streaming"], key=lambda s: s["conc"])
        cs = [s["conc"] for s in ss]
        cpu = [s["via"]["gateway_cpu_ms_per_req"] for s in ss]
        lo = [c - min(s["via"]["gateway_cpu_ms_per_req_rounds"]) for c, s in zip(cpu, ss, strict=True)]
        hi = [max(s["via"]["gateway_cpu_ms_per_req_rounds"]) - c for c, s in zip(cpu, ss, strict=True)]
        ax_cpu.errorbar(cs, cpu, yerr=[lo, hi], marker="o", capsize=3, label=f"{r['name']} {r['version']}")
        added = [s["added_ttft_p50_ms"] for s in ss]
        # the pooled p50 need not lie within the per-round ones (one round: rounding): no negative bar
        lo = [max(0.0, a - min(s["added_ttft_p50_per_round_ms"])) for a, s in zip(added, ss, strict=True)]
        hi = [max(0.0, max(s["added_ttft_p50_per_round_ms"]) - a) for a, s in zip(added, ss, strict=True)]
        ax_ttft.errorbar(cs, added, yerr=[lo, hi], marker="o", capsize=3, label=r["name"])
    ax_cpu.set_yscale("log")
    ax_cpu.set_title("peer CPU per streamed request (ms, log)")
    ax_ttft.set_yscale("symlog", linthresh=1.0)
    ax_ttft.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax_ttft.set_title("added TTFT p50 (ms, symlog)")
    for ax in (ax_cpu, ax_ttft):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_xticks(sorted({s["conc"] for r in rows for s in r["m"]["streaming"]}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(True, which="both", alpha=0.3)
    ns_rows = [r for r in rows if r["m"].get("non_streaming")]
    names = [r["name"] for r in ns_rows]
    vals = [r["m"]["non_streaming"]["via"]["gateway_cpu_ms_per_req"] for r in ns_rows]
    bars = ax_ns.bar(names, vals, color=[f"C{i}" for i, r in enumerate(rows) if r in ns_rows])
    for b, r in zip(bars, ns_rows, strict=True):
        ns = r["m"]["non_streaming"]
        share = 100 * ns["via"]["rps_median"] / max(ns["direct"]["rps_median"] or 1, 1)
        ax_ns.annotate(
            f"{share:.0f} % of direct req/s",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax_ns.set_yscale("log")
    ax_ns.set_title(f"CPU per non-streamed request @{res['config']['ns_conc']} (ms, log)")
    ax_ns.tick_params(axis="x", rotation=20)
    for ax in (ax_cpu, ax_ns):  # log axes: ticks at 1, 2, 5 x 10^k, written plainly
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_cpu.legend(fontsize=8)
    f = res["config"]["fake"]
    fig.suptitle(
        f"One hop, {len(rows)} peers in one run, sharing {res['machine']['nproc']} cores; fake upstream "
        f"TTFT {f['ttft_ms']:g} ms, ITL {f['itl_ms']:g} ms, {f['tokens']} tokens; {res['config']['rounds']} rounds "
        "(bars: min-max over rounds)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def markdown(res: dict[str, Any]) -> str:
    c = res["config"]
    f = c["fake"]
    md = [table(res["rows"], c["conc"], c["ns_conc"]), ""]
    md.append(
        "CPU: the peer's process tree (user + system) over the via rounds, per completed request; in brackets the "
        "range over rounds. Added TTFT: p50 through the peer minus p50 direct, pooled over the rounds; in brackets "
        "the range of the per-round differences."
    )
    first = next((r for r in res["rows"] if "m" in r), None)
    if first:
        md.append(
            "Direct TTFT p50 / p99 (first measured peer's rounds): "
            + "; ".join(
                f"{s['conc']} streams {s['direct']['ttft_p50_ms']:.1f} / {s['direct']['ttft_p99_ms']:.1f} ms"
                for s in first["m"]["streaming"]
            )
            + "."
        )
    md.append(
        f"Fake upstream: TTFT {f['ttft_ms']:g} ms, ITL {f['itl_ms']:g} ms, {f['tokens']} tokens (max_tokens "
        f"{c['max_tokens']}), non-streamed answers after {f['ns_delay_ms']:g} ms; {c['rounds']} interleaved rounds "
        f"per phase; streams per round and side: {', '.join(f'{k}: {v}' for k, v in c['n_per_conc'].items())}; "
        f"{c['ns_requests']} non-streaming requests per round at {c['ns_conc']}."
    )
    md.append("")
    for r in res["rows"]:
        la = r.get("m", {})
        load = ""
        if la:
            load = f"; load average {la['loadavg_before'][0]:.2f} before, {la['loadavg_after'][0]:.2f} after"
            if r.get("attempts", 1) > 1:
                load += f"; measured {r['attempts']} times (mean foreign CPU {r['foreign_history']}), the quietest kept"
        md.append(f"- {r['name']}: {r.get('version', '?')} — {r.get('note', '')}{load}")
    m = res["machine"]
    ref = c.get("gateway_ref")
    src = f"ours from git archive {ref}" if ref else f"ours from the working tree at {m.get('git', '?')}"
    md.append(
        f"- load generator: python {res['versions']['python']}, raw asyncio HTTP/1.1 keep-alive "
        f"(loadtests/kit/client.py); {m['nproc']} CPUs ({m.get('cpu', '?')}), nothing pinned; {src}; "
        f"load average at start {m['loadavg_start'][0]:.2f}, at end {m.get('loadavg_end', [float('nan')])[0]:.2f}"
    )
    md.append(f"- command: `{res['command']}`")
    return "\n".join(md)
