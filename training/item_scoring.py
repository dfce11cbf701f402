"""`sidgr score-items`: full-catalog scoring of a trained item-level model (SASRec-CE / SID-input) -> candidates.

    sidgr score-items --checkpoint RUN_DIR[/checkpoints/iter_X ...] --sequences test.parquet --out cands.parquet \
        [--k 50] [--include-history] [--batch-size 256] [--mapping sids.json]
    (or `torchrun --nproc_per_node=T -m sidgr.training.item_scoring ...`: the item head is split T ways)

Each user's history (`item_ids`) is cut to its most recent max_items - 1 items (what the model saw as input in
training, where max_items counts the history plus the predicted item); the last one's hidden state scores all N
items. Every item of the *whole* history is excluded unless --include-history (the same ranking as validation
during training). Output: `user_id, item_ids (best first), scores` (raw logits; ties toward the smaller item id).
Users with an empty history get an empty list. A model without per-item parameters (item_input 'rqsum',
item_head 'tied') also scores a catalog grown after training (`--mapping GROWN/sids.json` from `sidgr tokenize
--extend`): new items are scored through their codes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path


from sidgr.errors import InputError, input_error
from sidgr.help_format import HelpFormatter
from sidgr.logs import get_logger, progress_bar
from sidgr.run_layout import checkpoints_to_average, resolve_checkpoint, trained_mapping_path


def load_arch(ckpt: Path):
    from sidgr.arch import ModelArch

    arch = ModelArch.from_dict(json.loads((ckpt / "arch.json").read_text()))
    if arch.extra.get("kind") != "item":
        raise input_error(ckpt / "arch.json", "extra.kind", arch.extra.get("kind"),
                          "not an item-level model (SID-GR checkpoints go through export + retrieve)")
    return arch


def model_config(ckpt: Path):
    """The run's ModelConfig (dropout is irrelevant in eval; the pad multiple sizes the tables)."""
    import gin

    from sidgr.training.config import ModelConfig, parse_config

    text = (ckpt / "config.gin").read_text() if (ckpt / "config.gin").is_file() else ""
    if text.strip():
        parse_config(str(ckpt / "config.gin"))
        cfg = ModelConfig()
        gin.clear_config()
        return cfg
    return ModelConfig()


def load_catalog(ckpt: Path, mapping_path, arch):
    """The trained catalog, or (`--mapping`) one grown from it when the model has no per-item parameter."""
    from sidgr.sid.mapping import SIDMapping
    from sidgr.training.item_model import ItemCatalog, scores_grown_catalog

    trained_path = trained_mapping_path(ckpt)
    source = mapping_path or trained_path
    mapping = SIDMapping.load(source)
    catalog = ItemCatalog.from_mapping(mapping)
    if catalog.codebook_sizes != arch.codebook_sizes:
        raise input_error(source, "codebook_sizes", catalog.codebook_sizes,
                          f"the checkpoint was trained with codebooks {arch.codebook_sizes}")
    if catalog.num_items == arch.extra["num_items"]:
        return catalog
    if not scores_grown_catalog(arch):
        raise input_error(source, "num_items", catalog.num_items,
                          f"the checkpoint was trained on {arch.extra['num_items']} items and has a row per item "
                          "(only item_input='rqsum' with item_head='tied' scores a grown catalog)")
    if not mapping.extends(SIDMapping.load(trained_path)):
        raise input_error(mapping_path, "--mapping", str(mapping_path), "does not keep the SIDs of the items the "
                                                                       "model was trained with")
    return catalog


def load_weights(model, ckpt: Path) -> None:
    from megatron.core import dist_checkpointing

    from sidgr.training.checkpoint import _model_sharded, check_model_shapes

    check_model_shapes(model, ckpt)
    state = dist_checkpointing.load({"model": _model_sharded(model)}, str(ckpt))
    model.load_state_dict(state["model"])


def load_average(model, ckpts: list[Path]) -> None:
    """The mean of `ckpts`' weights (checkpoint averaging; float64 sums), each rank its own TP shard."""
    import torch

    total = {}
    for ckpt in ckpts:
        load_weights(model, ckpt)
        for name, t in model.state_dict().items():
            if torch.is_tensor(t) and t.is_floating_point():
                total[name] = total[name] + t.double() if name in total else t.double()
    model.load_state_dict({**model.state_dict(), **{n: (t / len(ckpts)).float() for n, t in total.items()}})


# ---- the run -------------------------------------------------------------------------------------------------
def score_file(model, queries, out, keep: int, k: int, batch_size: int, device, write: bool,
               exclude_history: bool = True) -> dict:
    """Rank the whole catalog for every user of `queries` -> candidates parquet `out`."""

    from sidgr.data.readers import Candidates, CandidatesWriter, iter_sequence_batches, open_parquet
    from sidgr.training.item_task import item_logits_for, rank_items

    total = open_parquet(queries, ["user_id", "item_ids"]).metadata.num_rows
    users_done, empty = 0, 0
    with (CandidatesWriter(out) if write else contextlib.nullcontext()) as writer:
        bar = progress_bar(total=total, desc="score", unit="user", disable=not write)
        for batch in iter_sequence_batches(queries, batch_size, num_items=model.num_items):
            logits = item_logits_for(model, model, batch.items, keep, device)
            items, scores = rank_items(logits, batch.items, k, exclude_history)
            if writer is not None:
                writer.write(Candidates(batch.user_ids, items, scores))
            users_done += batch.num_users
            empty += int((batch.lengths == 0).sum())
            bar.update(batch.num_users)
        bar.close()
    return {"users": users_done, "users_without_history": empty, "top_k": k, "exclude_history": exclude_history,
            "history_items_used": keep}


def score(checkpoint, queries, out, top_k: int = 50, batch_size: int = 256, mapping_path=None,
          exclude_history: bool = True) -> dict:
    """`checkpoint`: one checkpoint or run dir, or a list of checkpoints of one model: their averaged weights."""
    import torch.distributed as dist

    from sidgr.training.dist import init_distributed, seed_everything, teardown
    from sidgr.training.item_model import build_item_model

    if top_k <= 0 or batch_size <= 0:
        raise input_error("item_scoring", "--k/--batch-size", (top_k, batch_size), "must be positive")
    given = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    averaged = checkpoints_to_average(given) if len(given) > 1 else []
    ckpt = averaged[0] if averaged else resolve_checkpoint(given[0])[0]
    arch = load_arch(ckpt)
    mcfg = model_config(ckpt)
    catalog = load_catalog(ckpt, mapping_path, arch)
    info = init_distributed(int(os.environ.get("WORLD_SIZE", "1")))  # all ranks split the head
    try:
        seed_everything(0)  # Megatron's RNG tracker must exist; eval mode uses no randomness
        model = build_item_model(mcfg, arch, catalog, info.tp_size, info.device)
        if averaged:
            load_average(model, averaged)
        else:
            load_weights(model, ckpt)
        model.eval()
        summary = score_file(model, queries, out, arch.max_items - 1, top_k, batch_size, info.device,
                             write=info.is_rank0, exclude_history=exclude_history)
        if dist.is_initialized():
            dist.barrier()
        source = [str(c) for c in averaged] if averaged else str(ckpt)
        return {"checkpoint": source, "item_input": arch.extra["item_input"], **summary}
    finally:
        teardown()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="checkpoints/iter_X, or a run dir: its best.json checkpoint (select_best), else the latest; "
                        "several checkpoints of one model: their averaged weights")
    p.add_argument("--sequences", required=True, help="parquet with user_id, item_ids (history), e.g. test.parquet")
    p.add_argument("--out", required=True, help="candidates parquet to write")
    p.add_argument("--k", type=int, default=50, help="candidates per user")
    p.add_argument("--include-history", action="store_true",
                   help="let items of the user's history be recommended (default: the whole history is excluded)")
    p.add_argument("--batch-size", type=int, default=256, help="users per forward pass")
    p.add_argument("--mapping", default=None, help="SID mapping (default: the one the checkpoint recorded); a "
                   "grown catalog for an rqsum-input, tied-head model")


def run(args: argparse.Namespace) -> int:
    info = score(args.checkpoint, args.sequences, args.out, args.k, args.batch_size, args.mapping,
                 exclude_history=not args.include_history)
    get_logger("sidgr.score-items").info(f"wrote {args.out}: {info}")
    return 0


def main(argv=None) -> int:
    """`python -m sidgr.training.item_scoring` (e.g. under torchrun for a TP-split head)."""
    p = argparse.ArgumentParser(prog="python -m sidgr.training.item_scoring", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    add_arguments(p)
    try:
        return run(p.parse_args(argv))
    except InputError as err:
        print(f"sidgr score-items: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
