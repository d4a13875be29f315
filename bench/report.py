"""Ratios and the human table, from the figures of one run."""

from __future__ import annotations

from typing import Any


def signing_rates(records: int, wall_s: float, cpu_s: float) -> dict[str, Any]:
    """The figures every in-process signing measurement reports: 3 signatures a record."""
    signatures = 3 * records
    return {
        "records": records,
        "signatures": signatures,
        "elapsed_s": round(wall_s, 3),
        "signatures_per_s": round(signatures / wall_s, 1),
        "ms_per_signature": round(1000 * wall_s / signatures, 2),
        "cpu_s_per_signature": round(cpu_s / signatures, 5),
    }


def _best_end_to_end(doc: dict[str, Any]) -> float:
    runs = doc["end_to_end"]
    return max(runs["instances_1"]["signatures_per_s"], runs["instances_2"]["signatures_per_s"])


def ratios(doc: dict[str, Any]) -> dict[str, float]:
    """Signatures/s over signatures/s; end_to_end is the better of 1 and 2 instances,
    hsm_raw is one session per core."""
    naive = doc["pyhanko_naive"]["signatures_per_s"]
    e2e = _best_end_to_end(doc)
    return {
        "sign_path_vs_pyhanko_naive": round(doc["sign_path"]["signatures_per_s"] / naive, 2),
        "end_to_end_vs_pyhanko_naive": round(e2e / naive, 2),
        "end_to_end_vs_hsm_raw": round(e2e / doc["hsm_raw"]["n_sessions"]["signatures_per_s"], 3),
        # Issue 15's: the daemon's CPU per signature (main + workers) over its signing
        # path's, job by job and in the daemon's batches.
        **{
            f"daemon_cpu_{key}_vs_sign_path{suffix}": round(
                doc["end_to_end"][key]["cpu_s_per_signature"] / path["cpu_s_per_signature"], 2
            )
            for key in ("instances_1", "instances_2")
            for suffix, path in (("", doc["sign_path"]), ("_batched", doc["sign_path"]["batched"]))
        },
    }


def table(doc: dict[str, Any]) -> str:
    rows = [("path", "sig/s", "ms/sig", "CPU s/sig", "p50/p95/p99 ms", "peak RSS MB")]
    raw = doc["hsm_raw"]
    rows.append(("hsm_raw, 1 session", raw["one_session"]["signatures_per_s"], "", "", "", ""))
    rows.append(
        (
            f"hsm_raw, {raw['n_sessions']['sessions']} sessions",
            raw["n_sessions"]["signatures_per_s"],
            "",
            "",
            "",
            "",
        )
    )
    paths = [("pyhanko_naive", doc["pyhanko_naive"]), ("sign_path", doc["sign_path"])]
    batched = doc["sign_path"]["batched"]
    paths.append((f"sign_path, batches of {batched['batch_size']}", batched))
    for name, f in paths:
        rows.append(
            (name, f["signatures_per_s"], f["ms_per_signature"], f["cpu_s_per_signature"], "", "")
        )
    for key, f in doc["end_to_end"].items():
        if not isinstance(f, dict):
            continue
        lat = f["latency_ms"]
        rss = "/".join(str(r["with_hsm_workers"]) for r in f["peak_rss_mb_per_instance"])
        rows.append(
            (
                f"end_to_end {key}",
                f["signatures_per_s"],
                "",
                f["cpu_s_per_signature"],
                f"{lat['p50']}/{lat['p95']}/{lat['p99']}",
                rss,
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append("ratios: " + ", ".join(f"{k}={v}" for k, v in doc["ratios"].items()))
    lines.append(f"valid: {doc['valid']}  ({doc['bench_seconds']} s)")
    return "\n".join(lines)
