"""The levels a pretrained model must beat, read from a prepared data directory: validation MLM accuracy of always
predicting the most frequent token, and NSP accuracy of always predicting the majority class. Reads the val shards
with data_prep/format.py's decoder only (no pickle)."""

from __future__ import annotations

import json
import math
import tarfile
from collections import Counter
from pathlib import Path

from data_prep.format import decode_ids


def unigram_level(data: Path) -> float | None:
    """Validation MLM accuracy of always predicting the most frequent token: the plateau a model must leave."""
    data = Path(data)
    manifest = json.loads((data / "manifest.json").read_text())
    special = set(manifest["tokenizer"]["special_ids"].values())
    counts: Counter = Counter()
    for shard in sorted(data.glob("val-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".input_ids.npy"):
                    ids = decode_ids(tar.extractfile(m).read())
                    counts.update(int(i) for i in ids if int(i) not in special)
    total = sum(counts.values())
    return counts.most_common(1)[0][1] / total if total else None


def nsp_majority(manifest: dict) -> float:
    """Validation NSP accuracy of always the majority class. data_prep draws random next sentences with probability
    0.5, but short documents shift the mix: not 0.5 exactly."""
    val = manifest["splits"].get("val", {})
    n, rnd = val.get("samples", 0), val.get("random_next", 0)
    return max(rnd, n - rnd) / n if n else math.nan
