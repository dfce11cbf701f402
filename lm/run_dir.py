"""What an LM run directory holds.

RUN/lm_config.json               the configuration the run was started with (a resume must match it)
RUN/checkpoints/step_XXXXXXX/    model/ (a loadable fine-tuned model), optimizer.pt, state.json; complete once
                                 renamed into place (a killed save leaves only a `.step_*.tmp` temporary)
RUN/best.json                    the stage-2 checkpoint with the best valid Recall@10
RUN/metrics.jsonl, RUN/wandb/    the training log
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from sidgr.errors import input_error
from sidgr.io import check_output, write_json

CONFIG_FILE = "lm_config.json"
BEST_FILE = "best.json"
STEP_DIR = re.compile(r"^step_(\d{7})$")


def step_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoints(run: Path) -> list[Path]:
    root = run / "checkpoints"
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "state.json").is_file()] \
        if root.is_dir() else []
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def open_run(run: Path, config: dict, resume: bool) -> bool:
    """Create RUN, or with `resume` accept it; True when it holds checkpoints to resume from. A directory that is
    not an LM run, a run without --resume, or one started with another configuration is refused, untouched."""
    saved = run / CONFIG_FILE
    if saved.is_file() and not resume:
        raise input_error(run, "LMConfig.run_dir", str(run), "is an existing LM run: pass --resume to continue it, "
                                                            "or choose a new run_dir")
    if saved.is_file():
        before = json.loads(saved.read_text())
        changed = sorted(k for k in set(before) | set(config) if before.get(k) != config.get(k))
        if changed:
            raise input_error(run, "LMConfig", changed[0], f"differs from the run's {CONFIG_FILE} "
                              f"({before.get(changed[0])!r} -> {config.get(changed[0])!r}); use a new run_dir")
        return bool(checkpoints(run))
    check_output(run, is_dir=True, field="LMConfig.run_dir")
    run.mkdir(parents=True, exist_ok=True)
    write_json(saved, config)
    return False


def best_checkpoint(run) -> Path:
    run = Path(run)
    best = run / BEST_FILE
    if not best.is_file():
        raise input_error(run, BEST_FILE, str(best), "missing: not a finished `sidgr lm train` run")
    return run / json.loads(best.read_text())["checkpoint"]
