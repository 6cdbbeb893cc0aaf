"""A pretraining run's data sources seen from the loop: the resume check of the data and the mix, the samples and
tokens seen per source, the validation metrics per source and of the mix, and what summary.json and metrics.jsonl
say about them. The plan itself is blend.py's (and elastic.py's, when it changes mid-epoch).

Per-source keys appear once a run has several sources: ``samples/<name>``, ``tokens/<name>``, ``passes/<name>``
(samples seen / the source's train samples) on the training records, ``val_loss/<name>`` (and the MLM/NSP losses
and accuracies) on the validation records. ``val_loss`` and its siblings are then those of the mix: the per-source
values weighted by the blend's weights (the loss the training distribution would give), not a pool of the val
splits at their natural sizes.
"""

from __future__ import annotations

from data_prep.format import DataSpec
from pipeline.config import ConfigError
from pipeline.pretrain.sources import Blend, match_sources, mix_changes, new_state

VAL_KEYS = ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc")


def recorded_mix(state: dict, blend: Blend) -> dict:
    """A checkpoint's ``blend`` record; for a checkpoint from before blends, its one source under the name of the
    run's first source (the data check decides whether that source's data are the same)."""
    if state.get("blend"):
        return state["blend"]
    rec = new_state(blend, int(state.get("epoch", 0)), int(state.get("samples", 0)), int(state.get("tokens", 0)))
    first = {**rec["sources"][0], "fingerprint": state.get("data_fingerprint", ""), "weight": None}
    return {**rec, "sources": [first], "start": rec["start"][:1]}


def check_resume(state: dict, blend: Blend, allow_change: bool) -> None:
    """Another world size, loader_workers or micro-batch is fine (universal checkpoint, re-split data); other data
    in a source, another tokenizer or another mix of sources is refused unless ``data.allow_data_change``."""
    if allow_change:
        return
    rec = recorded_mix(state, blend)
    now = blend.record()
    for o, j in zip(rec["sources"], match_sources(rec["sources"], now)):
        if j is None or not o["fingerprint"] or o["fingerprint"] == now[j]["fingerprint"]:
            continue
        spec: DataSpec = blend.sources[j].spec
        what = "data" if len(now) == 1 else f"source {now[j]['name']}: data"
        raise ConfigError(
            f"{what} at {spec.root} differs from the data this checkpoint was trained on (manifest fingerprint "
            f"{spec.fingerprint[:12]} != {o['fingerprint'][:12]}). Point data.path at the original data, or set "
            f"data.allow_data_change=true to continue on new data deliberately."
        )
    if state.get("tokenizer_sha256") and state["tokenizer_sha256"] != blend.first.tokenizer_sha256:
        raise ConfigError(
            f"the tokenizer of {blend.first.root} differs from the checkpoint's; the embeddings would be meaningless. "
            f"Set data.allow_data_change=true only if the vocabulary is the same."
        )
    changes = mix_changes(rec["sources"], now)
    if changes:
        raise ConfigError(
            f"data.path/data.weights: the mix differs from the checkpoint's ({'; '.join(changes)}). Resume with the "
            f"checkpoint's sources and weights, or set data.allow_data_change=true to apply the new mix from step "
            f"{state.get('step', 0)} on (every source continues from where it is)."
        )


def local_counts(blend: Blend, micro: list[dict], bad: list[bool]) -> list[float]:
    """This rank's samples, then tokens, per source, over the micro-batches of a step that were used."""
    n = len(blend.sources)
    out = [0.0] * (2 * n)
    for mb, skipped in zip(micro, bad or [False] * len(micro)):
        if skipped:
            continue
        meta = mb["meta"]
        for s in range(n):
            out[s] += meta["source_samples"][s]
            out[n + s] += meta["source_tokens"][s]
    return out


def add_counts(state, blend: Blend, summed: list[float]) -> None:
    """The step's per-source samples and tokens over all ranks (``local_counts`` summed), added to the state."""
    n = len(blend.sources)
    seen = state.blend.setdefault("seen", {})
    for s, name in enumerate(blend.names):
        samples, tokens = seen.get(name, [0, 0])
        seen[name] = [samples + int(summed[s]), tokens + int(summed[n + s])]


def train_record(state, blend: Blend) -> dict:
    """Per-source keys of a training record (none for a single source)."""
    if len(blend.sources) < 2:
        return {}
    rec = {}
    for src in blend.sources:
        samples, tokens = state.blend.get("seen", {}).get(src.name, [0, 0])
        rec[f"samples/{src.name}"] = samples
        rec[f"tokens/{src.name}"] = tokens
        rec[f"passes/{src.name}"] = samples / max(src.samples, 1)
    return rec


def val_record(per_source: dict[str, dict], blend: Blend) -> dict:
    """Validation of a blend: each source's metrics (``val_loss/<name>``...) and the mix's (``val_loss``...): the
    per-source values weighted by the blend (sources without a val split left out, the others' weights renormalised)."""
    if not per_source:
        return {}
    weights = blend.weights or [s.samples for s in blend.sources]
    w = {s.name: wt for s, wt in zip(blend.sources, weights) if s.name in per_source}
    total = sum(w.values())
    rec = {f"val_{k}": sum(w[n] * m[f"val_{k}"] for n, m in per_source.items()) / total for k in VAL_KEYS}
    for name, m in per_source.items():
        rec.update({f"val_{k}/{name}": m[f"val_{k}"] for k in VAL_KEYS})
    return rec


def summary(state, blend: Blend) -> dict:
    """summary.json's ``sources`` section: per source its path, weight, samples and tokens seen, passes. Sources a
    mix change removed keep their counts."""
    seen = state.blend.get("seen", {})
    out = {}
    for src, weight in zip(blend.sources, blend.weights or [None] * len(blend.sources)):
        samples, tokens = seen.get(src.name, [0, 0])
        out[src.name] = {
            "path": str(src.spec.root),
            "weight": weight if weight is not None else "by size",
            "train_samples": src.samples,
            "samples": samples,
            "tokens": tokens,
            "passes": samples / max(src.samples, 1),
        }
    for name, (samples, tokens) in seen.items():
        out.setdefault(name, {"removed": True, "samples": samples, "tokens": tokens})
    return out
