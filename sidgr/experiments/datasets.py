"""What the demo runs per dataset: its configs, which SIDs it compares, and how it is prepared.

Text SIDs tokenize the items' text embeddings; collaborative SIDs tokenize item embeddings exported from the
SASRec-CE model the demo trains on the train split (`sidgr export-embeddings`), alone or fused with text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

BALANCED_64 = ["--method", "balanced", "--codebook-sizes", "64,64,64"]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source_required: bool  # `sidgr prepare NAME` has no built-in source
    text_sids: dict[str, list[str]]  # SIDs name -> `sidgr tokenize` flags on the item text
    collab_sids: dict[str, list[str]] = field(default_factory=dict)  # name -> `sidgr export-embeddings` flags
    primary: str = "balanced"  # the SIDs the item-level SID-input baseline and the beam-vs-exact sweep use
    valid_users: int = 0  # SID-GR checkpoint selection on this many valid users (0 = all), for big datasets
    sweep_users: int = 0  # the beam-vs-exact sweep on this many test users (0 = all): exact scoring grows with N
    note: str = ""  # printed beside every result of the dataset
    timed: bool = True  # timestamps are times (Beauty's are list positions: no "newest item" to hold out)
    # the published protocol reads (and removes from the ranking) only the last N history items; 0 = all of them
    published_history: int = 0
    published_protocol: str = ""
    published: tuple = ()  # (row, {metric: value}) as published, under published_protocol
    # what the demo runs by default, sized to its CPU budget (ml100k 20 min, Beauty 90, ML-1M 150 on 2 cores);
    # empty: every SIDs of the dataset. `--sids` and `--beam-width` override.
    demo_sids: tuple = ()
    demo_sid_input: bool = True  # the SID-input baseline (`--sid-input` / `--no-sid-input` override)
    beam_width: int = 256  # SID-GR's beam (and, by default, dense candidates) as chosen on validation
    # the beam SID-GR checkpoints are scored with on valid (0: beam_width): a narrower one where its valid top-10
    # equals the wide beam's (ml100k: W = 64 scores every checkpoint of the session-19 demo as W = 256 does, to
    # one user in 943), at a third of the cost
    select_beam_width: int = 0

    @property
    def published_split(self) -> str:
        """The test split's name under the published protocol ("test" when it reads whole histories)."""
        return f"test_last{self.published_history}" if self.published_history else "test"

    def config(self, family: str = "") -> str:
        return f"configs/{self.name}{'_' + family if family else ''}.gin"


DATASETS = {
    "ml100k": DatasetSpec(
        "ml100k", False, text_sids={"balanced": BALANCED_64},
        collab_sids={"collab": ["--table", "items"], "fused": ["--table", "items", "--fuse-text", "0.3"]},
        sweep_users=250, select_beam_width=64),
    "beauty": DatasetSpec(
        "beauty", True, text_sids={"text": BALANCED_64},
        collab_sids={"collab": ["--table", "items"], "fused": ["--table", "items", "--fuse-text", "0.3"]},
        primary="text", valid_users=3000, sweep_users=250, timed=False, demo_sids=("collab",),
        note="item text is brand + category path only (the TIGER paper also had titles and descriptions)",
        published_protocol="TIGER paper (Rajput et al. 2023): the same 5-core split, leave-one-out, full ranking",
        published=(("TIGER", {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384}),)),
    "ml1m": DatasetSpec(
        "ml1m", True, text_sids={"text": BALANCED_64},
        collab_sids={"collab": ["--table", "items"], "fused": ["--table", "items", "--fuse-text", "0.3"]},
        primary="text", valid_users=2000, sweep_users=250, published_history=200, demo_sids=("collab",),
        demo_sid_input=False, beam_width=64,
        published_protocol="generative-recommenders README: leave-one-out, full ranking, the last 200 history items "
                           "read and removed from the ranking (HR@10 = our recall@10)",
        published=(("SASRec", {"recall@10": 0.2853, "ndcg@10": 0.1603}),
                   ("HSTU", {"recall@10": 0.3097, "ndcg@10": 0.1720}),
                   ("HSTU-large", {"recall@10": 0.3294, "ndcg@10": 0.1893}))),
}
