"""Benchmark: SID mapping + prefix index for a large catalog (default 1M items, H=4 = 3x256 + dedup level).

Goal (issue 2): load the mapping and build the prefix index for 1M items in <= 10 s and <= 200 MB above the
process baseline. Each measurement runs in a fresh subprocess so its peak RSS (ru_maxrss) covers only
imports (the baseline, taken before loading) plus the measured work, not the generation of the test mapping.

    python scripts/bench_mapping.py                      # 1M items, both formats
    python scripts/bench_mapping.py --items 100000 --beams 1024
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def dedup_level(codes: torch.Tensor) -> torch.Tensor:
    """Rank of each item among the items sharing its SID (0 for a unique SID): a last level making SIDs unique."""
    from sidgr.sid.mapping import lexsort_items

    order = lexsort_items(codes)
    s = codes[:, order]
    new = torch.ones(codes.shape[1], dtype=torch.bool)
    new[1:] = (s[:, 1:] != s[:, :-1]).any(dim=0)
    group_start = torch.cummax(torch.where(new, torch.arange(new.numel()), torch.zeros_like(order)), 0).values
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel()) - group_start
    return rank


def make_mapping(items: int, levels: int, size: int, seed: int):
    from sidgr.sid.mapping import SIDMapping

    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, size, (levels, items), generator=g)
    codes = torch.cat([codes, dedup_level(codes).unsqueeze(0)])
    sizes = [size] * levels + [int(codes[-1].max()) + 1]
    return SIDMapping(codes, sizes, {"method": "bench_random", "seed": seed, "dedup_level": True})


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(path: str, beams: int, seed: int) -> dict:
    """Runs in a fresh process: load + validate + build + one allowed_mask/child query per depth.

    Peak RSS is the process high-water mark (ru_maxrss), so it includes memory the allocator keeps after
    temporaries are freed; run with MALLOC_MMAP_THRESHOLD_=65536 to see the live-tensor peak instead."""
    from sidgr.sid.mapping import SIDMapping
    from sidgr.sid.prefix_index import PrefixIndex

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    base = rss_mb()
    t0 = time.perf_counter()
    mapping = SIDMapping.load(path)
    t1 = time.perf_counter()
    mapping.validate(require_unique=True)
    t2 = time.perf_counter()
    index = PrefixIndex.build(mapping)
    t3 = time.perf_counter()
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    g = torch.Generator().manual_seed(seed)
    for _warmup_then_timed in range(2):  # the first walk pays one-time costs (thread pool, first kernels)
        query_s = []
        nodes = torch.zeros(beams, dtype=torch.int64)
        for depth in range(index.num_levels):
            q0 = time.perf_counter()
            mask = index.allowed_mask(depth, nodes)
            # pick one allowed code per beam (what the decoder's top-k over masked logits would do)
            code = torch.multinomial(mask.float(), 1, generator=g).squeeze(1)
            nodes = index.child(depth, nodes, code)
            query_s.append(time.perf_counter() - q0)
            assert bool((nodes >= 0).all())
    items = index.leaf_first_item(nodes)
    assert torch.equal(index.lookup(mapping.codes[:, items].t()), nodes)  # the walk reached real leaves
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"load_s": t1 - t0, "validate_s": t2 - t1, "build_s": t3 - t2, "mapping_plus_index_s": t3 - t0,
            "query_s_per_depth": query_s, "query_s": sum(query_s), "baseline_rss_mb": base, "peak_rss_mb": peak,
            "peak_above_baseline_mb": peak - base,
            "peak_after_build_above_baseline_mb": peak_build - base, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--levels", type=int, default=3, help="quantized levels before the dedup level")
    p.add_argument("--codebook", type=int, default=256)
    p.add_argument("--beams", type=int, default=4096)
    p.add_argument("--chunk-size", type=int, default=262_144)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where to write the mapping files (default: a temp dir)")
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: the subprocess mode
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.beams, args.seed)))
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        mapping = make_mapping(args.items, args.levels, args.codebook, args.seed)
        t1 = time.perf_counter()
        plain = mapping.save(Path(tmp) / "plain" / "sids")
        t2 = time.perf_counter()
        chunked = mapping.save(Path(tmp) / "chunked" / "sids", chunk_size=args.chunk_size)
        t3 = time.perf_counter()
        print(f"catalog: {args.items:,} items, H={mapping.num_levels}, codebook sizes {mapping.codebook_sizes}; "
              f"generated in {t1 - t0:.2f} s; save plain {t2 - t1:.2f} s, chunked "
              f"({len(json.loads(chunked.read_text())['chunks'])} chunks) {t3 - t2:.2f} s")
        del mapping
        results = {}
        for name, path in (("plain", plain), ("chunked", chunked)):
            out = subprocess.run([sys.executable, __file__, "--measure", str(path), "--beams", str(args.beams),
                                  "--seed", str(args.seed)], check=True, capture_output=True, text=True)
            r = results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            ok_t = "ok" if r["mapping_plus_index_s"] <= 10 else "OVER"
            ok_m = "ok" if r["peak_above_baseline_mb"] <= 200 else "OVER"
            print(f"{name:>8}: load {r['load_s']:.2f} s + validate(unique) {r['validate_s']:.2f} s + "
                  f"prefix index {r['build_s']:.2f} s = {r['mapping_plus_index_s']:.2f} s [{ok_t} <= 10 s]; "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, {r['peak_above_baseline_mb']:.0f} MB above baseline "
                  f"{r['baseline_rss_mb']:.0f} MB [{ok_m} <= 200 MB] ({r['peak_after_build_above_baseline_mb']:.0f} MB "
                  f"before the queries); allowed_mask+child for {args.beams} beams: "
                  + ", ".join(f"d{d} {s * 1e3:.1f} ms" for d, s in enumerate(r["query_s_per_depth"]))
                  + f" ({r['threads']} threads)")
        print(json.dumps(results))


if __name__ == "__main__":
    main()
