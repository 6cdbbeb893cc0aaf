"""A run's data sources: one data_prep output or several, each with a weight (``data.path``, ``data.weights``,
``data.names``), checked to share one tokenizer and seq_len; and what a checkpoint records of the mix, matched
against the run's on resume. How they are blended into an epoch is ``blend.py``'s.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from data_prep.format import DataError, DataSpec, load_data_spec
from pipeline.config import ConfigError
from pipeline.pretrain.blend import Seq


@dataclass
class Source:
    name: str  # a label for metrics and messages (data.names, or the shortest distinct end of its path)
    spec: DataSpec
    weight: float | None  # normalised share of training samples; None: its size (the natural mix)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.spec.train)


@dataclass
class Blend:
    """The run's sources. ``shards`` lists every source's train shards, source after source: plans index into it."""

    sources: list[Source]

    @property
    def shards(self):
        return [s for src in self.sources for s in src.spec.train]

    @property
    def seqs(self) -> list[Seq]:
        out, offset = [], 0
        for src in self.sources:
            out.append(Seq([s.samples for s in src.spec.train], offset))
            offset += len(src.spec.train)
        return out

    @property
    def weights(self) -> list[float] | None:
        """Normalised weights, or None for the natural mix (each source by its size)."""
        return None if self.sources[0].weight is None else [s.weight for s in self.sources]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def first(self) -> DataSpec:
        """The vocabulary, special ids, seq_len and tokenizer every source shares."""
        return self.sources[0].spec

    def describe(self) -> list[dict]:
        """What ``data.json`` keeps of each source."""
        return [
            {"name": s.name, "path": str(s.spec.root.resolve()), "fingerprint": s.spec.fingerprint, "weight": s.weight,
             "train_samples": s.samples}
            for s in self.sources
        ]  # fmt: skip

    def record(self) -> list[dict]:
        """What a checkpoint keeps of the mix (``TrainState.blend["sources"]``)."""
        return [
            {"name": s.name, "fingerprint": s.spec.fingerprint, "weight": s.weight, "samples": s.samples}
            for s in self.sources
        ]


def default_names(paths: list[str]) -> list[str]:
    """The shortest distinct ends of the paths ('wiki/bert128', 'books/bert128'), as metric-friendly labels."""
    parts = [Path(p).parts or (str(p),) for p in paths]
    for k in range(1, max(len(x) for x in parts) + 1):
        names = [re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(x[-k:])).strip("_") or "data" for x in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{n}{i}" for i, n in enumerate(names)]


def load_blend(path, weights=None, names=None) -> Blend:
    """``data.path`` (one directory or a list), ``data.weights`` and ``data.names`` as a checked Blend."""
    paths = [path] if isinstance(path, str | os.PathLike) else [str(p) for p in path]
    if not paths:
        raise ConfigError("data.path=[]: give a data_prep output directory, or a list of them")
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(paths):
            raise ConfigError(f"data.weights has {len(weights)} values for {len(paths)} data.path entries")
        bad = [w for w in weights if not (math.isfinite(w) and w > 0)]
        if bad:
            raise ConfigError(f"data.weights={weights}: every weight must be positive (remove a source instead)")
        weights = [w / math.fsum(weights) for w in weights] if len(paths) > 1 else None  # one source takes all
    if names is not None and (len(names) != len(paths) or len(set(names)) != len(names)):
        raise ConfigError(f"data.names={list(names)}: one distinct name per data.path entry ({len(paths)})")
    names = [str(n) for n in names] if names is not None else default_names(paths)
    specs = [load_data_spec(p) for p in paths]
    sources = [Source(n, s, weights[i] if weights else None) for i, (n, s) in enumerate(zip(names, specs))]
    _check_alike(sources)
    if len(sources) > 1:  # shard names qualified by source, so that a sample's identity is unique in the run
        for src in sources:
            src.spec.train = [replace(s, name=f"{src.name}/{s.name}") for s in src.spec.train]
            src.spec.val = [replace(s, name=f"{src.name}/{s.name}") for s in src.spec.val]
    return Blend(sources)


def _check_alike(sources: list[Source]) -> None:
    """One tokenizer and one seq_len for all; no source twice (it would be read twice in the same order)."""
    a = sources[0]
    seen = {a.spec.fingerprint: a}
    for b in sources[1:]:
        if b.spec.fingerprint and b.spec.fingerprint in seen:
            c = seen[b.spec.fingerprint]
            raise DataError(
                f"data.path: sources {c.name} ({c.spec.root}) and {b.name} ({b.spec.root}) hold the same data "
                f"(manifest fingerprint {b.spec.fingerprint[:12]}): give it once, with the weights summed"
            )
        seen[b.spec.fingerprint] = b
        what = [
            (
                "tokenizer",
                a.spec.tokenizer_sha256 != b.spec.tokenizer_sha256 or a.spec.vocab_size != b.spec.vocab_size,
                f"sha256 {a.spec.tokenizer_sha256[:12]}, {a.spec.vocab_size} tokens vs "
                f"{b.spec.tokenizer_sha256[:12]}, {b.spec.vocab_size} tokens",
                f"prepare {b.name} with data_prep tokenizer.path={a.spec.tokenizer_dir}",
            ),
            ("special ids", a.spec.special_ids != b.spec.special_ids, f"{a.spec.special_ids} vs {b.spec.special_ids}",
             f"prepare {b.name} with data_prep tokenizer.path={a.spec.tokenizer_dir}"),
            ("seq_len", a.spec.seq_len != b.spec.seq_len, f"{a.spec.seq_len} vs {b.spec.seq_len}",
             f"prepare {b.name} with data_prep seq_len={a.spec.seq_len}"),
        ]  # fmt: skip
        for key, differs, detail, fix in what:
            if differs:
                raise DataError(
                    f"data.path: sources {a.name} ({a.spec.root}) and {b.name} ({b.spec.root}) differ in {key} "
                    f"({detail}); every source must share one tokenizer and seq_len: {fix}"
                )


# ---------------------------------------------------------------------------------------------------------------
# The mix a checkpoint recorded, against the run's


def new_state(blend: Blend, epoch: int = 0, samples: int = 0, tokens: int = 0) -> dict:
    """``TrainState.blend`` of a run that starts, or of a checkpoint from before blends (one source, at the start of
    pass ``epoch``, having seen all the run's samples)."""
    return {
        "sources": blend.record(),
        "start": [[epoch, 0] for _ in blend.sources],
        "carry": None,
        "seen": {blend.names[0]: [samples, tokens]} if samples else {},
    }


def match_sources(old: list[dict], new: list[dict]) -> list[int | None]:
    """For each recorded source, the run's source that continues it: the same data (manifest fingerprint), else the
    same name (its data changed: the data check's business), else none (removed). One source before and after is the
    same source, whatever its name (the data check says whether its data changed, as it always has)."""
    if len(old) == 1 and len(new) == 1:
        return [0]
    out: list[int | None] = []
    for o in old:
        j = next((j for j, n in enumerate(new) if o["fingerprint"] and n["fingerprint"] == o["fingerprint"]), None)
        if j is None:
            j = next((j for j, n in enumerate(new) if n["name"] == o["name"]), None)
        out.append(j if j not in out else None)
    return out


def _weights(recs: list[dict]) -> str:
    return ", ".join(f"{r['name']} {'by size' if r['weight'] is None else format(r['weight'], '.4g')}" for r in recs)


def mix_changes(old: list[dict], new: list[dict]) -> list[str]:
    """What differs between a recorded mix and the run's, in words (empty: the same mix)."""
    mapping = match_sources(old, new)
    changes = [f"{o['name']} removed" for o, j in zip(old, mapping) if j is None]
    changes += [f"{n['name']} added" for j, n in enumerate(new) if j not in mapping]
    kept = [(o, new[j]) for o, j in zip(old, mapping) if j is not None]
    if len(new) > 1 or len(old) > 1:  # one source alone takes every sample, whatever its weight
        same = all(
            (o["weight"] is None) == (n["weight"] is None)
            and (o["weight"] is None or math.isclose(o["weight"], n["weight"], rel_tol=1e-9))
            for o, n in kept
        )
        if not same or changes:
            changes.append(f"weights {_weights(old)} -> {_weights(new)}")
    order = [j for j in mapping if j is not None]
    if order != sorted(order):
        changes.append("sources in another order")
    return changes
