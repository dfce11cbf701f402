"""What a training run directory holds, for every part that reads one (trainer, export, item scoring).

RUN/checkpoints/iter_XXXXXXX/   one checkpoint; complete once renamed into place with arch.json and
                                trainer_state.pt (a killed save leaves only a `.iter_*.tmp` temporary);
                                manifest.json (written last) holds every file's size and sha256, so a file
                                damaged later is found before it is loaded
  mapping.json                  {"path": the SID mapping the model was trained with (absolute)}
RUN/best.json                   the checkpoint the trainer selected on the validation target (select_best)
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from sidgr.errors import input_error

ITER_DIR = re.compile(r"^iter_(\d{7})$")
TRAINER_STATE = "trainer_state.pt"
BEST_FILE = "best.json"
MANIFEST = "manifest.json"
MAPPING_LOCATION = "mapping.json"


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


def write_mapping_location(ckpt_dir, mapping_path) -> None:
    (Path(ckpt_dir) / MAPPING_LOCATION).write_text(json.dumps({"path": str(Path(mapping_path).resolve())}) + "\n")


def trained_mapping_path(ckpt) -> Path:
    """The SID mapping a checkpoint was trained with (a relative record is read against the working directory,
    then the checkpoint); one-line error when the record or the mapping is missing."""
    ckpt = Path(ckpt)
    record = ckpt / MAPPING_LOCATION
    if not record.is_file():
        raise input_error(ckpt, MAPPING_LOCATION, str(record), "missing: not a sidgr training checkpoint")
    where = Path(json.loads(record.read_text())["path"])
    for candidate in [where] if where.is_absolute() else [Path.cwd() / where, ckpt / where]:
        if candidate.exists():
            return candidate
    raise input_error(record, "path", str(where), "the SID mapping the model was trained with does not exist")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(ckpt_dir) -> None:
    """Every file's size and sha256, written after all of them (the checkpoint is not yet in place)."""
    root = Path(ckpt_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(root)): [p.stat().st_size, _sha256(p)] for p in files}
    (root / MANIFEST).write_text(json.dumps(entries, indent=1) + "\n")


def checkpoint_damage(ckpt) -> str | None:
    """What is wrong with a complete checkpoint's files against its manifest (None: intact, or written before
    checkpoints had manifests)."""
    ckpt = Path(ckpt)
    if not (ckpt / MANIFEST).is_file():
        return None
    try:
        entries = json.loads((ckpt / MANIFEST).read_text())
    except ValueError:
        return f"{MANIFEST} is unreadable"
    for name, (size, digest) in entries.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if _sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None


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
    """A checkpoint directory as given (ours, or any torch.distributed checkpoint); for a run directory (or its
    `checkpoints/`) the checkpoint its best.json names, else its latest complete one; a damaged one (its manifest
    disagrees) is an error. Returns (checkpoint, the run's complete checkpoints)."""
    path = Path(path)
    if (path / "arch.json").is_file() or (path / ".metadata").is_file() or ITER_DIR.match(path.name):
        picked, found = path, [path]
    else:
        run = path.parent if path.name == "checkpoints" else path
        found = complete_checkpoints(run)
        if not found:
            raise input_error(path, flag, str(path), "neither a checkpoint nor a run dir with a complete one")
        picked = ([p for p in found if p.name == best_checkpoint_name(run)] or found)[-1]
    if (damage := checkpoint_damage(picked)) is not None:
        raise input_error(picked, flag, str(picked), f"corrupt checkpoint: {damage}")
    return picked, found


def checkpoints_to_average(paths) -> list[Path]:
    """Checkpoints to average into one model: each a checkpoint directory (a run directory is refused: which of
    its checkpoints is the user's choice), undamaged, all of one model (the same arch.json and trained SIDs)."""
    ckpts = [Path(p) for p in paths]
    for c in ckpts:
        if not c.is_dir():
            raise input_error(c, "checkpoint", str(c), "not a directory")
        if resolve_checkpoint(c)[0] != c:
            raise input_error(c, "checkpoint", str(c), "a run directory: name the checkpoints to average "
                                                       "(RUN/checkpoints/iter_XXXXXXX)")
        if not (c / "arch.json").is_file():
            raise input_error(c, "arch.json", str(c / "arch.json"), "missing: not a sidgr training checkpoint")
    first = ckpts[0]
    arch, sids = json.loads((first / "arch.json").read_text()), trained_sids(first)
    for c in ckpts[1:]:
        other = json.loads((c / "arch.json").read_text())
        if other != arch:
            key = next(k for k in sorted(set(arch) | set(other)) if arch.get(k) != other.get(k))
            raise input_error(c / "arch.json", key, other.get(key), f"differs from {first.name}'s "
                              f"{arch.get(key)!r}: only checkpoints of one model can be averaged")
        if not trained_sids(c).equal(sids):
            raise input_error(c, "trained SIDs", str(trained_mapping_path(c)),
                              f"differ from {first.name}'s: only checkpoints of one model can be averaged")
    return ckpts


def trained_sids(ckpt: Path):
    from sidgr.sid.mapping import SIDMapping

    return SIDMapping.load(trained_mapping_path(ckpt)).codes
