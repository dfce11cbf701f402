"""Retrieval benchmark: the engine's KV-cache constrained beam vs (a) a no-cache decoder that packs all beams of
a user into one sequence and recomputes it every step (NVIDIA sid_gr example's generate()), (b) a brute-force
prefix check against the whole catalog every step (GRID's), and (c) the peer users pick: Hugging Face
`transformers` generate() with num_beams=W and a catalog trie as prefix_allowed_tokens_fn (TIGER/GRID-style code),
on a GPT-2 of the same shapes with random weights (the math does not map, so only speed compares), all in one run
on a random-weight engine.

Reports candidates/s and ms per batch (wall-clock median), the dense-FLOP ratio of (a) to ours ("flop x": the
speedup over (a) that pure arithmetic allows) for each (B, W, history length); the machine's fp32 matmul FLOP/s
measured in the same run and the share of it the decode's dense work reaches; the constraint's share of decode
time; the per-step working memory of the decode for synthetic catalogs of several sizes; with --profile, where
one retrieval's time goes by operator.

  python scripts/bench_retrieval.py --profile            # the full grid (about an hour on 2 cores)
  python scripts/bench_retrieval.py --quick              # small sizes, to validate
  python scripts/bench_retrieval.py --out bench.json     # also write the numbers as JSON
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sidgr.arch import ModelArch
from sidgr.inference import beam as beam_mod
from sidgr.inference.beam import expand_step, beam_widths
from sidgr.inference.random_engine import random_mapping, random_state_dict
from sidgr.inference.engine import Engine
from sidgr.inference.weights import EngineFiles
from sidgr.token_layout import decode_position
from sidgr.sid.prefix_index import PrefixIndex


# ---- setup ---------------------------------------------------------------------------------------------------
def make_engine(num_items: int, sizes, hidden: int, layers: int, max_items: int, seed: int = 0) -> Engine:
    arch = ModelArch(codebook_sizes=tuple(sizes), hidden_size=hidden, num_layers=layers, num_attention_heads=4,
                     ffn_hidden_size=4 * hidden, max_items=max_items, head_mode="shared")
    mapping = random_mapping(num_items, list(sizes), seed=seed)
    return Engine(EngineFiles(arch, random_state_dict(arch, seed, scale=0.1), mapping, "bench"))


def make_histories(B: int, L: int, num_items: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(num_items, (L,), generator=g) for _ in range(B)]


def timed(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    sec = timed(lambda: torch.mm(a, b), repeats)
    return 2 * n ** 3 / sec


# ---- ours ----------------------------------------------------------------------------------------------------
def ours(engine: Engine, hist, widths):
    return engine.retrieve(hist, k=1, widths=widths)


def dense_flops(engine: Engine, hist, widths) -> float:
    """Matmul FLOPs of one retrieval (prefill + decode steps + heads), counting beams actually alive."""
    arch = engine.arch
    h, f, nl, H = arch.hidden_size, arch.ffn_hidden_size, arch.num_layers, arch.num_levels
    per_token = nl * (2 * h * 3 * h + 2 * h * h + 4 * h * f)
    S = sum(min(len(x), engine.max_history) * H + 1 for x in hist)
    flops = S * per_token + sum((min(len(x), engine.max_history) * H + 1) ** 2 * 4 * h * nl for x in hist)
    beams = [1] + [min(w, engine.index.num_nodes(d + 1)) for d, w in enumerate(widths)]
    for depth in range(H):
        n = len(hist) * beams[depth]
        if depth > 0:
            ctx = S / len(hist) + depth
            flops += n * (per_token + 4 * h * ctx * nl)
        flops += n * 2 * h * arch.codebook_sizes[depth]
    return flops


def packed_flops(engine: Engine, hist, widths) -> float:
    """Matmul FLOPs of baseline (a): every step re-runs history + all generated beam tokens, T^2 attention."""
    arch = engine.arch
    h, f, nl, H = arch.hidden_size, arch.ffn_hidden_size, arch.num_layers, arch.num_levels
    per_token = nl * (2 * h * 3 * h + 2 * h * h + 4 * h * f)
    beams = [1] + [min(w, engine.index.num_nodes(d + 1)) for d, w in enumerate(widths)]
    flops = 0.0
    for x in hist:
        S = min(len(x), engine.max_history) * H + 1
        for depth in range(H):
            T = S + beams[depth] * depth
            flops += T * per_token + T * T * 4 * h * nl + beams[depth] * 2 * h * arch.codebook_sizes[depth]
    return flops


# ---- (a) no-cache decoder, all beams packed in one sequence --------------------------------------------------
@torch.no_grad()
def packed_nocache(engine: Engine, hist, widths, user_chunk: int = 4):
    """Every step re-runs [history, BOS, all beams' generated tokens] with a mask that lets each beam token see
    the history and its own ancestors; scores the last token of each beam. Same constraint as ours."""
    for start in range(0, len(hist), user_chunk):
        _packed_chunk(engine, hist[start:start + user_chunk], widths)


def _packed_chunk(engine: Engine, hist, widths):
    from sidgr.token_layout import TokenBatch, prefill_layout

    arch, model, index = engine.arch, engine.model, engine.index
    H, B = arch.num_levels, len(hist)
    kept = [x[-engine.max_history:] for x in hist]
    lengths = torch.tensor([len(x) for x in kept])
    sids = torch.zeros(B, int(lengths.max()), H, dtype=torch.int64)
    for b, x in enumerate(kept):
        sids[b, :len(x)] = engine.mapping.pid_to_sid(x)
    pre = prefill_layout(sids, lengths, arch.level_offsets, arch.history)
    S = pre.tokens.shape[1]
    cum, nodes = torch.zeros(B, 1), torch.zeros(B, 1, dtype=torch.int64)
    gen = torch.zeros(B, 1, 0, dtype=torch.int64)  # [B, W, depth] generated global tokens per beam
    for depth in range(H):
        W, d = gen.shape[1], gen.shape[2]
        T = S + W * d
        tokens = torch.cat([pre.tokens, gen.reshape(B, W * d)], 1)
        is_bos = torch.cat([pre.is_bos, torch.zeros(B, W * d, dtype=torch.bool)], 1)
        beam_pos = torch.stack([decode_position(lengths, l, H) for l in range(d)], 1) if d else \
            torch.zeros(B, 0, dtype=torch.int64)
        positions = torch.cat([pre.positions, beam_pos.unsqueeze(1).expand(B, W, d).reshape(B, W * d)], 1)
        masked = torch.ones(B, T, T, dtype=torch.bool)
        masked[:, :S, :S] = pre.attention_mask[:, 0]
        masked[:, S:, :S] = ~pre.history.unsqueeze(1)
        beam_of = torch.arange(W * d) // max(d, 1)
        step_of = torch.arange(W * d) % max(d, 1)
        own = (beam_of.unsqueeze(1) == beam_of.unsqueeze(0)) & (step_of.unsqueeze(0) <= step_of.unsqueeze(1))
        masked[:, S:, S:] = ~own
        is_item = torch.cat([pre.is_item, torch.zeros(B, W * d, dtype=torch.bool)], 1)
        item_codes = torch.cat([pre.item_codes, torch.zeros(B, W * d, H, dtype=torch.int64)], 1)
        batch = TokenBatch(tokens, is_bos, torch.ones(B, T, dtype=torch.bool), positions, None, None, None,
                           masked.unsqueeze(1), is_item, item_codes, torch.zeros(B, T, dtype=torch.int64), None,
                           None)
        hidden = model(batch)
        if d == 0:
            last = hidden[torch.arange(B), pre.valid.sum(1) - 1].unsqueeze(1)
        else:
            last = hidden[:, S:].reshape(B, W, d, -1)[:, :, -1]
        logits = model.level_logits(last, depth)
        cum, parent, codes, nodes = expand_step(index, logits, cum, nodes, depth, widths[depth])
        gen = torch.cat([gen.gather(1, parent.unsqueeze(-1).expand(-1, -1, d)),
                         (codes + arch.level_offsets[depth]).unsqueeze(-1)], 2)
    return nodes, cum


# ---- (b) brute-force prefix check ----------------------------------------------------------------------------
class BruteForceIndex(PrefixIndex):
    """allowed_mask by comparing every beam's prefix with every catalog SID (chunked over beams)."""

    @classmethod
    def wrap(cls, index: PrefixIndex, codes: torch.Tensor, chunk_elems: int = 1 << 26) -> "BruteForceIndex":
        obj = cls(index.codebook_sizes, index.child_parent, index.child_code, index.child_offsets,
                  index.leaf_offsets, index.leaf_items)
        obj.catalog = codes.t().contiguous()  # [N, H]
        obj.chunk_elems = chunk_elems
        obj.node_prefix = [torch.zeros(1, 0, dtype=torch.int64)]
        for depth in range(index.num_levels):
            parent = obj.node_prefix[depth][index.child_parent[depth]]
            obj.node_prefix.append(torch.cat([parent, index.child_code[depth].unsqueeze(1)], 1))
        return obj

    def allowed_mask(self, depth, nodes):
        prefixes = self.node_prefix[depth][nodes.reshape(-1)]  # [n, depth]
        N, n = self.catalog.shape[0], prefixes.shape[0]
        mask = torch.zeros(n, self.codebook_sizes[depth], dtype=torch.bool)
        step = max(1, self.chunk_elems // max(N * max(depth, 1), 1))
        for s in range(0, n, step):
            p = prefixes[s:s + step]
            match = (self.catalog[:, :depth].unsqueeze(0) == p.unsqueeze(1)).all(-1)  # [chunk, N]
            rows, items = match.nonzero(as_tuple=True)
            mask[rows + s, self.catalog[items, depth]] = True
        return mask


def brute_force(engine: Engine, bf_index: BruteForceIndex, hist, widths):
    bos_hidden, cache = engine.prefill(hist)
    return beam_mod.beam_search(engine.model, bf_index, bos_hidden, cache, widths)


# ---- (c) the peer: Hugging Face transformers constrained beam search --------------------------------------
class CatalogTrie:
    """What TIGER/GRID-style code passes as `prefix_allowed_tokens_fn`: a dict from the generated prefix (global
    code ids) to the global ids allowed next, looked up once per beam per step."""

    def __init__(self, codes: torch.Tensor, offsets, prompt_len: int):
        glob = (codes.t() + torch.as_tensor(list(offsets))).tolist()  # [N, H] global ids
        self.prompt_len, self.allowed = prompt_len, {}
        for sid in glob:
            for depth in range(len(sid)):
                self.allowed.setdefault(tuple(sid[:depth]), set()).add(sid[depth])
        self.allowed = {key: sorted(v) for key, v in self.allowed.items()}
        self.dead = [0]  # a beam of score -inf on no real prefix (more beams than prefixes): keep it dead

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return self.allowed.get(tuple(input_ids[self.prompt_len:].tolist()), self.dead)


def peer_model(arch: ModelArch, max_len: int, seed: int = 0):
    """A GPT-2 decoder of the engine's shapes (pre-LN, GELU, biases; vocab = all codes + BOS + pad), random
    weights: the engine's model does not map onto GPT-2 (item-slot positions, a softmax per level), so only
    throughput compares."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=arch.vocab_size + 2, n_positions=max_len, n_embd=arch.hidden_size,
                     n_layer=arch.num_layers, n_head=arch.num_attention_heads, n_inner=arch.ffn_hidden_size,
                     activation_function="gelu", bos_token_id=arch.vocab_size, eos_token_id=None,
                     pad_token_id=arch.vocab_size + 1)
    return GPT2LMHeadModel(cfg).eval()


def peer_inputs(engine: Engine, hist) -> torch.Tensor:
    """[B, L*H + 1]: each history item's global code ids in order, then BOS (all histories of one length)."""
    arch = engine.arch
    offsets = torch.as_tensor(list(arch.level_offsets))
    rows = [(engine.mapping.pid_to_sid(x) + offsets).reshape(-1) for x in hist]
    bos = torch.full((len(hist), 1), arch.vocab_size)
    return torch.cat([torch.stack(rows), bos], 1)


def peer_chunk(W: int, prompt: int, max_scores: float) -> int:
    """Users per generate() call: its prefill holds [users*W, heads, prompt, prompt] attention scores (every beam
    copies the prompt), so users are fed in chunks small enough for memory, as a user of it would; 0 = too big."""
    return int(max_scores // (W * prompt * prompt))


def peer(model, trie: CatalogTrie, engine: Engine, hist, W: int, chunk: int) -> None:
    for start in range(0, len(hist), chunk):
        peer_generate(model, trie, peer_inputs(engine, hist[start:start + chunk]), W, engine.arch.num_levels)


@torch.no_grad()
def peer_generate(model, trie: CatalogTrie, inputs: torch.Tensor, W: int, levels: int) -> torch.Tensor:
    out = model.generate(inputs, attention_mask=torch.ones_like(inputs), num_beams=W, num_return_sequences=W,
                         max_new_tokens=levels, min_new_tokens=levels, do_sample=False, early_stopping=True,
                         prefix_allowed_tokens_fn=trie, pad_token_id=model.config.pad_token_id)
    return out[:, inputs.shape[1]:]


# ---- constraint share ----------------------------------------------------------------------------------------
@contextmanager
def constraint_timer(index: PrefixIndex, acc: list):
    orig_mask, orig_child = index.allowed_mask, index.child

    def timed_mask(*a, **k):
        t0 = time.perf_counter()
        out = orig_mask(*a, **k)
        acc[0] += time.perf_counter() - t0
        return out

    def timed_child(*a, **k):
        t0 = time.perf_counter()
        out = orig_child(*a, **k)
        acc[0] += time.perf_counter() - t0
        return out

    index.allowed_mask, index.child = timed_mask, timed_child
    try:
        yield
    finally:
        del index.allowed_mask, index.child


# ---- memory --------------------------------------------------------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensors created inside the mode and still alive (storages counted once)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.refs = 0, 0, {}

    def _track(self, t):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return
        st = t.untyped_storage()
        ptr, nbytes = st.data_ptr(), st.nbytes()
        if ptr == 0:
            return
        if ptr not in self.refs:
            self.refs[ptr] = [0, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self.refs[ptr][0] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr):
        entry = self.refs.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            self._track(t)
        return out


def decode_memory(engine: Engine, hist, widths) -> int:
    """Peak live bytes of the decode steps (after prefill): the per-step working set."""
    bos_hidden, cache = engine.prefill(hist)
    with LiveBytes() as mode:
        beam_mod.beam_search(engine.model, engine.index, bos_hidden, cache, widths)
    return mode.peak


# ---- profile ------------------------------------------------------------------------------------------------
def profile_ours(engine: Engine, B: int, W: int, L: int, args) -> None:
    """Where one retrieval's time goes, by operator (self CPU time), and the share of the fp32 matmul peak."""
    from torch.profiler import ProfilerActivity, profile

    hist, widths = make_histories(B, L, args.catalog), beam_widths(W, engine.arch.num_levels)
    ours(engine, hist, widths)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ours(engine, hist, widths)
    print(f"\nprofile of ours at B={B}, W={W}, history {L} (self CPU time by operator):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


# ---- markdown -----------------------------------------------------------------------------------------------
def markdown(rows: list[dict], mem_rows: list[dict]) -> str:
    """The speed table (ours against (a), (b) and the peer) and the memory table, as the README shows them."""
    def ms(v):
        return "—" if v != v else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"

    def x(v):
        return "—" if v != v else f"{v:,.0f}×" if v >= 10 else f"{v:.1f}×"

    lines = ["| B | W | history | ours ms | candidates/s | % of fp32 matmul peak | constraint share | (a) no-cache "
             "packed ms | vs (a) | (b) brute-force ms | vs (b) | peer (transformers) ms | vs peer |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['B']} | {r['W']} | {r['history']} | {ms(r['ours_ms'])} | {r['candidates_per_s']:,.0f} | "
                     f"{100 * r['share_of_peak']:.0f}% | {100 * r['constraint_share']:.1f}% | "
                     f"{ms(r['nocache_packed_ms'])} | {x(r['speedup_vs_nocache'])} | {ms(r['bruteforce_ms'])} | "
                     f"{x(r['speedup_vs_bruteforce'])} | {ms(r['peer_ms'])} | {x(r['speedup_vs_peer'])} |")
    lines += ["", "| catalog items | prefixes per depth | peak decode working set (MiB) |", "|---|---|---|"]
    lines += [f"| {m['catalog']:,} | {', '.join(f'{p:,}' for p in m['prefixes'])} | {m['decode_peak_mib']:.1f} |"
              for m in mem_rows]
    return "\n".join(lines)


# ---- driver --------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes to validate the script")
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--widths", default="256,1024,4096")
    p.add_argument("--history", default="50,200")
    p.add_argument("--catalog", type=int, default=100_000, help="items of the catalog used for timing")
    p.add_argument("--memory-catalogs", default="10000,100000,1000000")
    p.add_argument("--codebook-sizes", default="256,256,256,64", help="H=4 levels, the last a dedup level")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2, help="configs/ml100k.gin: hidden 128, 2 layers")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-max-tokens", type=float, default=6e7,
                   help="skip baseline (a) when B*T^2 (packed attention size) exceeds this")
    p.add_argument("--brute-max-compares", type=float, default=3e10,
                   help="skip baseline (b) when B*W*N*H compares exceed this")
    p.add_argument("--peer-max-scores", type=float, default=2.5e8,
                   help="the transformers peer runs users in chunks whose W*prompt^2 prefill attention fits this "
                        "(about 4 GB at 4 heads); skipped where one user does not")
    p.add_argument("--peer-max-beams", type=int, default=65536, help="skip the peer when B*W exceeds this (time)")
    p.add_argument("--no-peer", action="store_true", help="skip the transformers peer (c)")
    p.add_argument("--profile", action="store_true",
                   help="profile ours at the largest batch, W=1024 (or the widest below) and the first history")
    p.add_argument("--out", default=None)
    p.add_argument("--markdown", action="store_true", help="also print the tables as markdown (for the README)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.widths, args.history = "1,4", "16,64", "10,20"
        args.catalog, args.memory_catalogs, args.codebook_sizes = 2000, "1000,5000", "32,32,32,64"
        args.repeats = 1
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    sizes = ints(args.codebook_sizes)
    H = len(sizes)
    max_hist = max(ints(args.history))
    threads = torch.get_num_threads()
    peak = matmul_flops()
    print(f"torch threads={threads}  fp32 matmul peak (1024^3 mm) = {peak / 1e9:.1f} GFLOP/s")
    engine = make_engine(args.catalog, sizes, args.hidden, args.layers, max_hist + 1)
    bf_index = BruteForceIndex.wrap(engine.index, engine.mapping.codes)
    print(f"catalog {args.catalog} items, codebooks {sizes}, prefixes per depth "
          f"{[engine.index.num_nodes(d) for d in range(1, H + 1)]}; model hidden {args.hidden}, "
          f"{args.layers} layers")
    rows = []
    header = (f"{'B':>3} {'W':>5} {'hist':>4} | {'ours ms':>9} {'cand/s':>10} {'GFLOP/s':>8} {'%peak':>6} "
              f"{'constr%':>7} | {'(a) ms':>9} {'x(a)':>6} {'flop x':>6} | {'(b) ms':>9} {'x(b)':>6} | "
              f"{'peer ms':>9} {'x peer':>7}")
    print(header)
    for L in ints(args.history):
        prompt = L * H + 1
        if not args.no_peer:
            peer_lm, trie = peer_model(engine.arch, prompt + H), CatalogTrie(engine.mapping.codes,
                                                                           engine.arch.level_offsets, prompt)
        for B in ints(args.batch_sizes):
            hist = make_histories(B, L, args.catalog)
            for W in ints(args.widths):
                widths = beam_widths(W, H)
                t_ours = timed(lambda: ours(engine, hist, widths), args.repeats)
                acc = [0.0]
                with constraint_timer(engine.index, acc):
                    t_c = timed(lambda: ours(engine, hist, widths), 1)
                constraint_share = acc[0] / 2 / t_c  # timed() runs warm-up + 1
                final = min(W, engine.index.num_nodes(H))
                flops = dense_flops(engine, hist, widths)
                T = L * H + 1 + W * (H - 1)
                t_a = (timed(lambda: packed_nocache(engine, hist, widths), 1)
                       if min(B, 4) * T * T <= args.baseline_max_tokens else float("nan"))
                compares = B * W * args.catalog * H
                t_b = (timed(lambda: brute_force(engine, bf_index, hist, widths), 1)
                       if compares <= args.brute_max_compares else float("nan"))
                chunk = min(B, peer_chunk(W, prompt, args.peer_max_scores))
                run_peer = not args.no_peer and chunk > 0 and B * W <= args.peer_max_beams
                t_p = (timed(lambda: peer(peer_lm, trie, engine, hist, W, chunk), 1, warmup=False)
                       if run_peer else float("nan"))
                row = {"B": B, "W": W, "history": L, "ours_ms": t_ours * 1e3, "candidates_per_s": B * final / t_ours,
                       "dense_gflops": flops / t_ours / 1e9, "share_of_peak": flops / t_ours / peak,
                       "constraint_share": constraint_share, "nocache_packed_ms": t_a * 1e3,
                       "speedup_vs_nocache": t_a / t_ours,
                       "nocache_flop_ratio": packed_flops(engine, hist, widths) / flops, "bruteforce_ms": t_b * 1e3,
                       "speedup_vs_bruteforce": t_b / t_ours, "peer_ms": t_p * 1e3, "speedup_vs_peer": t_p / t_ours,
                       "peer_users_per_call": chunk if run_peer else 0}
                rows.append(row)
                print(f"{B:>3} {W:>5} {L:>4} | {row['ours_ms']:>9.1f} {row['candidates_per_s']:>10.0f} "
                      f"{row['dense_gflops']:>8.2f} {100 * row['share_of_peak']:>5.1f}% "
                      f"{100 * constraint_share:>6.1f}% | {row['nocache_packed_ms']:>9.1f} "
                      f"{row['speedup_vs_nocache']:>6.1f} {row['nocache_flop_ratio']:>6.1f} | "
                      f"{row['bruteforce_ms']:>9.1f} "
                      f"{row['speedup_vs_bruteforce']:>6.1f} | {row['peer_ms']:>9.1f} {row['speedup_vs_peer']:>7.1f}",
                      flush=True)
    if args.profile:
        profile_ours(engine, ints(args.batch_sizes)[-1], max([w for w in ints(args.widths) if w <= 1024] or
                                                             ints(args.widths)[:1]), ints(args.history)[0], args)
    mem_rows = []
    B_mem, W_mem = ints(args.batch_sizes)[-1], ints(args.widths)[1 if len(ints(args.widths)) > 1 else 0]
    print(f"\nper-step decode memory (B={B_mem}, W={W_mem}, history {ints(args.history)[0]}):")
    for n in ints(args.memory_catalogs):
        eng = make_engine(n, sizes, args.hidden, args.layers, max_hist + 1)
        hist = make_histories(B_mem, ints(args.history)[0], n)
        mb = decode_memory(eng, hist, beam_widths(W_mem, H)) / 2 ** 20
        mem_rows.append({"catalog": n, "decode_peak_mib": mb,
                         "prefixes": [eng.index.num_nodes(d) for d in range(1, H + 1)]})
        print(f"  catalog {n:>8}: peak live decode tensors {mb:8.1f} MiB  (prefixes per depth "
              f"{mem_rows[-1]['prefixes']})", flush=True)
    if args.markdown:
        print(markdown(rows, mem_rows))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"threads": threads, "matmul_peak_flops": peak, "timing": rows, "memory": mem_rows,
                       "args": vars(args)}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
