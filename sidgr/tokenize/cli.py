"""`sidgr tokenize`: item text (or your own embeddings) -> semantic IDs + diagnostics."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sidgr.errors import input_error

EPILOG = """\
outputs in OUT:
  sids.json + sids.pt (or sids.chunkNNNNN.pt)  the [H, N] mapping and its metadata (SIDMapping.load reads it)
  diagnostics.json / diagnostics.md            per-level utilization and perplexity, collisions, reconstruction
  code_usage.png                               items per code, one panel per level

examples:
  sidgr tokenize --items data/items.parquet --out data/sids_rqk
  sidgr tokenize --items data/items.parquet --method balanced --codebook-sizes 64,32,32 --out data/sids_bal
  sidgr tokenize --items data/items.parquet --embeddings my_vectors.npy --method rqvae --no-dedup --out out/
  sidgr tokenize ... --gin 'RQVAEConfig.steps = 3000' --gin 'RQVAEConfig.gradient = "rotation"'
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--items", required=True,
                        help="items.parquet from `sidgr prepare` (item_id, text, ...); with --extend: the new items "
                             "only, ids continuing the catalog")
    parser.add_argument("--extend", default=None, metavar="MAPPING_DIR",
                        help="give new items SIDs with this tokenize output's saved tokenizer (existing SIDs "
                             "unchanged); writes the grown mapping to --out")
    parser.add_argument("--embeddings", default=None,
                        help="use these [N, D] embeddings instead of embedding the text: .npy, or .parquet with "
                             "one list<float> column or numeric columns (row i = item i, or an item_id column)")
    parser.add_argument("--method", choices=["rqkmeans", "balanced", "rqvae"], default="balanced",
                        help="residual k-means (faiss), balanced residual k-means (every code gets floor/ceil "
                             "N/K items), or RQ-VAE (default: %(default)s)")
    parser.add_argument("--levels", type=int, default=3, help="semantic levels (default: %(default)s)")
    parser.add_argument("--codebook-size", type=int, default=64, help="codes per level (default: %(default)s)")
    parser.add_argument("--codebook-sizes", default=None,
                        help="comma-separated codes per level, e.g. 64,32,32 (overrides --levels/--codebook-size)")
    parser.add_argument("--no-dedup", action="store_true",
                        help="no de-duplication level: colliding items keep a shared SID (resolved at retrieval)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> same mapping")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--chunk-size", type=int, default=None, help="split the mapping file every N items")
    parser.add_argument("--cache-dir", default=None,
                        help="embedding cache (default: $SIDGR_CACHE/embeddings or ~/.cache/sidgr/embeddings)")
    parser.add_argument("--batch-size", type=int, default=64, help="text embedding batch size")
    parser.add_argument("--gin-file", action="append", default=[], help="gin config file(s) for quantizer configs")
    parser.add_argument("--gin", action="append", default=[], help="gin binding(s), e.g. 'RQVAEConfig.steps = 500'")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for faiss and torch (default 0: all cores; 1 is often faster on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def codebook_sizes(args) -> list[int]:
    if args.codebook_sizes:
        try:
            sizes = [int(v) for v in args.codebook_sizes.split(",")]
        except ValueError as err:
            raise input_error("--codebook-sizes", "value", args.codebook_sizes, "expected integers like 64,32,32") from err
    else:
        sizes = [args.codebook_size] * args.levels
    if not sizes or min(sizes) < 1:
        raise input_error("--codebook-sizes", "value", sizes, "need at least one level and sizes >= 1")
    return sizes


def run(args) -> int:
    import gin

    from sidgr.tokenize import balanced, rqkmeans, rqvae  # noqa: F401  (register gin configurables)
    from sidgr.tokenize.kmeans import set_threads

    set_threads(args.threads)

    bound = bool(args.gin_file or args.gin)
    if bound:
        with gin.unlock_config():
            gin.parse_config_files_and_bindings(args.gin_file, args.gin, finalize_config=False)
    if args.extend:
        return _extend(args)
    try:
        report = _tokenize(args)
    finally:
        if bound:  # bindings belong to this command only (matters when several run in one process, as in tests)
            with gin.unlock_config():
                gin.clear_config()
    _print_summary(args, report)
    return 0


def _tokenize(args) -> dict:
    from sidgr.tokenize.embed import EmbedConfig
    from sidgr.tokenize.pipeline import TokenizeConfig, tokenize

    cfg = TokenizeConfig(method=args.method, codebook_sizes=codebook_sizes(args), seed=args.seed,
                         dedup=not args.no_dedup, chunk_size=args.chunk_size,
                         embed=EmbedConfig(batch_size=args.batch_size, cache_dir=args.cache_dir),
                         progress=not args.no_progress)
    return tokenize(args.items, args.out, cfg, args.embeddings)


def _extend(args) -> int:
    from sidgr.tokenize.embed import EmbedConfig
    from sidgr.tokenize.extend import extend

    report = extend(args.extend, args.items, args.out, args.embeddings,
                    EmbedConfig(batch_size=args.batch_size, cache_dir=args.cache_dir), progress=not args.no_progress)
    print(f"{report['old_items']} + {report['new_items']} new items -> {report['num_items']} items, SIDs "
          f"{report['codebook_sizes']} in {Path(args.out)} (existing SIDs unchanged; "
          f"{report['new_sharing_a_semantic_sid']:.1%} of new items share a semantic SID with an existing item)")
    return 0


def _print_summary(args, report: dict) -> None:
    before = report["before_dedup"]
    print(f"{report['num_items']} items -> SIDs {report['codebook_sizes']} ({report['method']}, "
          f"dedup level: {report['dedup_level']}) in {Path(args.out)}")
    print(f"before dedup: {before['unique_sids']} unique SIDs, collision rate {before['collision_rate']:.4f}, "
          f"largest bucket {before['largest_bucket']}; reconstruction rel. MSE "
          f"{report['reconstruction'][-1]['relative_mse']:.4f}")
    for warning in report.get("warnings", []):
        print(f"sidgr tokenize: warning: {warning}", file=sys.stderr)
