"""`sidgr lm`: the SID-speaking language model.

  sidgr lm train --config configs/lm_ml100k.gin [--resume] [Binding=value ...]
  sidgr lm recommend --run RUN --sequences test.parquet --out candidates.parquet [--genre Comedy]
  sidgr lm eval --run RUN --out DIR                   (SID<->title accuracy, instruction following)
  sidgr lm chat --run RUN --prompt "..." [--history 0,5,7] [--items 10]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sidgr.errors import input_error
from sidgr.help_format import HelpFormatter
from sidgr.logs import get_logger

log = get_logger("sidgr.lm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    train = sub.add_parser("train", help="two-stage fine-tuning (gin config)", formatter_class=HelpFormatter)
    train.add_argument("--config", required=True, help="gin file, e.g. configs/lm_ml100k.gin")
    train.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    train.add_argument("overrides", nargs="*", help="gin bindings, e.g. LMConfig.stage2_steps=100")
    rec = sub.add_parser("recommend", help="catalog-constrained recommendations (candidates parquet)",
                         formatter_class=HelpFormatter)
    rec.add_argument("--sequences", required=True, help="parquet with user_id, item_ids (history)")
    rec.add_argument("--out", required=True, help="candidates parquet (what `sidgr evaluate` reads)")
    rec.add_argument("--k", type=int, default=50, help="items per user")
    rec.add_argument("--beam", type=int, default=0, help="beam width per SID level (0: the run's beam_width)")
    rec.add_argument("--genre", default=None, help="ask every user for this genre (an instruction prompt)")
    rec.add_argument("--include-history", action="store_true", help="allow items of the user's history")
    rec.add_argument("--max-users", type=int, default=0, help="only the first N users (0: all)")
    ev = sub.add_parser("eval", help="SID->title, title->SID and instruction-following accuracy",
                        formatter_class=HelpFormatter)
    ev.add_argument("--out", required=True, help="output directory (lm_eval.json)")
    ev.add_argument("--max-items", type=int, default=0, help="items scored of each kind, trained and held-out (0: all)")
    ev.add_argument("--max-users", type=int, default=300, help="test users asked a genre instruction")
    chat = sub.add_parser("chat", help="one prompt: free text, or --items N catalog items",
                          formatter_class=HelpFormatter)
    chat.add_argument("--prompt", required=True, help="text; may contain SID tokens like <|sid_0_17|>")
    chat.add_argument("--history", default="", help="comma-separated item ids written before the prompt")
    chat.add_argument("--items", type=int, default=0, help="answer with this many catalog items (0: free text)")
    chat.add_argument("--max-new-tokens", type=int, default=48)
    for p in (rec, ev, chat):
        p.add_argument("--run", required=True, help="a `sidgr lm train` run directory (its best checkpoint)")


def _load_run(run: str):
    from .config import LMConfig
    from .data import load_lm_data
    from .model import load_model
    from .run_dir import CONFIG_FILE, best_checkpoint
    from .tasks import TaskRenderer

    ckpt = best_checkpoint(run)
    cfg = LMConfig(**json.loads((Path(run) / CONFIG_FILE).read_text()))
    model, tokenizer, vocab = load_model(ckpt / "model")
    model.eval()
    data = load_lm_data(cfg.data_dir, cfg.sids)
    return cfg, model, TaskRenderer(tokenizer, vocab, data.catalog, cfg.item_noun), data


def _engine_parts(data):
    from sidgr.inference.beam import ItemPaths
    from sidgr.sid.prefix_index import PrefixIndex

    index = PrefixIndex.build(data.mapping)
    return index, ItemPaths.build(index, data.catalog.num_items)


def run(args: argparse.Namespace) -> int:
    import torch

    from .model import autocast, pick_device

    if args.what == "train":
        from .config import load_lm_config
        from .train import train

        cfg = load_lm_config(args.config, args.overrides)
        train(cfg, resume=args.resume)
        return 0
    if args.what == "recommend":
        _check_recommend_args(args)
    cfg, model, renderer, data = _load_run(args.run)
    index, paths = _engine_parts(data)
    device = pick_device()
    model.to(device)
    with torch.no_grad(), autocast(cfg.precision, device):
        if args.what == "recommend":
            return _recommend(args, cfg, model, renderer, data, index, paths)
        if args.what == "eval":
            return _evaluate(args, cfg, model, renderer, data, index, paths)
        return _chat(args, model, renderer, data, index, paths)


def _check_recommend_args(args) -> None:
    """Before the model loads: the numbers, the output path and the sequences file."""
    from sidgr.data.readers import open_parquet
    from sidgr.io import check_output

    for name in ("k", "beam", "max_users"):
        if getattr(args, name) < (1 if name == "k" else 0):
            raise input_error(f"--{name.replace('_', '-')}", name, getattr(args, name), "out of range")
    check_output(Path(args.out), is_dir=False)
    open_parquet(args.sequences, ["user_id", "item_ids"])


def _recommend(args, cfg, model, renderer, data, index, paths) -> int:
    from sidgr.data.readers import read_sequences, write_candidates

    from .data import first_users
    from .recommend import candidates_of, recommend_users
    genres = sorted({g for gs in data.catalog.genres for g in gs})
    if args.genre is not None and args.genre not in genres:
        raise input_error("--genre", "genre", args.genre, f"not a catalog genre ({', '.join(genres) or 'none'})")
    users = read_sequences(args.sequences, with_timestamps=False, with_target=False,
                           num_items=data.catalog.num_items, require_history=True)
    users = first_users(users, args.max_users)
    asked = None if args.genre is None else [args.genre] * len(users.user_ids)
    ranked = recommend_users(model, renderer, renderer.vocab, index, paths, users, args.beam or cfg.beam_width,
                             args.k, cfg.history_items, cfg.eval_batch_users, genres=asked,
                             exclude_history=not args.include_history)
    write_candidates(args.out, candidates_of(users, ranked))
    log.info(f"wrote {args.out}: {len(users.user_ids)} users")
    return 0


def _evaluate(args, cfg, model, renderer, data, index, paths) -> int:
    import numpy as np

    from sidgr.io import atomic_path

    from .evaluate_tasks import instruction_share, sid_to_title_accuracy, title_to_sid_accuracy
    from .tasks import heldout_items

    held = heldout_items(data.catalog.num_items, cfg.heldout_item_fraction, cfg.seed)
    trained = np.setdiff1d(np.arange(data.catalog.num_items), held)
    if args.max_items:
        trained, held = trained[:args.max_items], held[:args.max_items]
    report = {
        "sid_to_title": {"trained": sid_to_title_accuracy(model, renderer, trained),
                         "heldout": sid_to_title_accuracy(model, renderer, held)},
        "title_to_sid": {"trained": title_to_sid_accuracy(model, renderer, index, trained),
                         "heldout": title_to_sid_accuracy(model, renderer, index, held)},
        "instructions": instruction_share(model, renderer, index, paths, data.split("test", args.max_users),
                                          cfg.seed, cfg.history_items, cfg.eval_batch_users),
    }
    out = Path(args.out) / "lm_eval.json"
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: {s: {m: v for m, v in r.items() if m != "examples"} for s, r in d.items()}
                      if k != "instructions" else d for k, d in report.items()}, indent=1))
    return 0


def _chat(args, model, renderer, data, index, paths) -> int:
    import torch

    from .generate import greedy_text, recommend

    try:
        history = [int(x) for x in args.history.split(",") if x.strip()]
    except ValueError:
        raise input_error("--history", "history", args.history, "expected comma-separated item ids") from None
    bad = [p for p in history if not 0 <= p < data.catalog.num_items]
    if bad:
        raise input_error("--history", "item id", bad[0], f"outside the catalog 0..{data.catalog.num_items - 1}")
    prompt = (renderer.recommend_prompt(history)[:-1] if history else []) + list(renderer.text(args.prompt))
    names = data.catalog.names
    if args.items:
        ranked = recommend(model, renderer.vocab, index, paths, [prompt + [renderer.vocab.begin_id]],
                           [torch.as_tensor(history, dtype=torch.int64)] if history else None,
                           max(args.items, 10), args.items, renderer.tok.pad_token_id)
        for rank, (p, s) in enumerate(zip(*[r[0] for r in ranked.rows()]), 1):
            print(f"{rank:>3}. [{p}] {names[p]}  (log-lik {s:.2f})")
        return 0
    text = greedy_text(model, renderer.tok, [prompt], args.max_new_tokens)[0]
    print(annotate_sids(text, renderer, index))
    return 0


def annotate_sids(text: str, renderer, index) -> str:
    """Write the catalog item's name after every complete SID in generated text."""
    import re

    import torch

    pattern = re.compile(r"<\|sid_begin\|>((?:<\|sid_\d+_\d+\|>)+)<\|sid_end\|>")

    def name(match):
        codes = [int(c) for c in re.findall(r"<\|sid_\d+_(\d+)\|>", match.group(1))]
        if len(codes) != renderer.vocab.num_levels:
            return match.group(0) + " [not an item]"
        leaf = index.lookup(torch.tensor([codes]))
        if int(leaf[0]) < 0:
            return match.group(0) + " [not an item]"
        item = int(index.leaf_first_item(leaf)[0])
        return f"{match.group(0)} [{renderer.catalog.names[item]}]"

    return pattern.sub(name, text)
