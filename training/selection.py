"""Checkpoint selection on the validation target, and early stopping.

With `TrainerConfig.select_best`, every evaluation step also saves a checkpoint, and the validation metric of that
checkpoint (`valid_recall@10`: the item models' in-loop ranking, SID-GR's through the engine) decides which one is
best. `RUN/best.json` names it; checkpoint rotation never removes it; `sidgr export --checkpoint RUN` exports it.
With `early_stop_patience = P > 0` the run stops after P evaluations without improvement (strictly greater wins;
ties keep the earlier checkpoint). Everything lives in best.json, so a resumed run continues the count exactly.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sidgr.io import atomic_path
from sidgr.run_layout import BEST_FILE, checkpoint_name

METRIC = "valid_recall@10"


@dataclass
class Selection:
    metric: str = METRIC
    patience: int = 0
    best_step: int | None = None
    best_value: float | None = None
    evals_since_best: int = 0
    stopped_at: int | None = None  # the step the run stopped early at

    @classmethod
    def load(cls, run_dir: Path, patience: int) -> "Selection":
        path = Path(run_dir) / BEST_FILE
        if not path.exists():
            return cls(patience=patience)
        state = json.loads(path.read_text())
        state.pop("checkpoint", None)
        return cls(**{**state, "patience": patience})

    @property
    def best_checkpoint(self) -> str | None:
        return None if self.best_step is None else checkpoint_name(self.best_step)

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_since_best >= self.patience

    def update(self, step: int, scores: dict) -> bool:
        """Record the evaluation of the checkpoint saved at `step`; True if it is the new best."""
        value = scores.get(self.metric)
        if value is None:
            raise ValueError(f"select_best: the validation gave no {self.metric} (got {sorted(scores)})")
        better = self.best_value is None or value > self.best_value
        if better:
            self.best_step, self.best_value, self.evals_since_best = step, float(value), 0
        else:
            self.evals_since_best += 1
        if self.should_stop:
            self.stopped_at = step
        return better

    def write(self, run_dir: Path) -> None:
        with atomic_path(Path(run_dir) / BEST_FILE) as tmp:
            tmp.write_text(json.dumps({"checkpoint": self.best_checkpoint, **asdict(self)}, indent=2) + "\n")
