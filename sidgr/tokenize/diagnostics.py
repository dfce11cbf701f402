"""Diagnostics of a SID assignment: code utilization and perplexity per level, collisions, reconstruction error,
and a PNG of code usage per level."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sidgr.tokenize.dedup import collision_stats
from sidgr.tokenize.quantized import Quantized


def level_usage(codes: np.ndarray, k: int) -> dict:
    counts = np.bincount(codes, minlength=k)
    p = counts[counts > 0] / counts.sum()
    return {
        "codebook_size": int(k),
        "used": int((counts > 0).sum()),
        "utilization": float((counts > 0).sum() / k),
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),
        "min_count": int(counts.min()),
        "max_count": int(counts.max()),
    }


def reconstruction_errors(x: np.ndarray, quantized: Quantized) -> list[dict]:
    """Per level h (cumulative over levels 0..h): ||x - x_hat||^2 / ||x||^2 (relative MSE) and the same over the
    centred variance (fraction of variance unexplained)."""
    x = x.astype(np.float64)
    energy = float((x ** 2).sum()) or 1.0
    variance = float(((x - x.mean(0)) ** 2).sum()) or 1.0
    out = []
    for level, recon in enumerate(quantized.cumulative_reconstructions()):
        sq = float(((x - recon) ** 2).sum())
        out.append({"levels": level + 1, "relative_mse": sq / energy, "unexplained_variance": sq / variance})
    return out


def build_report(x: np.ndarray, quantized: Quantized, final_codes: np.ndarray, final_sizes: list[int],
                 dedup: bool) -> dict:
    counts_before = collision_stats(quantized.codes)
    return {
        "method": quantized.config.get("method"),
        "num_items": int(quantized.codes.shape[1]),
        "embedding_dim": int(x.shape[1]),
        "codebook_sizes": list(final_sizes),
        "dedup_level": dedup,
        "dedup_level_size": int(final_sizes[-1]) if dedup else None,
        "levels": [level_usage(final_codes[h], k) for h, k in enumerate(final_sizes)],
        "before_dedup": counts_before,
        "after_dedup": collision_stats(final_codes),
        "reconstruction": reconstruction_errors(x, quantized),
    } | {"warnings": collapse_warnings(counts_before, final_sizes[:quantized.codes.shape[0]])}


COLLIDING_WARN = 0.25  # share of items whose semantic SID is shared before the dedup level
BUCKET_WARN = 32  # items behind one semantic SID


def collapse_warnings(before: dict, semantic_sizes: list[int]) -> list[str]:
    """What a user must hear even when every level's perplexity looks healthy: the semantic levels do not tell
    items apart (codes collapsed onto few full SIDs) -- judged against the collisions that N items spread
    uniformly over the prod(K_h) semantic SIDs would have, 1 - exp(-(N - 1) / prod(K_h))."""
    out = []
    cells = float(np.prod(np.asarray(semantic_sizes, dtype=np.float64)))
    by_chance = 1.0 - np.exp(-(before["num_items"] - 1) / cells)
    if before["collision_rate"] > max(COLLIDING_WARN, 2 * by_chance):
        out.append(f"{before['collision_rate']:.0%} of items share their semantic SID with another item before "
                   f"the de-duplication level ({by_chance:.0%} would by chance): the codes barely separate items. "
                   f"Try other embeddings (e.g. collaborative ones, `sidgr export-embeddings`), balanced "
                   f"RQ-KMeans, or more or larger levels.")
    if before["largest_bucket"] > BUCKET_WARN:
        out.append(f"{before['largest_bucket']} items sit behind one semantic SID: their de-duplication codes "
                   f"carry no meaning, so the model must guess among them.")
    return out


def report_markdown(report: dict) -> str:
    b = report["before_dedup"]
    lines = [
        f"# SID diagnostics ({report['method']})", "",
        f"- items: {report['num_items']}, embedding dim: {report['embedding_dim']}",
        f"- codebook sizes: {report['codebook_sizes']} (dedup level: {report['dedup_level']})",
        f"- before dedup: {b['unique_sids']} unique SIDs, collision rate {b['collision_rate']:.4f} "
        f"({b['colliding_items']} items), largest bucket {b['largest_bucket']}",
        f"- after: {report['after_dedup']['unique_sids']} unique SIDs, "
        f"largest bucket {report['after_dedup']['largest_bucket']}", "",
        "| level | K | used | utilization | perplexity | min count | max count |",
        "|---|---|---|---|---|---|---|",
    ]
    for h, lv in enumerate(report["levels"]):
        lines.append(f"| {h} | {lv['codebook_size']} | {lv['used']} | {lv['utilization']:.3f} | "
                     f"{lv['perplexity']:.2f} | {lv['min_count']} | {lv['max_count']} |")
    if report.get("warnings"):
        lines += ["", *(f"> **Warning:** {w}" for w in report["warnings"])]
    lines += ["", "| levels used | relative MSE | unexplained variance |", "|---|---|---|"]
    for r in report["reconstruction"]:
        lines.append(f"| {r['levels']} | {r['relative_mse']:.4f} | {r['unexplained_variance']:.4f} |")
    return "\n".join(lines) + "\n"


def plot_code_usage(codes: np.ndarray, sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 3), squeeze=False)
    for h, (ax, k) in enumerate(zip(axes[0], sizes)):
        counts = np.bincount(codes[h], minlength=k)
        ax.bar(np.arange(k), counts, width=1.0)
        ax.set_title(f"level {h} (K={k})")
        ax.set_xlabel("code")
        ax.set_ylabel("items")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    plt.close(fig)
