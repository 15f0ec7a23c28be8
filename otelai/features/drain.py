"""Online log template mining: Drain, with bounded memory and decayed template frequencies.

Implements Drain (P. He, J. Zhu, Z. Zheng, M. R. Lyu, "Drain: An Online Log Parsing Approach
with Fixed Depth Tree", ICWS 2017) as the ``drain3`` package does (same tree, same similarity,
same defaults: depth 4, similarity 0.4, 100 children a node), so templates match drain3's on
the same masked input. A line is masked (numbers, hex, UUIDs become ``<*>``), split on
whitespace, routed by its token count and its first ``depth - 2`` tokens (tokens holding a
digit go to a ``<*>`` child) to a leaf, and joins the leaf's template with the most equal
non-wildcard tokens if that share reaches the threshold (positions that differ become
``<*>``), or starts a new template.

What differs from drain3, and why:

* Two exact-match caches in front of the tree (raw line, then masked line): logs repeat, and a
  hit costs one dict lookup instead of a regex and a tree search. A line that matched a
  template keeps matching it (templates only generalise), so a hit never changes a template.
  The one departure: a line keeps the template it first joined even if a more similar
  template appears in the same leaf later; ids stay stable per line, which is what we want.
* Similarity counts equal tokens with one C-level ``map(operator.eq, ...)`` per candidate,
  wildcards replaced by a sentinel that equals nothing; same numbers as drain3's loop.
* The number of templates is bounded: past ``max_templates`` the rarest (by decayed count)
  are evicted, not the least recently used. Template ids are never reused.
* Each template keeps a count decayed per record (half-life ``half_life`` records), so its
  frequency, and rarity ``-log(frequency)``, follows the recent mix of the stream.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

WILDCARD = "<*>"
SNAPSHOT_VERSION = 1

# One pass over the line; alternatives in priority order. Numbers only when they stand alone
# (not inside an identifier like "R02-M1"): Drain routes digit-holding tokens to <*> anyway.
MASK = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|(?<![A-Za-z0-9])0[xX][0-9a-fA-F]+(?![A-Za-z0-9])"  # 0x hex
    r"|(?<![A-Za-z0-9])(?=[a-fA-F]*[0-9])[0-9a-fA-F]{8,}(?![A-Za-z0-9])"  # long hex with a digit
    r"|(?<![A-Za-z0-9])[0-9]+(?:\.[0-9]+)*(?![A-Za-z0-9])"  # numbers, versions, IPv4
)
_DIGIT = re.compile(r"[0-9]")
_CACHE_MAX_LINE = 512  # longer lines (stack traces) are not cached: memory, and rarely repeat


class _Unmatchable:
    """Stands for a wildcard in the tokens compared with a line: equals no token."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0


_NEVER = _Unmatchable()


class _Node:
    __slots__ = ("children", "clusters")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.clusters: list[_Cluster] = []


class _Cluster:
    __slots__ = ("alive", "compare", "id", "leaf", "path", "slot", "tokens", "wildcards")

    def __init__(self, cluster_id: int, slot: int, tokens: tuple[str, ...]) -> None:
        self.id = cluster_id
        self.slot = slot
        self.alive = True
        self.leaf: _Node | None = None
        self.path: tuple[str, ...] = ()
        self.tokens: tuple[str, ...] = ()
        self.compare: tuple[object, ...] = ()
        self.wildcards = 0
        self.set_tokens(tokens)

    def set_tokens(self, tokens: tuple[str, ...]) -> None:
        self.tokens = tokens
        self.compare = tuple(_NEVER if token == WILDCARD else token for token in tokens)
        self.wildcards = tokens.count(WILDCARD)


@dataclass(frozen=True, slots=True)
class Matches:
    """What :meth:`TemplateMiner.add_batch` found for each line of a batch.

    Attributes
    ----------
    ids
        Template id (int64), stable for the life of the miner and across snapshots.
    slots
        Dense index of the template (int32) in ``[0, capacity)``, for per-template arrays;
        reused after an eviction, when ``created`` is set again.
    created
        Whether the line's template was created in this batch.
    rarity
        ``-log`` of the template's decayed frequency, after counting this batch.
    """

    ids: npt.NDArray[np.int64]
    slots: npt.NDArray[np.int32]
    created: npt.NDArray[np.bool_]
    rarity: npt.NDArray[np.float64]


class TemplateMiner:
    """Drain template miner over a stream of log lines (see the module docstring).

    Parameters
    ----------
    depth
        Depth of the parse tree, drain3's meaning: ``depth - 2`` leading tokens route a line.
    similarity
        Share of equal tokens needed to join a template.
    max_children
        Children per tree node before new tokens share the ``<*>`` child.
    max_templates
        Templates kept; past it the rarest are evicted down to 90 % of it.
    half_life
        Records after which a template's count has halved.
    cache_size
        Entries in each exact-match cache before it is cleared; 0 turns the caches off.
    """

    def __init__(
        self,
        *,
        depth: int = 4,
        similarity: float = 0.4,
        max_children: int = 100,
        max_templates: int = 4096,
        half_life: float = 10_000.0,
        cache_size: int = 65_536,
    ) -> None:
        if depth < 3:
            raise ValueError("depth must be at least 3")
        if max_templates < 1 or half_life <= 0:
            raise ValueError("max_templates must be >= 1 and half_life > 0")
        self.depth = depth
        self.similarity = similarity
        self.max_children = max_children
        self.max_templates = max_templates
        self.half_life = half_life
        self.cache_size = cache_size
        self._max_node_depth = depth - 2
        self._root: dict[int, _Node] = {}
        self._by_slot: list[_Cluster | None] = []
        self._free: list[int] = []
        self._next_id = 1
        self._by_id: dict[int, _Cluster] = {}
        self._counts = np.zeros(64, dtype=np.float64)  # decayed count per slot
        self._ids = np.full(64, -1, dtype=np.int64)  # template id per slot
        self._total = 0.0
        self._raw_cache: dict[str, _Cluster] = {}
        self._masked_cache: dict[str, _Cluster] = {}
        self.evicted = 0

    @property
    def templates(self) -> int:
        """Templates alive."""
        return len(self._by_slot) - len(self._free)

    @property
    def capacity(self) -> int:
        """Current length of per-slot arrays (slots are below it)."""
        return len(self._by_slot)

    def template(self, template_id: int) -> str | None:
        """The template text of ``template_id``, ``None`` when unknown or evicted."""
        cluster = self._by_id.get(template_id)
        return " ".join(cluster.tokens) if cluster is not None else None

    def templates_by_slot(self, slots: npt.NDArray[np.int32]) -> list[str]:
        """Template texts of ``slots`` (as returned by the last :meth:`add_batch`)."""
        by_slot = self._by_slot
        return [" ".join(c.tokens) if (c := by_slot[s]) is not None else "" for s in slots.tolist()]

    def add_batch(self, lines: Sequence[str]) -> Matches:
        """Match (and learn from) a batch of lines; count them; evict if over the bound."""
        found: list[int] = []
        created: list[int] = []
        raw_get = self._raw_cache.get
        for index, line in enumerate(lines):
            cluster = raw_get(line)
            if cluster is None or not cluster.alive:
                cluster, is_new = self._add_line(line)
                if is_new:
                    created.append(index)
            found.append(cluster.slot)
        slots = np.array(found, dtype=np.int32)
        ids = self._ids[slots]
        rarity = self._count(slots)
        created_mask = np.zeros(len(found), dtype=np.bool_)
        created_mask[created] = True
        if self.templates > self.max_templates:
            self._evict(self.max_templates * 9 // 10)
        return Matches(ids=ids, slots=slots, created=created_mask, rarity=rarity)

    def _count(self, slots: npt.NDArray[np.int32]) -> npt.NDArray[np.float64]:
        decay = 0.5 ** (slots.size / self.half_life)
        self._counts *= decay
        self._total = self._total * decay + slots.size
        self._counts += np.bincount(slots, minlength=self._counts.size)
        if slots.size == 0:
            return np.zeros(0, dtype=np.float64)
        rarity: npt.NDArray[np.float64] = np.log(self._total) - np.log(self._counts[slots])
        return rarity

    def _add_line(self, line: str) -> tuple[_Cluster, bool]:
        masked = MASK.sub(WILDCARD, line)
        cluster = self._masked_cache.get(masked)
        is_new = False
        if cluster is None or not cluster.alive:
            tokens = masked.split()
            cluster = self._search(tokens)
            if cluster is None:
                cluster = self._create(tuple(tokens))
                is_new = True
            else:
                self._generalise(cluster, tokens)
            self._remember(self._masked_cache, masked, cluster)
        self._remember(self._raw_cache, line, cluster)
        return cluster, is_new

    def _remember(self, cache: dict[str, _Cluster], key: str, cluster: _Cluster) -> None:
        if len(key) > _CACHE_MAX_LINE or self.cache_size <= 0:
            return
        if len(cache) >= self.cache_size:
            cache.clear()
        cache[key] = cluster

    def _search(self, tokens: list[str]) -> _Cluster | None:
        count = len(tokens)
        node = self._root.get(count)
        if node is None:
            return None
        depth = 1
        for token in tokens:
            if depth >= self._max_node_depth or depth == count:
                break
            children = node.children
            child = children.get(token) or children.get(WILDCARD)
            if child is None:
                return None
            node = child
            depth += 1
        return self._best(node.clusters, tokens)

    def _best(self, clusters: list[_Cluster], tokens: list[str]) -> _Cluster | None:
        if not tokens:
            return clusters[0] if clusters else None
        best: _Cluster | None = None
        best_equal, best_wild = -1, -1
        eq = operator.eq
        for cluster in clusters:
            equal = sum(map(eq, cluster.compare, tokens))
            if equal > best_equal or (equal == best_equal and cluster.wildcards > best_wild):
                best, best_equal, best_wild = cluster, equal, cluster.wildcards
        if best is not None and best_equal / len(tokens) >= self.similarity:
            return best
        return None

    def _generalise(self, cluster: _Cluster, tokens: list[str]) -> None:
        template = cluster.tokens
        if sum(map(operator.eq, cluster.compare, tokens)) + cluster.wildcards == len(tokens):
            return  # every non-wildcard position already equal
        merged = tuple(old if old == new else WILDCARD for old, new in zip(template, tokens, strict=True))
        if merged != template:
            cluster.set_tokens(merged)

    def _create(self, tokens: tuple[str, ...]) -> _Cluster:
        slot = self._free.pop() if self._free else len(self._by_slot)
        cluster = _Cluster(self._next_id, slot, tokens)
        self._next_id += 1
        self._place(cluster)
        self._insert(cluster, self._route(tokens))
        return cluster

    def _place(self, cluster: _Cluster) -> None:
        slot = cluster.slot
        if slot == len(self._by_slot):
            self._by_slot.append(cluster)
        else:
            self._by_slot[slot] = cluster
        if slot >= self._counts.size:
            size = max(slot + 1, 2 * self._counts.size)
            self._counts = np.concatenate([self._counts, np.zeros(size - self._counts.size)])
            self._ids = np.concatenate([self._ids, np.full(size - self._ids.size, -1, dtype=np.int64)])
        self._counts[slot] = 0.0
        self._ids[slot] = cluster.id
        self._by_id[cluster.id] = cluster

    def _route(self, tokens: tuple[str, ...]) -> tuple[str, ...]:
        """The child keys a new template takes below its token-count node (drain3's rules)."""
        count = len(tokens)
        node = self._root.setdefault(count, _Node())
        path: list[str] = []
        depth = 1
        for token in tokens:
            if depth >= self._max_node_depth or depth >= count:
                break
            children = node.children
            if token in children:
                key = token
            elif _DIGIT.search(token):
                key = WILDCARD
            elif WILDCARD in children:
                key = token if len(children) < self.max_children else WILDCARD
            elif len(children) + 1 < self.max_children:
                key = token
            else:
                key = WILDCARD
            node = children.setdefault(key, _Node())
            path.append(key)
            depth += 1
        return tuple(path)

    def _insert(self, cluster: _Cluster, path: tuple[str, ...]) -> None:
        node = self._root.setdefault(len(cluster.tokens), _Node())
        for key in path:
            node = node.children.setdefault(key, _Node())
        node.clusters.append(cluster)
        cluster.leaf = node
        cluster.path = path

    def _evict(self, keep: int) -> None:
        live = np.array([c.slot for c in self._by_slot if c is not None], dtype=np.int64)
        excess = live.size - keep
        if excess <= 0:
            return
        victims = live[np.argpartition(self._counts[live], excess - 1)[:excess]]
        for slot in victims.tolist():
            cluster = self._by_slot[slot]
            assert cluster is not None
            cluster.alive = False
            if cluster.leaf is not None:
                cluster.leaf.clusters.remove(cluster)
            self._by_slot[slot] = None
            del self._by_id[cluster.id]
            self._counts[slot] = 0.0
            self._ids[slot] = -1
            self._free.append(slot)
        self.evicted += excess

    def snapshot(self) -> dict[str, Any]:
        """The miner's state as plain JSON-able data (caches excluded)."""
        clusters = sorted((c for c in self._by_slot if c is not None), key=lambda c: c.id)
        return {
            "version": SNAPSHOT_VERSION,
            "settings": {
                "depth": self.depth,
                "similarity": self.similarity,
                "max_children": self.max_children,
                "max_templates": self.max_templates,
                "half_life": self.half_life,
                "cache_size": self.cache_size,
            },
            "next_id": self._next_id,
            "total": self._total,
            "templates": [
                {
                    "id": c.id,
                    "tokens": list(c.tokens),
                    "path": list(c.path),
                    "count": float(self._counts[c.slot]),
                }
                for c in clusters
            ],
        }

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> TemplateMiner:
        """A miner in the state :meth:`snapshot` saved (ids, templates, tree, counts)."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported template miner snapshot version {snapshot.get('version')!r}")
        miner = cls(**snapshot["settings"])
        miner._next_id = int(snapshot["next_id"])
        miner._total = float(snapshot["total"])
        for slot, entry in enumerate(snapshot["templates"]):
            cluster = _Cluster(int(entry["id"]), slot, tuple(entry["tokens"]))
            miner._place(cluster)
            miner._insert(cluster, tuple(entry["path"]))
            miner._counts[slot] = float(entry["count"])
        return miner
