"""The `sidgr` console command.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args)`; the module is
imported only when its subcommand is used, so `sidgr prepare` never pays for Megatron and the core package
has no static import of `sidgr.training` or `sidgr.inference`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from sidgr.errors import InputError
from sidgr.help_format import HelpFormatter
from sidgr.logs import quiet_library_warnings

# name -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("sidgr.data.prepare_cli", "Prepare ml100k, beauty or ml1m: items + leave-one-out sequences parquet."),
    "synth": ("sidgr.data.synth_cli", "Make a synthetic clustered catalog with sequences, in the same formats."),
    "tokenize": ("sidgr.tokenize.cli", "Embed item text and quantize embeddings into semantic IDs (+ diagnostics)."),
    "train": ("sidgr.training.cli", "Train the SID-GR decoder with Megatron-Core under torchrun (TP/DP)."),
    "export": ("sidgr.inference.export_cli", "Export a training checkpoint (any TP/DP layout) to engine weights."),
    "export-embeddings": ("sidgr.inference.item_embeddings_cli",
                          "Collaborative item embeddings from a SASRec-CE checkpoint (optionally fused with text)."),
    "retrieve": ("sidgr.inference.retrieve_cli", "Batch candidate retrieval with catalog-constrained wide beam search."),
    "evaluate": ("sidgr.evaluate_cli", "Item-level Recall/NDCG/HitRate/MRR with bootstrap CIs for ranked candidates."),
    "score-items": ("sidgr.training.item_scoring", "Full-catalog candidates of an item-level model (SASRec-CE, SID-input)."),
    "baseline": ("sidgr.baselines", "Non-learned baselines (popularity) in the candidates format."),
    "lm": ("sidgr.lm.cli", "A small language model that speaks semantic IDs: train, recommend, eval, chat."),
    "report": ("sidgr.report", "Comparison table with CIs and plots (training curves, recall vs beam width)."),
}


def _top_level_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: sidgr <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run `sidgr <command> --help` for the options of one command."]
    return "\n".join(lines)


def build_parser(command: str) -> tuple[argparse.ArgumentParser, object]:
    module_name, desc = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"sidgr {command}", description=desc,
                                     formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import version
        print(f"sidgr {version('sidgr')}")
        return 0
    command, rest = argv[0], argv[1:]
    quiet_library_warnings()
    if command not in COMMANDS:
        print(f"sidgr: unknown command {command!r}\n\n{_top_level_help()}", file=sys.stderr)
        return 2
    parser, module = build_parser(command)
    args = parser.parse_args(rest)
    args.command_argv = argv  # for commands that re-run themselves under torchrun
    try:
        return int(module.run(args) or 0)
    except InputError as err:
        print(f"sidgr {command}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # not a bad input we know of: one line too, the traceback on request
        if os.environ.get("SIDGR_DEBUG", "") not in ("", "0"):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"sidgr {command}: unexpected error: {type(err).__name__}: {first} (SIDGR_DEBUG=1 shows the "
              f"traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
