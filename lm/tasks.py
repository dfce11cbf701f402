"""Training and evaluation text, rendered from the project's own artefacts (items, SID mapping, train split).

An example is token ids plus, per token, how it is learned as a target: NO_LOSS, TEXT (softmax over the whole
vocabulary) or 1 + h (softmax over level h's code tokens only, which is also how generation scores them).
Tasks:
  history      "A user's movies, oldest first:" + items; every code of every item after the first is a target
               (each position is a next-item prediction, as in SASRec's training); the user's first window of an
               epoch may end with an instruction: one of INSTRUCTIONS ("Recommend a Comedy movie:", ...) + the
               next item of that genre in the user's train sequence (sharing the history's tokens).
  sid->title   "Movie <sid> is titled:" + " Toy Story (1995)" + end of text.
  title->sid   "The movie titled Toy Story (1995) is:" + <sid>.
Only train.parquet sequences are used, so no valid or test target appears in training text (leave-one-out), and
a seeded share of items (`heldout_item_fraction`) never appears in the catalog tasks."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .vocab import SidVocab

NO_LOSS = -1
TEXT = 0
INSTRUCTIONS = ("\nRecommend a {genre} {noun}:", "\nSomething like these, but a {genre} {noun}:",
                "\nNext, a {genre} {noun} they would enjoy:")


@dataclass
class Example:
    ids: list[int]
    kinds: list[int]  # per token: NO_LOSS, TEXT, or 1 + level (a SID code target)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Catalog:
    """What the tasks know about items: display names, genres (may be empty), SIDs."""
    names: list[str]  # "Toy Story (1995)"
    genres: list[list[str]]
    sids: torch.Tensor  # [N, H]

    @property
    def num_items(self) -> int:
        return len(self.names)


def item_names(table) -> list[str]:
    """Title with year where items.parquet has them (ml100k, ml1m), else the item text (Beauty)."""
    cols = table.column_names
    if "title" in cols:
        titles = table.column("title").to_pylist()
        years = table.column("year").to_pylist() if "year" in cols else [None] * len(titles)
        return [f"{t} ({y})" if y else str(t) for t, y in zip(titles, years)]
    return [str(t) for t in table.column("text").to_pylist()]


def heldout_items(num_items: int, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    return np.sort(rng.choice(num_items, size=int(round(num_items * fraction)), replace=False))


class TaskRenderer:
    def __init__(self, tokenizer, vocab: SidVocab, catalog: Catalog, noun: str = "movie"):
        self.tok, self.vocab, self.catalog, self.noun = tokenizer, vocab, catalog, noun
        self.item_ids = vocab.item_tokens(catalog.sids).tolist()
        self.eos = tokenizer.eos_token_id

    @lru_cache(maxsize=None)
    def text(self, s: str) -> tuple[int, ...]:
        return tuple(self.tok.encode(s, add_special_tokens=False))

    def _item(self, pid: int, target: bool) -> tuple[list[int], list[int]]:
        ids = self.item_ids[pid]
        if not target:
            return ids, [NO_LOSS] * len(ids)
        return ids, [NO_LOSS] + [1 + h for h in range(self.vocab.num_levels)] + [NO_LOSS]

    def _history(self, items, learn: bool = False) -> tuple[list[int], list[int]]:
        """The history prompt; learn=True makes every item after the first a target."""
        ids = list(self.text(f"A user's {self.noun}s, oldest first:"))
        kinds = [NO_LOSS] * len(ids)
        for j, pid in enumerate(items):
            i, k = self._item(int(pid), target=learn and j > 0)
            ids += i
            kinds += k
        return ids, kinds

    # ---- training examples
    def history_example(self, items, instruction: tuple[str, int, int] | None = None) -> Example:
        """A window whose every item after the first is a target; instruction = (genre, target item, template)
        appends the request and its answer."""
        ids, kinds = self._history(items, learn=True)
        if instruction is not None:
            genre, target, template = instruction
            ask = self.text(self.instruction_text(genre, template))
            t_ids, t_kinds = self._item(int(target), target=True)
            ids, kinds = ids + list(ask) + t_ids, kinds + [NO_LOSS] * len(ask) + t_kinds
        return Example(ids, kinds)

    def sid_to_title_example(self, pid: int) -> Example:
        prompt = self.sid_to_title_prompt(pid)
        answer = list(self.text(" " + self.catalog.names[pid])) + [self.eos]
        return Example(prompt + answer, [NO_LOSS] * len(prompt) + [TEXT] * len(answer))

    def title_to_sid_example(self, pid: int) -> Example:
        prompt = list(self.text(self.title_to_sid_text(pid)))
        t_ids, t_kinds = self._item(pid, target=True)
        return Example(prompt + t_ids, [NO_LOSS] * len(prompt) + t_kinds)

    # ---- prompts (generation continues after them)
    def instruction_text(self, genre: str, template: int = 0) -> str:
        return INSTRUCTIONS[template].format(genre=genre, noun=self.noun)

    def title_to_sid_text(self, pid: int) -> str:
        return f"The {self.noun} titled {self.catalog.names[pid]} is:"

    def recommend_prompt(self, history, genre: str | None = None, template: int = 0) -> list[int]:
        """History (and an optional genre instruction) followed by the begin token the SID beam continues."""
        ids, _ = self._history(history)
        if genre is not None:
            ids += list(self.text(self.instruction_text(genre, template)))
        return ids + [self.vocab.begin_id]

    def sid_to_title_prompt(self, pid: int) -> list[int]:
        return (list(self.text(f"{self.noun.capitalize()} ")) + self.item_ids[pid]
                + list(self.text(" is titled:")))

    def title_to_sid_prompt(self, pid: int) -> list[int]:
        return list(self.text(self.title_to_sid_text(pid))) + [self.vocab.begin_id]


def genre_targets(seq: np.ndarray, cut: int, genres: list[list[str]], lookahead: int = 10) -> list[int]:
    """Items after `cut` (within `lookahead`) that carry at least one genre."""
    return [int(p) for p in seq[cut:cut + lookahead] if genres[int(p)]]


def epoch_examples(renderer: TaskRenderer, sequences: list[np.ndarray], seed: int, epoch: int,
                   history_items: int, windows_per_user: int, instructions: bool, catalog_repeats: int,
                   catalog_items: np.ndarray) -> list[Example]:
    """One epoch's examples in a seeded shuffled order: random history windows per user (windows end anywhere,
    so over epochs every train interaction is a target), the first one with a genre instruction when the user's
    sequence has a genre item soon after it, and the catalog tasks."""
    rng = np.random.default_rng([seed, epoch])
    genres = renderer.catalog.genres
    out: list[Example] = []
    for seq in sequences:
        if len(seq) < 2:
            continue
        for w in range(windows_per_user):
            end = int(rng.integers(2, len(seq) + 1))
            instruction = None
            targets = genre_targets(seq, end, genres) if instructions and w == 0 else []
            if targets:
                target = targets[int(rng.integers(len(targets)))]
                genre = genres[target][int(rng.integers(len(genres[target])))]
                instruction = (genre, target, int(rng.integers(len(INSTRUCTIONS))))
            out.append(renderer.history_example(seq[max(0, end - history_items):end], instruction))
    for _ in range(catalog_repeats):
        out += [renderer.sid_to_title_example(int(p)) for p in catalog_items]
        out += [renderer.title_to_sid_example(int(p)) for p in catalog_items]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [R, T]
    position_ids: torch.Tensor  # [R, T], restarting at 0 for each example (transformers then masks across them)
    kinds: torch.Tensor  # [R, T] the loss kind of each token as a target


def pack(examples: list[Example], seq_len: int, pad_id: int) -> list[tuple[list[int], list[int], list[int]]]:
    """First-fit packing into rows of seq_len tokens; an example longer than a row is cut from the left (its
    oldest history). Returns rows of (ids, positions, kinds), unpadded."""
    rows: list[tuple[list[int], list[int], list[int]]] = []
    room: list[int] = []
    for ex in examples:
        ids, kinds = ex.ids[-seq_len:], ex.kinds[-seq_len:]
        kinds = [NO_LOSS] + kinds[1:]  # the first token of a row-part is never a target
        n = len(ids)
        slot = next((r for r, free in enumerate(room) if free >= n), None)
        if slot is None:
            rows.append(([], [], []))
            room.append(seq_len)
            slot = len(rows) - 1
        rows[slot][0].extend(ids)
        rows[slot][1].extend(range(n))
        rows[slot][2].extend(kinds)
        room[slot] -= n
    return rows


def collate(rows, seq_len: int, pad_id: int) -> PackedBatch:
    """Pad rows to seq_len; padding is its own position run (0, 1, ...) and never a target."""
    R = len(rows)
    ids = torch.full((R, seq_len), pad_id, dtype=torch.int64)
    pos = torch.zeros((R, seq_len), dtype=torch.int64)
    kinds = torch.full((R, seq_len), NO_LOSS, dtype=torch.int64)
    for r, (i, p, k) in enumerate(rows):
        n = len(i)
        ids[r, :n], pos[r, :n], kinds[r, :n] = torch.tensor(i), torch.tensor(p), torch.tensor(k)
        pos[r, n:] = torch.arange(seq_len - n)
    return PackedBatch(ids, pos, kinds)
