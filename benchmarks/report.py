"""The benchmark's report as Markdown (``results.md``) and as a chart (``results.png``).

Both read the report ``benchmarks/run.py`` writes as ``results.json``.
"""

from benchmarks.cases import CASES, DTYPE_CASES, MIN_TIMED_STEPS
from keras_t2t.io_utils import write_atomic


def minutes(seconds):
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _failure(result):
    lines = (result.get("error") or "").strip().splitlines()
    return "FAILED" + (": " + lines[-1][:120].replace("|", "/") if lines else "")


def _shape_text(shape):
    m, k, n = shape
    return f"{m}^3" if m == k == n else f"{m}x{k} @ {k}x{n}"


def markdown(report):
    m, peak, settings = report["machine"], report["peak"], report["settings"]
    methods = sorted({r["peak_rss_method"] for r in report["results"] if r.get("peak_rss_method")})
    lines = [
        f"# T2T-ViT benchmarks ({'QUICK: checks only, not a measurement' if report['quick'] else 'measurement'})",
        "",
        (
            f"- date: {report['date']}; wall time of the run: {minutes(report['wall_s'])} (cases: "
            + ", ".join(f"{b} {minutes(s)}" for b, s in report.get("wall_s_per_backend", {}).items())
            + ")"
        ),
        (
            f"- CPU: {m['cpu_model']}, {m['cpus']} logical CPUs, ISA flags: "
            f"{', '.join(m.get('isa_flags') or []) or 'none'}; load average before {m['loadavg_before']}, "
            f"after {m['loadavg_after']}"
        ),
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        (
            f"- matmul peak ({peak.get('method')}; best over {', '.join(_shape_text(s) for s in peak['shapes'])}; "
            f"the highest of the readings at the start and at the end of the run): float32 "
            f"{_fmt(peak.get('float32_gflops'), '.1f')} GFLOP/s (start {_fmt(peak.get('float32_gflops_start'), '.1f')}, "
            f"end {_fmt(peak.get('float32_gflops_end'), '.1f')}), bfloat16 {_fmt(peak.get('bfloat16_gflops'), '.1f')} "
            f"GFLOP/s (start {_fmt(peak.get('bfloat16_gflops_start'), '.1f')}, "
            f"end {_fmt(peak.get('bfloat16_gflops_end'), '.1f')})"
        ),
        (
            f"- image size {settings['image_size']}, warm-up {settings['warmup']}, "
            f"timed steps: up to {settings['iterations']}, stopping after "
            f"{settings.get('time_budget_s', 0):g} s of them (at least {MIN_TIMED_STEPS}; 0 = no budget; "
            "median reported); training FLOPs = 3 x forward (estimate)"
        ),
        (
            f"- cases: {settings.get('cases')}; "
            + (
                "one process per case"
                if settings.get("process_per_case")
                else "one process per (backend, variant), cases in the table's order, model built once"
            )
            + f"; peak RSS: {', '.join(methods) or '-'} (rss at start: VmRSS when the case began)"
            + ("; keras_t2t.allocator.keep_freed_memory() in every child" if settings.get("keep_freed_memory") else "")
        ),
        (
            f"- --dtype {settings.get('dtype', 'float32')} for {', '.join(DTYPE_CASES)} (the dtype column says what "
            "ran; the other cases keep their own)"
        ),
        "",
        "| backend | variant | case | dtype | batch | images/s | latency ms | GFLOP/s | % fp32 peak | rss at start MB "
        "| peak RSS MB | NxN attention MB | bf16 top-1 agreement (trained model) | bf16 max rel. logit error | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        ok = r.get("status") == "ok"
        lines.append(
            f"| {r['backend']} | {r['variant']} | {r['case']} | {r.get('dtype', '-')} | {r.get('batch_size', '-')} | "
            f"{_fmt(r.get('images_per_s'), '.2f')} | {_fmt(r.get('latency_ms'), '.1f')} | "
            f"{_fmt(r.get('achieved_gflops'), '.1f')} | {_fmt(r.get('fraction_of_fp32_peak') and 100 * r['fraction_of_fp32_peak'], '.1f')} | "
            f"{_fmt(r.get('rss_start_mb'), '.0f')} | "
            f"{_fmt(r.get('peak_rss_mb'), '.0f')} | {_fmt(r.get('attention_materialised_mb'), '.0f')} | "
            f"{_fmt(None if r.get('top1_agreement') is None else 100 * r['top1_agreement'], '.1f')} | "
            f"{_fmt(None if r.get('max_relative_logit_error') is None else 100 * r['max_relative_logit_error'], '.1f')}"
            " | "
            f"{'ok' if ok else _failure(r)} |"
        )
    return "\n".join(lines) + "\n"


def chart(report, path):
    """One panel per variant: achieved GFLOP/s per case, one bar per backend, peak lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r.get("status") == "ok"]
    variants = list(dict.fromkeys(r["variant"] for r in rows)) or ["(none)"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    width = 0.8 / max(1, len(backends))
    fig, axes = plt.subplots(
        1, len(variants), figsize=(4.2 * len(variants) + 1, 4.2), sharey=True, squeeze=False
    )
    for ax, variant in zip(axes[0], variants):
        # The cases this variant ran (the default runs infer_b32_bf16 for T2T-ViT-14 only).
        cases = [c for c in CASES if any(r["case"] == c and r["variant"] == variant for r in rows)]
        for b, backend in enumerate(backends):
            by_case = {r["case"]: r for r in rows if r["variant"] == variant and r["backend"] == backend}
            xs = [i + (b - (len(backends) - 1) / 2) * width for i, c in enumerate(cases) if c in by_case]
            ys = [by_case[c]["achieved_gflops"] for c in cases if c in by_case]
            ax.bar(xs, ys, width, label=backend)
        for key, style in (("float32_gflops", "--"), ("bfloat16_gflops", ":")):
            if report["peak"].get(key):
                ax.axhline(report["peak"][key], linestyle=style, color="tab:red", linewidth=1,
                           label=f"{key.split('_')[0]} matmul peak")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, fontsize=7, rotation=35, ha="right")
        ax.set_title(variant, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("achieved GFLOP/s (matmul FLOPs / time)")
    axes[0][-1].legend(loc="upper right", fontsize=7)
    title = "T2T-ViT on the Keras backends, CPU" + (" (QUICK: not a measurement)" if report["quick"] else "")
    fig.suptitle(f"{title}: {report['machine']['cpu_model']}, {report['date'][:10]}", fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
