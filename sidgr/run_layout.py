"""What a training run directory holds, for every part that reads one (trainer, export, item scoring).

RUN/checkpoints/iter_XXXXXXX/   one checkpoint; complete once renamed into place with arch.json and
                                trainer_state.pt (a killed save leaves only a `.iter_*.tmp` temporary)
RUN/best.json                   the checkpoint the trainer selected on the validation target (select_best)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from sidgr.errors import input_error

ITER_DIR = re.compile(r"^iter_(\d{7})$")
TRAINER_STATE = "trainer_state.pt"
BEST_FILE = "best.json"


def checkpoint_name(step: int) -> str:
    return f"iter_{step:07d}"


def is_complete(ckpt: Path) -> bool:
    return bool(ITER_DIR.match(ckpt.name)) and (ckpt / TRAINER_STATE).is_file() and (ckpt / "arch.json").is_file()


def complete_checkpoints(run_dir) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_complete(p)), key=lambda p: int(ITER_DIR.match(p.name).group(1)))


def best_checkpoint_name(run_dir) -> str | None:
    """The checkpoint RUN/best.json names, if the run selected one."""
    path = Path(run_dir) / BEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("checkpoint")
    except (ValueError, AttributeError):
        raise input_error(path, "checkpoint", path.name, "unreadable best.json") from None


def resolve_checkpoint(path, flag: str = "--checkpoint") -> tuple[Path, list[Path]]:
    """A checkpoint directory as given; for a run directory (or its `checkpoints/`) the checkpoint its best.json
    names, else its latest complete one. Returns (checkpoint, the run's complete checkpoints)."""
    path = Path(path)
    if (path / "arch.json").is_file() or ITER_DIR.match(path.name):
        return path, [path]
    run = path.parent if path.name == "checkpoints" else path
    found = complete_checkpoints(run)
    if not found:
        raise input_error(path, flag, str(path), "neither a checkpoint nor a run dir with a complete one")
    picked = [p for p in found if p.name == best_checkpoint_name(run)]
    return (picked or found)[-1], found
