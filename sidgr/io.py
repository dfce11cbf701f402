"""Atomic file and directory writes: a crash never leaves a half-written output behind, and an output never
replaces something the command did not write (a directory is replaced only when `replaces` recognises it)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from sidgr.errors import input_error


def check_output(final: Path, is_dir: bool, replaces: Callable[[Path], bool] | None = None,
                 field: str = "--out") -> None:
    """Refuse an output path whose current content would be lost: a file where a directory goes (or the
    reverse), or a non-empty directory that `replaces` does not recognise as this command's own output."""
    if not final.exists():
        return
    if is_dir and not final.is_dir():
        raise input_error(final, field, str(final), "exists and is not a directory; this command writes a directory")
    if not is_dir and final.is_dir():
        raise input_error(final, field, str(final), "is a directory; this command writes a file")
    if is_dir and any(final.iterdir()) and not (replaces is not None and replaces(final)):
        raise input_error(final, field, str(final), "exists and was not written by this command; "
                                                    "choose a new path (nothing was changed)")


def _make_sibling_tmp(final: Path) -> Path:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as err:
        raise input_error(final, "output", str(final), f"cannot write there ({err.strerror})") from None


def _readable_by_others(folder: Path) -> None:
    """Directories 0777 and files 0666 less the umask, as `mkdir` and `open` give (mkdtemp and some writers,
    safetensors among them, make owner-only files)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, is_dir: bool = False,
                replaces: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `final`, on error delete it.

    The temporary lives in the same directory so the rename is atomic on POSIX. An existing file is replaced;
    an existing non-empty directory only when `replaces(final)` says it is this command's earlier output.
    """
    final = Path(final)
    check_output(final, is_dir, replaces)
    tmp = _make_sibling_tmp(final)
    target = tmp if is_dir else tmp / final.name
    try:
        yield target
        if is_dir:
            _readable_by_others(tmp)
            old = None
            if final.exists():
                old = final.with_name(f".{final.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
