"""What a run records, for the trainer and the LM alike: metrics.jsonl (strict JSON lines, rewritten atomically)
and the wandb run (offline by default)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from sidgr.io import atomic_path
from sidgr.logs import get_logger


def strict_json(record: dict) -> str:
    """One JSON line that strict parsers accept: a non-finite number (no throughput yet, no grad norm) is null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)


class MetricsLog:
    """RUN_DIR/metrics.jsonl (strict JSON lines), rewritten atomically; on resume keeps the records up to the
    resumed step."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.records: list[dict] = []
        if enabled and self.path.exists():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in rows if r.get("step", 0) <= start_step]

    def add(self, record: dict) -> None:
        if self.enabled:
            self.records.append(record)

    def flush(self) -> None:
        if self.enabled:
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(strict_json(r) + "\n" for r in self.records))


class WandbRun:
    def __init__(self, mode: str, project: str, run_dir: Path, config: dict, enabled: bool):
        self.run = None
        if enabled and mode != "disabled":
            import wandb
            self.run = wandb.init(project=project, dir=str(run_dir), mode=mode, config=config,
                                  name=run_dir.name, reinit="finish_previous",
                                  settings=wandb.Settings(silent=True))
            get_logger("sidgr.train").info(f"wandb {mode} run: {self.run.dir}")

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
