"""SID mapping (load/save/validate/lookups) and the prefix index, against brute-force Python answers."""
from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch

from sidgr.errors import InputError
from sidgr.sid.mapping import SIDMapping, first_duplicate_items, lexsort_items
from sidgr.sid.prefix_index import PrefixIndex

# (codebook sizes, number of items): small codebooks force collisions and shared prefixes
CATALOGS = [
    ([4, 5], 30),            # dense, many collisions
    ([3, 2, 4], 50),         # every prefix crowded, collisions
    ([8, 8, 8, 3], 200),     # sparse, H=4, few collisions
    ([16, 1, 6], 40),        # a level with a single code
    ([5, 5], 1),             # a one-item catalog
]


def random_codes(sizes: list[int], n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, c, (n,), generator=g) for c in sizes])


def brute_trie(codes: torch.Tensor):
    """prefix tuples per depth (sorted -> node id) and SID -> sorted item ids."""
    H, N = codes.shape
    sids = [tuple(codes[:, p].tolist()) for p in range(N)]
    nodes = [sorted({s[:h] for s in sids}) for h in range(H + 1)]
    items_of = defaultdict(list)
    for p, s in enumerate(sids):
        items_of[s].append(p)
    return nodes, dict(items_of)


@pytest.fixture
def mapping() -> SIDMapping:
    codes = random_codes([6, 7, 5], 90, seed=3)
    return SIDMapping(codes, [6, 7, 9], {"method": "rq_kmeans", "seed": 3}).validate()


# ---- load / save ---------------------------------------------------------------------------------
def test_plain_and_chunked_round_trip_equal(mapping, tmp_path):
    plain_json = mapping.save(tmp_path / "plain" / "sids")
    chunked_json = mapping.save(tmp_path / "chunked" / "sids.json", chunk_size=17)
    assert (tmp_path / "plain" / "sids.pt").exists() and plain_json == tmp_path / "plain" / "sids.json"
    assert len(list((tmp_path / "chunked").glob("sids.chunk*.pt"))) == 6  # ceil(90 / 17)
    for path in (plain_json, tmp_path / "plain" / "sids.pt", tmp_path / "plain" / "sids", chunked_json,
                 tmp_path / "chunked" / "sids"):
        loaded = SIDMapping.load(path)
        assert torch.equal(loaded.codes, mapping.codes) and loaded.codes.dtype == torch.int64
        assert loaded.codebook_sizes == [6, 7, 9]  # from metadata, not inferred (level 2 uses codes < 5)
        assert loaded.meta["method"] == "rq_kmeans" and loaded.meta["seed"] == 3
        assert loaded.meta["num_items"] == 90
    assert not list(tmp_path.rglob("*.tmp"))  # no leftovers from the atomic writes


def test_plain_tensor_file_of_the_sid_gr_example(mapping, tmp_path):
    torch.save(mapping.codes.to(torch.int32), tmp_path / "mapping.pt")  # a bare tensor, no JSON beside it
    loaded = SIDMapping.load(tmp_path / "mapping.pt")
    assert torch.equal(loaded.codes, mapping.codes) and loaded.codes.dtype == torch.int64
    assert loaded.codebook_sizes == [int(v) + 1 for v in mapping.codes.max(dim=1).values]


def test_list_of_chunk_tensors(mapping, tmp_path):
    parts = list(torch.split(mapping.codes, 40, dim=1))
    torch.save(parts, tmp_path / "chunks.pt")  # one file holding a list of [H, n_i] chunks
    assert torch.equal(SIDMapping.load(tmp_path / "chunks.pt").codes, mapping.codes)
    for i, part in enumerate(parts):  # or one file per chunk, passed as a list of paths
        torch.save(part, tmp_path / f"part{i}.pt")
    loaded = SIDMapping.load([tmp_path / f"part{i}.pt" for i in range(len(parts))])
    assert torch.equal(loaded.codes, mapping.codes)


def test_pid_to_sid(mapping):
    pids = torch.tensor([[0, 89], [5, 5]])
    sids = mapping.pid_to_sid(pids)
    assert sids.shape == (2, 2, 3)
    assert sids[0, 1].tolist() == mapping.codes[:, 89].tolist() and sids[1, 0].tolist() == mapping.codes[:, 5].tolist()
    with pytest.raises(InputError, match="pid=90"):
        mapping.pid_to_sid(torch.tensor([1, 90]))
    with pytest.raises(InputError, match="pid=-1"):
        mapping.pid_to_sid(torch.tensor([-1]))


# ---- errors --------------------------------------------------------------------------------------
def test_wrong_shape(tmp_path):
    torch.save(torch.arange(10), tmp_path / "flat.pt")
    with pytest.raises(InputError, match=r"flat\.pt: shape=\(10,\)") as err:
        SIDMapping.load(tmp_path / "flat.pt")
    assert "\n" not in str(err.value)


def test_transposed_tensor_is_named_as_such(mapping, tmp_path):
    torch.save(mapping.codes.t().contiguous(), tmp_path / "nh.pt")
    with pytest.raises(InputError, match=r"nh\.pt: shape=.*looks transposed"):
        SIDMapping.load(tmp_path / "nh.pt")


def test_float_dtype(tmp_path):
    torch.save(torch.zeros(3, 4), tmp_path / "float.pt")
    with pytest.raises(InputError, match=r"float\.pt: dtype='torch\.float32'"):
        SIDMapping.load(tmp_path / "float.pt")


def test_codes_outside_codebook(mapping, tmp_path):
    meta_path = mapping.save(tmp_path / "sids")
    meta = json.loads(meta_path.read_text())
    meta["codebook_sizes"] = [6, 5, 9]  # level 1 holds codes up to 6
    meta_path.write_text(json.dumps(meta))
    level1 = mapping.codes[1]
    first_bad = int((level1 >= 5).nonzero()[0])
    with pytest.raises(InputError, match=rf"sids\.json: level 1 item {first_bad}={int(level1[first_bad])}: "
                                         r"code outside 0\.\.4"):
        SIDMapping.load(meta_path)
    codes = mapping.codes.clone()
    codes[2, 7] = -3
    with pytest.raises(InputError, match=r"level 2 item 7=-3"):
        SIDMapping(codes, [6, 7, 9], source="x.pt").validate()
    with pytest.raises(InputError, match="codebook_sizes"):
        SIDMapping(mapping.codes, [6, 7]).validate()


def test_duplicates_with_require_unique():
    codes = torch.stack([torch.arange(20) % 6, torch.arange(20) // 6, torch.zeros(20, dtype=torch.int64)])
    SIDMapping(codes, [6, 7, 9]).validate(require_unique=True)  # all unique: passes
    codes[:, 13] = codes[:, 4]
    assert first_duplicate_items(codes) == (4, 13)
    SIDMapping(codes, [6, 7, 9]).validate()  # duplicates are fine unless uniqueness is required
    with pytest.raises(InputError, match=r"sids\.pt: items 4 and 13=\[4, 0, 0\]: duplicate SID"):
        SIDMapping(codes, [6, 7, 9], source="sids.pt").validate(require_unique=True)


def test_missing_chunk(mapping, tmp_path):
    meta_path = mapping.save(tmp_path / "sids", chunk_size=30)
    (tmp_path / "sids.chunk00001.pt").unlink()
    with pytest.raises(InputError, match=r"sids\.chunk00001\.pt: chunk=.*sids\.chunk00001\.pt.*missing"):
        SIDMapping.load(meta_path)
    with pytest.raises(InputError, match="does not exist"):
        SIDMapping.load(tmp_path / "nothing.pt")


# ---- prefix index vs brute force -----------------------------------------------------------------
@pytest.mark.parametrize("sizes, n", CATALOGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_prefix_index_matches_brute_force(sizes, n, seed):
    codes = random_codes(sizes, n, seed)
    index = PrefixIndex.build(SIDMapping(codes, sizes))
    nodes, items_of = brute_trie(codes)
    H = len(sizes)
    g = torch.Generator().manual_seed(100 + seed)
    for depth in range(H):
        assert index.num_nodes(depth) == len(nodes[depth])
        # a batch of beams: every node, in random order with repeats
        beams = torch.randint(0, len(nodes[depth]), (3 * len(nodes[depth]) + 1,), generator=g)
        mask = index.allowed_mask(depth, beams)
        assert mask.shape == (beams.numel(), sizes[depth]) and mask.dtype == torch.bool
        node_of = {p: i for i, p in enumerate(nodes[depth + 1])}
        for b, node in enumerate(beams.tolist()):
            prefix = nodes[depth][node]
            expected = [(prefix + (c,)) in node_of for c in range(sizes[depth])]
            assert mask[b].tolist() == expected, (depth, prefix)
        codes_q = torch.randint(0, sizes[depth], beams.shape, generator=g)
        child = index.child(depth, beams, codes_q)
        expected = [node_of.get(nodes[depth][nd] + (c,), -1) for nd, c in zip(beams.tolist(), codes_q.tolist())]
        assert child.tolist() == expected
    # lookup: every catalog SID, plus random SIDs (mostly absent) and out-of-range codes
    queries = torch.cat([codes.t(), random_codes(sizes, 64, seed + 50).t(),
                         torch.tensor([[-1] + [0] * (H - 1), [sizes[0]] + [0] * (H - 1)])])
    leaf_of = {s: i for i, s in enumerate(nodes[H])}
    leaves = index.lookup(queries)
    assert leaves.tolist() == [leaf_of.get(tuple(q), -1) for q in queries.tolist()]
    found = leaves[leaves >= 0]
    assert index.leaf_first_item(found).tolist() == [items_of[nodes[H][lf]][0] for lf in found.tolist()]


@pytest.mark.parametrize("sizes, n", CATALOGS[:3])
def test_sid_to_pids_returns_exactly_the_colliding_items(sizes, n):
    codes = random_codes(sizes, n, seed=5)
    index = PrefixIndex.build(codes, sizes)
    _, items_of = brute_trie(codes)
    if n > torch.tensor(sizes).prod():  # pigeonhole: the catalog must contain collisions
        assert any(len(v) > 1 for v in items_of.values())
    queries = torch.cat([codes.t()[:25], random_codes(sizes, 10, seed=9).t()])
    items, owner = index.sid_to_pids(queries)
    got = defaultdict(list)
    for item, row in zip(items.tolist(), owner.tolist()):
        got[row].append(item)
    expected = {r: items_of[tuple(q)] for r, q in enumerate(queries.tolist()) if tuple(q) in items_of}
    assert dict(got) == expected  # every item carrying the SID, in increasing id order, none else
    for row, pids in expected.items():  # round trip PID -> SID -> PIDs
        assert all(codes[:, p].tolist() == queries[row].tolist() for p in pids)


def test_child_rejects_out_of_range_codes():
    # catalog (0,0), (1,0): node*C + code must not alias the next parent's code (node 0, code 2 == node 1, code 0)
    index = PrefixIndex.build(torch.tensor([[0, 1], [0, 0]]), [2, 2])
    assert index.child(0, torch.tensor([0, 0, 0]), torch.tensor([2, -1, 1])).tolist() == [-1, -1, 1]
    assert index.child(1, torch.tensor([0, 0, 1]), torch.tensor([2, 0, -2])).tolist() == [-1, 0, -1]


def test_lexsort_items_is_lexicographic_with_item_tiebreak():
    codes = random_codes([3, 3, 2], 60, seed=11)
    order = lexsort_items(codes).tolist()
    assert order == sorted(range(60), key=lambda p: (tuple(codes[:, p].tolist()), p))


def test_metadata_item_count_must_match_the_tensor(tmp_path):
    import json

    import pytest
    import torch

    from sidgr.errors import InputError
    from sidgr.sid.mapping import SIDMapping

    path = SIDMapping(torch.tensor([[0, 1, 2], [0, 0, 1]]), [3, 2]).save(tmp_path / "sids")
    meta = json.loads(path.read_text())
    meta["num_items"] = 4
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="num_items=4"):
        SIDMapping.load(path)
