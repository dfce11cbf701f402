"""The final comparison: a markdown table with confidence intervals, and PNG plots.

    sidgr report table --run popularity=runs/pop/eval --run sid-gr=runs/gr/eval --out results/
    sidgr report curves --run sasrec=runs/sasrec/metrics.jsonl --run sid-gr=runs/gr/metrics.jsonl \
        --out results/
    sidgr report beam --exact runs/gr/eval_exact --beam 16=runs/gr/eval_w16 --beam 256=runs/gr/eval_w256 \
        --out results/
    sidgr report segments --run sasrec=runs/sasrec/eval --run sid-gr=runs/gr/eval --paired-baseline sasrec \
        --targets data/test.parquet --train data/train.parquet --out results/

`--run NAME=PATH` takes an evaluation directory (or its metrics.json) for `table`, and a trainer `metrics.jsonl`
(one JSON object per line) for `curves`; the key names read from the log are listed in STEP_KEYS, LOSS_KEYS and
RECALL_KEYS (the first key present in a record wins).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sidgr.errors import input_error
from sidgr.help_format import HelpFormatter
from sidgr.io import atomic_path
from sidgr.logs import get_logger
from sidgr.segments import SEGMENT_KEYS

DEFAULT_COLUMNS = ("recall@10", "ndcg@10", "recall@50", "coverage@10")
STEP_KEYS = ("step", "iteration", "iter", "global_step")
LOSS_KEYS = ("loss", "train/loss", "train_loss", "lm_loss")
RECALL_KEYS = ("valid/recall@10", "val/recall@10", "valid_recall@10", "val_recall@10", "recall@10")


def load_report(path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.exists():
        raise input_error(path, "path", str(path), "no evaluation metrics.json here")
    try:
        report = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise input_error(path, "path", str(path), f"not an evaluation's metrics.json ({err})") from None
    if not isinstance(report, dict) or "metrics" not in report:
        raise input_error(path, "metrics", type(report).__name__, "not an evaluation's metrics.json (no 'metrics')")
    return report


def _cell(report: dict, column: str) -> str:
    if column.startswith("coverage@"):
        value = report.get("coverage", {}).get(column)
        return "—" if value is None else f"{value:.4f}"
    stat = report["metrics"].get(column)
    if stat is None:
        return "—"
    if "ci_low" in stat:
        return f"{stat['mean']:.4f} [{stat['ci_low']:.4f}, {stat['ci_high']:.4f}]"
    return f"{stat['mean']:.4f}"


def common_catalog(reports: dict[str, dict]) -> int:
    """The catalog size every evaluation ranked over (runs on different catalogs are not comparable)."""
    catalogs = {name: r["inputs"]["num_items"] for name, r in reports.items()}
    if len(set(catalogs.values())) > 1:
        raise input_error("report", "num_items", catalogs, "runs were evaluated on different catalogs")
    return next(iter(catalogs.values()))


def comparison_table(reports: dict[str, dict], columns=DEFAULT_COLUMNS) -> str:
    """One row per run: the chosen metrics with 95% CIs, plus the protocol facts that make rows comparable."""
    if not reports:
        raise input_error("report", "runs", [], "no runs given")
    common_catalog(reports)
    header = ["model", *[c.replace("recall", "Recall").replace("ndcg", "NDCG").replace("coverage", "Coverage")
                         for c in columns], "invalid rate", "history excluded", "users"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in reports.items():
        row = [name, *[_cell(r, c) for c in columns], f"{r['candidates']['invalid_rate']:.4g}",
               "yes" if r["protocol"]["history_excluded"] else "no", str(r["users"]["evaluated"])]
        lines.append("| " + " | ".join(row) + " |")
    first = next(iter(reports.values()))
    lines += ["", f"Full-catalog ranking over N = {first['inputs']['num_items']} items; 95% percentile-bootstrap "
                  f"CIs over users ({first['bootstrap']['samples']} resamples, seed {first['bootstrap']['seed']})."]
    return "\n".join(lines) + "\n"


def per_user_metric(evaluation, metric: str):
    """(user ids, values) of one metric from the per_user.parquet beside an evaluation's metrics.json, by user."""
    import pyarrow.parquet as pq

    d = Path(evaluation)
    path = (d if d.is_dir() else d.parent) / "per_user.parquet"
    if not path.exists():
        raise input_error(path, "path", str(path), "no per_user.parquet beside the evaluation")
    table = pq.read_table(path, columns=["user_id", metric]).sort_by("user_id")
    return table["user_id"].to_numpy(), table[metric].to_numpy()


def paired_difference(run, baseline, metric: str = "recall@10", num_samples: int = 1000,
                      seed: int = 0) -> dict[str, float]:
    """Mean of (run - baseline) per user with a paired percentile-bootstrap 95% CI (users resampled jointly, so
    the between-user variance both share cancels). `run`/`baseline`: evaluation dirs, or (users, values) pairs
    from `per_user_metric`. Both must cover the same users."""
    import numpy as np

    from sidgr.metrics import bootstrap_ci

    (run_users, run_values), (base_users, base_values) = (
        x if isinstance(x, tuple) else per_user_metric(x, metric) for x in (run, baseline))
    if not np.array_equal(run_users, base_users):
        raise input_error(run if not isinstance(run, tuple) else "run", "user_id",
                          f"{len(run_users)} vs {len(base_users)} users", "not the same users as the baseline")
    return bootstrap_ci({"diff": run_values - base_values}, num_samples, seed)["diff"]


def paired_cell(diff: dict[str, float]) -> str:
    """A paired difference as "+0.0123 [+0.0045, +0.0201]" (the mean alone when it has no CI)."""
    ci = f" [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}]" if "ci_low" in diff else ""
    return f"{diff['mean']:+.4f}{ci}"


def with_paired_column(table: str, dirs: dict[str, str], baseline: str, metric: str = "recall@10",
                       num_samples: int = 1000, seed: int = 0) -> str:
    """Append a column "Δ metric vs baseline [paired 95% CI]" to the rows of a comparison table."""
    if baseline not in dirs:
        raise input_error("--paired-baseline", "name", baseline, f"not one of the runs {sorted(dirs)}")
    base = per_user_metric(dirs[baseline], metric)
    lines = table.splitlines()
    label = metric.replace("recall", "Recall").replace("ndcg", "NDCG")
    lines[0] += f" Δ{label} vs {baseline} [paired CI] |"
    lines[1] += "---|"
    for i, name in enumerate(dirs, start=2):
        if name == baseline:
            lines[i] += " — |"
        else:
            d = paired_difference(dirs[name], base, metric, num_samples, seed)
            lines[i] += f" {paired_cell(d)} |"
    return "\n".join(lines) + "\n"


def read_jsonl(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise input_error(path, "path", str(path), "no metrics.jsonl here")
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise input_error(path, f"line {lineno}", line[:40], f"not JSON ({err.msg})") from None
    return records


def _first_key(record: dict, keys) -> str | None:
    return next((k for k in keys if k in record and record[k] is not None), None)


def series(records: list[dict], value_keys) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that carry both a step and one of `value_keys`."""
    steps, values = [], []
    for rec in records:
        sk, vk = _first_key(rec, STEP_KEYS), _first_key(rec, value_keys)
        if sk is not None and vk is not None:
            steps.append(float(rec[sk]))
            values.append(float(rec[vk]))
    return steps, values


def _save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _figure(ncols: int = 1):
    """(pyplot, figure, axes): one 6.4 x 4 panel per column (a single Axes when ncols is 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(1, ncols, figsize=(6.4 if ncols == 1 else 5.5 * ncols, 4.0))


def plot_curves(logs: dict[str, list[dict]], out_dir) -> list[Path]:
    """training_loss.png and valid_recall10.png, one line per model; a plot with no data is not written."""
    out_dir = Path(out_dir)
    written = []
    for keys, ylabel, name in ((LOSS_KEYS, "training loss", "training_loss.png"),
                               (RECALL_KEYS, "validation Recall@10", "valid_recall10.png")):
        plt, fig, ax = _figure()
        drawn = 0
        for model, records in logs.items():
            steps, values = series(records, keys)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=model)
                drawn += 1
        if drawn:
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend()
            _save_png(fig, out_dir / name)
            written.append(out_dir / name)
        plt.close(fig)
    return written


def plot_recall_vs_beam(beam: dict[int, dict], exact: dict | None, out_path, metrics=("recall@10",),
                        latency: dict[int, float] | None = None) -> Path:
    """Recall@K vs beam width (log x axis, one line per K with CI bars, the exact ranking's as a dashed line);
    beside it, with `latency`, milliseconds per user vs beam width."""
    plt, fig, axes = _figure(2 if latency else 1)
    ax = axes[0] if latency else axes
    widths = sorted(beam)
    for i, metric in enumerate(m for m in metrics if all(m in beam[w]["metrics"] for w in widths)):
        stats = [beam[w]["metrics"][metric] for w in widths]
        means = [s["mean"] for s in stats]
        lo = [s["mean"] - s.get("ci_low", s["mean"]) for s in stats]
        hi = [s.get("ci_high", s["mean"]) - s["mean"] for s in stats]
        label = metric.replace("recall", "Recall")
        line = ax.errorbar(widths, means, yerr=[lo, hi], marker="o", capsize=3, label=f"{label}, beam")
        if exact is not None and metric in exact["metrics"]:
            ax.axhline(exact["metrics"][metric]["mean"], color=line[0].get_color(), linestyle="--", alpha=0.7,
                       label=f"{label}, exact" if i == 0 else None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("beam width (items returned = width)")
    ax.set_ylabel("Recall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if latency:
        lat = axes[1]
        ws = sorted(latency)
        lat.plot(ws, [latency[w] for w in ws], marker="o")
        lat.set_xscale("log", base=2)
        lat.set_xlabel("beam width")
        lat.set_ylabel("ms per user (sidgr retrieve wall time / users)")
        lat.grid(alpha=0.3)
    _save_png(fig, Path(out_path))
    plt.close(fig)
    return Path(out_path)


def _named(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise input_error(flag, "value", pair, "expected NAME=PATH")
        out[name] = path
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    fmt = HelpFormatter
    table = sub.add_parser("table", help="markdown comparison table (comparison.md) from evaluation outputs",
                           formatter_class=fmt)
    table.add_argument("--run", action="append", required=True, help="NAME=EVAL_DIR (repeat; row order kept)")
    table.add_argument("--columns", default=",".join(DEFAULT_COLUMNS))
    table.add_argument("--paired-baseline", default=None,
                       help="NAME of a run: add each run's Recall@10 difference to it with a paired bootstrap CI")
    curves = sub.add_parser("curves", help="training loss and validation Recall@10 over steps", formatter_class=fmt)
    curves.add_argument("--run", action="append", required=True, help="NAME=metrics.jsonl (repeat)")
    beam = sub.add_parser("beam", help="recall vs beam width, beam vs exact", formatter_class=fmt)
    beam.add_argument("--beam", action="append", required=True, help="WIDTH=EVAL_DIR (repeat)")
    beam.add_argument("--exact", help="EVAL_DIR of the exact ranking")
    beam.add_argument("--metrics", default="recall@10,recall@100,recall@500,recall@1000",
                      help="comma-separated; those every evaluation has are drawn")
    beam.add_argument("--latency", action="append", default=[], help="WIDTH=MS_PER_USER (repeat)")
    seg = sub.add_parser("segments", formatter_class=fmt,
                         help="each model's metrics per user segment (target popularity or history length) with "
                              "paired CIs against a baseline: segments_BY.md/.json/.png")
    seg.add_argument("--run", action="append", required=True, help="NAME=EVAL_DIR (repeat; column order kept)")
    seg.add_argument("--paired-baseline", required=True, help="NAME of the run the differences are taken to")
    seg.add_argument("--targets", required=True, help="the evaluated split (valid/test parquet: users, histories)")
    seg.add_argument("--train", help="the training sequences whose item counts make the target's popularity")
    seg.add_argument("--by", default="target-popularity", choices=SEGMENT_KEYS)
    seg.add_argument("--segments", type=int, default=4, help="quantile segments of the users (ties kept together)")
    seg.add_argument("--metrics", default="recall@10,recall@50", help="comma-separated per-user metrics")
    for p in (table, curves, beam, seg):
        p.add_argument("--out", required=True, help="output directory")


def write_segments(args: argparse.Namespace) -> list[Path]:
    import numpy as np

    from sidgr import segments

    dirs = _named(args.run, "--run")
    if args.paired_baseline not in dirs:
        raise input_error("--paired-baseline", "name", args.paired_baseline, f"not one of the runs {sorted(dirs)}")
    if args.by == "target-popularity" and not args.train:
        raise input_error("--train", "path", None, "target-popularity segments count the training sequences")
    reports = {name: load_report(path) for name, path in dirs.items()}
    users, keys = segments.user_keys(args.by, args.targets, args.train, common_catalog(reports))
    parts = segments.quantile_segments(keys, args.segments)
    boot = reports[args.paired_baseline].get("bootstrap", {})
    tables, text = {}, []
    for metric in (m for m in args.metrics.split(",") if m):
        values = {}
        for name, path in dirs.items():
            run_users, values[name] = per_user_metric(path, metric)
            if not np.array_equal(run_users, users):
                raise input_error(path, "user_id", f"{len(run_users)} users", f"not the users of {args.targets}")
        tables[metric] = segments.segment_rows(values, args.paired_baseline, parts, boot.get("samples") or 1000,
                                               boot.get("seed", 0))
        text.append(f"**{metric}** by {segments.KEY_LABELS[args.by]}\n\n"
                    + segments.markdown(tables[metric], args.by, metric, args.paired_baseline))
    out = Path(args.out)
    md, js = out / f"segments_{args.by}.md", out / f"segments_{args.by}.json"
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(text))
    with atomic_path(js) as tmp:
        tmp.write_text(json.dumps({"by": args.by, "targets": str(args.targets), "train": args.train,
                                   "baseline": args.paired_baseline, "runs": dirs, "metrics": tables}, indent=2)
                       + "\n")
    print("\n".join(text))
    return [md, js, segments.plot(tables, args.by, out / f"segments_{args.by}.png")]


def run(args: argparse.Namespace) -> int:
    if args.what == "table":
        dirs = _named(args.run, "--run")
        reports = {name: load_report(path) for name, path in dirs.items()}
        text = comparison_table(reports, tuple(c for c in args.columns.split(",") if c))
        if args.paired_baseline:  # resampled like the baseline's own CIs (the table's footnote says how)
            boot = reports.get(args.paired_baseline, {}).get("bootstrap", {})
            text = with_paired_column(text, dirs, args.paired_baseline, num_samples=boot.get("samples") or 1000,
                                      seed=boot.get("seed", 0))  # evaluations without CIs: still a paired one
        path = Path(args.out) / "comparison.md"
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        print(text)
        written = [path]
    elif args.what == "curves":
        written = plot_curves({n: read_jsonl(p) for n, p in _named(args.run, "--run").items()}, args.out)
    elif args.what == "segments":
        written = write_segments(args)
    else:
        points = {}
        for width, path in _named(args.beam, "--beam").items():
            if not width.isdigit():
                raise input_error("--beam", "width", width, "expected a positive integer")
            points[int(width)] = load_report(path)
        exact = load_report(args.exact) if args.exact else None
        latency = {}
        for width, ms in _named(args.latency, "--latency").items():
            try:
                latency[int(width)] = float(ms)
            except ValueError:
                raise input_error("--latency", "value", f"{width}={ms}", "expected WIDTH=MILLISECONDS") from None
        metrics = tuple(m for m in args.metrics.split(",") if m)
        written = [plot_recall_vs_beam(points, exact, Path(args.out) / "recall_vs_beam.png", metrics, latency)]
    get_logger("sidgr.report").info("wrote " + ", ".join(str(p) for p in written))
    return 0
