"""Loss curves (train and validation) as a PNG, from the metrics records."""
from __future__ import annotations

from pathlib import Path

from sidgr.io import atomic_path


def plot_loss_curves(records: list[dict], out_png: str | Path, title: str = "SID-GR training") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    valid = [(r["step"], r["valid_loss"]) for r in records if "valid_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if valid:
        ax.plot(*zip(*valid), "o-", label="valid", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("token cross-entropy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out_png
