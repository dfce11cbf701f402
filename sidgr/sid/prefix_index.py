"""A trie over the catalog's SIDs, stored level by level as sorted arrays (no Python objects per node).

Nodes at depth h are the distinct SID prefixes of length h, numbered 0..M_h-1 in lexicographic order
(depth 0 is the single root, node 0). For each depth h < H:
  child_parent[h][j], child_code[h][j]  -- parent node (depth h) and code of child j (depth h+1),
                                           sorted by (parent, code), so child ids are positions in this array
  child_offsets[h]                      -- CSR offsets: children of parent p are child_offsets[h][p]:[p+1]
Leaves (depth H) map to items through leaf_offsets / leaf_items (several items per leaf when SIDs collide).
Every query takes a whole batch of prefixes and is vectorized: no Python loop over beams or items.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sidgr.sid.mapping import SIDMapping, lexsort_items


@dataclass
class PrefixIndex:
    codebook_sizes: list[int]
    child_parent: list[torch.Tensor]
    child_code: list[torch.Tensor]
    child_offsets: list[torch.Tensor]
    leaf_offsets: torch.Tensor
    leaf_items: torch.Tensor
    _child_keys: dict = field(default_factory=dict, repr=False, compare=False)  # depth -> sorted parent*C+code

    @classmethod
    def build(cls, mapping: SIDMapping | torch.Tensor, codebook_sizes: list[int] | None = None) -> "PrefixIndex":
        codes = mapping.codes if isinstance(mapping, SIDMapping) else torch.as_tensor(mapping, dtype=torch.int64)
        sizes = list(mapping.codebook_sizes if isinstance(mapping, SIDMapping) else
                     (codebook_sizes or [int(v) + 1 for v in codes.max(dim=1).values]))
        H, N = codes.shape
        order = lexsort_items(codes)
        new_prefix = torch.zeros(N, dtype=torch.bool)  # True where the prefix of the current length starts anew
        new_prefix[:1] = True
        node_of_item = torch.zeros(N, dtype=torch.int64)  # depth-h node of each sorted item (root for h=0)
        child_parent, child_code, child_offsets = [], [], []
        for h in range(H):
            level = codes[h][order]  # one sorted level at a time keeps the build's peak memory low
            if N > 1:
                new_prefix[1:] |= level[1:] != level[:-1]
            starts = new_prefix.nonzero().squeeze(1)
            parents = node_of_item[starts]
            child_parent.append(parents)
            child_code.append(level[starts])
            num_parents = 1 if h == 0 else int(child_parent[h - 1].numel())
            child_offsets.append(torch.searchsorted(parents, torch.arange(num_parents + 1)))
            node_of_item = torch.cumsum(new_prefix, 0, dtype=torch.int64).sub_(1)
        leaf_offsets = torch.searchsorted(node_of_item, torch.arange(int(child_parent[-1].numel()) + 1))
        return cls(sizes, child_parent, child_code, child_offsets, leaf_offsets, order)

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    def num_nodes(self, depth: int) -> int:
        return 1 if depth == 0 else int(self.child_parent[depth - 1].numel())

    def allowed_mask(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """[B] node ids at `depth` -> bool [B, C_depth]: True where code extends the prefix to a catalog prefix."""
        nodes = nodes.reshape(-1).to(torch.int64)
        offsets = self.child_offsets[depth]
        start, count = offsets[nodes], offsets[nodes + 1] - offsets[nodes]
        rows = torch.repeat_interleave(torch.arange(nodes.numel()), count)
        first = torch.repeat_interleave(start - (torch.cumsum(count, 0) - count), count)
        cols = self.child_code[depth][torch.arange(rows.numel()) + first]
        mask = torch.zeros(nodes.numel(), self.codebook_sizes[depth], dtype=torch.bool)
        mask[rows, cols] = True
        return mask

    def child(self, depth: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Node at depth+1 reached from `nodes` (depth) by `codes`; -1 where that prefix is not in the catalog."""
        size = self.codebook_sizes[depth]
        if depth not in self._child_keys:  # built once per depth, so a query costs O(log M), not O(M)
            self._child_keys[depth] = self.child_parent[depth] * size + self.child_code[depth]
        keys = self._child_keys[depth]
        query = nodes.to(torch.int64) * size + codes.to(torch.int64)
        pos = torch.searchsorted(keys, query.reshape(-1)).reshape(query.shape)
        hit = (pos < keys.numel()) & (codes >= 0) & (codes < size)  # an out-of-range code must not alias
        hit &= keys[pos.clamp(max=keys.numel() - 1)] == query       # a code of the next parent
        return torch.where(hit, pos, torch.full_like(pos, -1))

    @property
    def prefix_counts(self) -> tuple[int, ...]:
        """Distinct prefixes of length 1..H."""
        return tuple(self.num_nodes(d) for d in range(1, self.num_levels + 1))

    def prefix_nodes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [H, N] (catalog SIDs) -> [H, N]: row h is the node id (at depth h+1) of each item's prefix of
        length h+1. One vectorized trie step per level."""
        node = torch.zeros(codes.shape[1], dtype=torch.int64)
        out = []
        for depth in range(codes.shape[0]):
            node = self.child(depth, node, codes[depth])
            out.append(node)
        nodes = torch.stack(out)
        if bool((nodes < 0).any()):
            raise ValueError("an item's prefix is missing from the trie: index and codes disagree")
        return nodes

    def lookup(self, sids: torch.Tensor) -> torch.Tensor:
        """[B, H] SIDs -> [B] leaf ids (-1 where the SID is not in the catalog)."""
        node = torch.zeros(sids.shape[0], dtype=torch.int64)
        for depth in range(self.num_levels):
            valid = node >= 0
            code = sids[:, depth].clamp(0, self.codebook_sizes[depth] - 1)
            nxt = self.child(depth, node.clamp(min=0), code)
            in_range = (sids[:, depth] >= 0) & (sids[:, depth] < self.codebook_sizes[depth])
            node = torch.where(valid & in_range, nxt, torch.full_like(node, -1))
        return node

    def leaf_ancestors(self) -> list[torch.Tensor]:
        """anc[d][leaf] = the leaf's ancestor node at depth d, for d = 0..H (anc[H] = the leaf itself)."""
        H = self.num_levels
        anc = [torch.empty(0, dtype=torch.int64)] * (H + 1)
        anc[H] = torch.arange(self.num_nodes(H))
        for d in range(H, 0, -1):
            anc[d - 1] = self.child_parent[d - 1][anc[d]]
        return anc

    def item_leaves(self, num_items: int) -> torch.Tensor:
        """[N] leaf id of every item."""
        leaf_of_pos = torch.searchsorted(self.leaf_offsets, torch.arange(self.leaf_items.numel()), right=True) - 1
        out = torch.empty(num_items, dtype=torch.int64)
        out[self.leaf_items] = leaf_of_pos
        return out

    def leaf_sizes(self, leaves: torch.Tensor) -> torch.Tensor:
        return self.leaf_offsets[leaves + 1] - self.leaf_offsets[leaves]

    def leaf_first_item(self, leaves: torch.Tensor) -> torch.Tensor:
        """The lowest item id of each leaf (the only one when SIDs are unique)."""
        return self.leaf_items[self.leaf_offsets[leaves]]

    def leaf_to_items(self, leaves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expand [B] leaves into (items, owner) where owner[i] is the index into `leaves` of items[i];
        items of one leaf come in increasing item id."""
        leaves = leaves.reshape(-1)
        start, count = self.leaf_offsets[leaves], self.leaf_sizes(leaves)
        owner = torch.repeat_interleave(torch.arange(leaves.numel()), count)
        first = torch.repeat_interleave(start - (torch.cumsum(count, 0) - count), count)
        return self.leaf_items[torch.arange(owner.numel()) + first], owner

    def sid_to_pids(self, sids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, H] SIDs -> (items, owner) for all items carrying each SID (owner indexes rows of `sids`)."""
        leaves = self.lookup(sids)
        found = (leaves >= 0).nonzero().squeeze(1)
        items, owner = self.leaf_to_items(leaves[found])
        return items, found[owner]
