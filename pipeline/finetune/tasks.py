"""Finetuning data: read a task's splits (hub dataset or local files), check them, and turn them into features.

Local formats: CSV / TSV / JSONL / Parquet tables (text column(s) + label column), CoNLL-style token files
(``token ... tag`` per line, blank line between sentences) or JSONL with ``tokens``/``tags`` lists, and SQuAD v1.1
JSON (data / paragraphs / qas). Every problem is reported with the file (or hub split) and the key to fix.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SUFFIX_FORMAT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".conll": "conll",
    ".bio": "conll",
    ".iob": "conll",
    ".txt": "conll",
}


class TaskDataError(ConfigError):
    """Bad or missing task data; the message names the file or key and the fix."""


@dataclass
class Split:
    name: str
    source: str  # a file path, or hub:<dataset>/<config>:<split>
    rows: list[dict]
    labelled: bool = True
    labels: list = field(default_factory=list)  # per example: class index, float, tag indices, or gold answers


# ---------------------------------------------------------------- reading


def _read_conll(path: Path) -> list[dict]:
    rows, tokens, tags = [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                rows.append({"tokens": tokens, "tags": tags})
            tokens, tags = [], []
            continue
        if len(parts) < 2:
            raise TaskDataError(f"{path}:{n}: expected 'token ... tag' (whitespace separated), got {line!r}")
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def _read_squad(path: Path) -> list[dict]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or "data" not in doc:
        raise TaskDataError(f"{path}: not SQuAD v1.1 JSON (expected a top-level 'data' list of articles)")
    rows = []
    for article in doc["data"]:
        for para in article.get("paragraphs", []):
            for qa in para.get("qas", []):
                answers = qa.get("answers", [])
                rows.append(
                    {
                        "id": str(qa["id"]),
                        "context": para["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        },
                    }
                )
    return rows


def read_file(path: str | Path, fmt: str | None, task_type: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"{path}: no such file (task.data_files)")
    fmt = fmt or ("squad" if task_type == "question_answering" and path.suffix == ".json" else None)
    fmt = fmt or SUFFIX_FORMAT.get(path.suffix.lower(), "json" if path.suffix.lower() == ".json" else None)
    if fmt is None:
        raise TaskDataError(f"{path}: unknown format; set task.format=csv|tsv|jsonl|json|parquet|conll|squad")
    if fmt in ("csv", "tsv", "parquet"):
        import pandas as pd

        if fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            sep, quoting = ("\t", csv.QUOTE_NONE) if fmt == "tsv" else (",", csv.QUOTE_MINIMAL)
            df = pd.read_csv(path, sep=sep, quoting=quoting, keep_default_na=False, dtype_backend="numpy_nullable")
        return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in df.to_dict("records")]
    if fmt == "jsonl":
        text = path.read_text(encoding="utf-8")
        return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    if fmt == "json":
        obj = json.loads(path.read_text(encoding="utf-8"))
        return obj if isinstance(obj, list) else obj.get("data", [])
    if fmt == "conll":
        return _read_conll(path)
    if fmt == "squad":
        return _read_squad(path)
    raise TaskDataError(f"task.format={fmt}: expected csv, tsv, jsonl, json, parquet, conll or squad")


def _read_hub(task) -> tuple[dict[str, tuple[str, list[dict]]], list[str] | None]:
    import datasets

    try:
        dd = datasets.load_dataset(task.hub_dataset, task.hub_config)
    except Exception as e:
        raise TaskDataError(
            f"could not load {task.hub_dataset} ({task.hub_config}) from the Hugging Face hub: {e}. Without the "
            f"hub, give local files: task.data_files.train=... task.data_files.validation=..."
        ) from e
    wanted = {"train": task.train_split, "validation": task.validation_split, "test": task.test_split}
    wanted.update({k: k for k in task.extra_validation})
    out = {k: (f"hub:{task.hub_dataset}/{task.hub_config}:{s}", dd[s].to_list()) for k, s in wanted.items() if s in dd}
    feats = dd[task.train_split].features
    names = None
    col = task.tags_column if task.type == "token_classification" else task.label_column
    if col in feats:
        f = feats[col].feature if hasattr(feats[col], "feature") else feats[col]
        names = list(getattr(f, "names", None) or []) or None
    return out, names


REAL_DATA = "BERTRUN_REAL_DATA"  # where the offline suite's presets (conf/task/*.yaml) read data_prep.fetch's output


def _reads_real_data(task, split: str) -> bool:
    """Whether task.data_files.<split> is a preset's ``${oc.env:BERTRUN_REAL_DATA,...}`` path (seen before it is
    resolved), so that a missing file can say where such files come from and how the preset finds them."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(task.data_files, DictConfig):
        return False
    raw = OmegaConf.to_container(task.data_files, resolve=False).get(split)
    return isinstance(raw, str) and REAL_DATA in raw


def read_splits(task) -> tuple[dict[str, tuple[str, list[dict]]], list[str] | None]:
    """{split: (source, rows)} and the class names the source declares (hub ClassLabel), if any."""
    files = {k: v for k, v in dict(task.data_files or {}).items() if v}
    if files:
        unknown = set(files) - set(SPLITS) - set(task.extra_validation)
        if unknown:
            raise TaskDataError(f"task.data_files has unknown splits {sorted(unknown)}; expected {list(SPLITS)}")
        if "train" not in files or "validation" not in files:
            raise TaskDataError(
                f"task.data_files needs both train and validation (got {sorted(files)}): "
                f"task.data_files.train=FILE task.data_files.validation=FILE [task.data_files.test=FILE]"
            )
        for k, v in files.items():
            if not Path(v).is_file() and _reads_real_data(task, k):
                root = os.environ.get(REAL_DATA)
                now = f"{REAL_DATA}={root}" if root else f"{REAL_DATA} is unset, so data/real/ in this folder"
                raise TaskDataError(
                    f"{v}: no such file: task={task.name} reads {REAL_DATA}/{task.name}/ ({now}); fetch it with "
                    f"`python -m data_prep.fetch {task.name} out=DIR` and set {REAL_DATA}=DIR, or give "
                    f"task.data_files.{k}=FILE"
                )
        return {k: (str(v), read_file(v, task.format, task.type)) for k, v in files.items()}, None
    if not task.hub_dataset:
        raise TaskDataError(
            f"task {task.name} has no data: set task.data_files.train=FILE and task.data_files.validation=FILE"
        )
    return _read_hub(task)


# ---------------------------------------------------------------- checking and labels


def _is_int(v) -> bool:
    try:
        return float(v) == int(float(v))
    except (TypeError, ValueError):
        return False


def _missing(v) -> bool:
    return v is None or v == "" or (_is_int(v) and int(float(v)) == -1)  # GLUE's test splits use -1


def class_names(task, train: Split, declared: list[str] | None) -> list[str]:
    if task.labels:
        return [str(x) for x in task.labels]
    if declared:
        return declared
    if task.type == "token_classification":
        values = {t for r in train.rows for t in r[task.tags_column]}
        return sorted(values, key=lambda t: (t != "O", t[2:] if t[:2] in ("B-", "I-") else t, t))
    values = {r[task.label_column] for r in train.rows}
    return [str(v) for v in sorted(values, key=lambda v: (0, int(float(v))) if _is_int(v) else (1, str(v)))]


def _index(v, names: list[str], index: dict[str, int], declared: bool) -> int | None:
    if str(v) in index:
        return index[str(v)]
    if declared and _is_int(v) and 0 <= int(float(v)) < len(names):
        return int(float(v))
    return None


def _unseen_error(split: Split, key: str, bad: set, names: list[str], inferred: bool) -> TaskDataError:
    where = "never appear in the training split" if inferred else f"are not in task.labels={names}"
    return TaskDataError(
        f"{split.source}: {split.name} {key} values {sorted(map(str, bad))[:10]} {where} (known: {names[:20]}). "
        f"Fix the file, or list every class in task.labels=[...] (the model needs one output per class)."
    )


def has_labels(task, split: Split) -> bool:
    """Check the split's input columns; whether it carries labels (only a test split may lack them)."""
    if not split.rows:
        raise TaskDataError(f"{split.source}: the {split.name} split has no examples")
    first = split.rows[0]
    if task.type in ("classification", "regression"):
        for col in task.text_columns:
            if col not in first:
                raise TaskDataError(
                    f"{split.source}: no text column {col!r} (task.text_columns="
                    f"{list(task.text_columns)}); its columns are {sorted(first)}"
                )
        key = task.label_column
        has = key in first and not all(_missing(r.get(key)) for r in split.rows)
    elif task.type == "token_classification":
        key = task.tags_column
        if task.tokens_column not in first:
            raise TaskDataError(
                f"{split.source}: no {task.tokens_column!r} list (task.tokens_column); keys are {sorted(first)}"
            )
        has = key in first
    else:
        key = "answers"
        for col in ("context", "question"):
            if col not in first:
                raise TaskDataError(f"{split.source}: examples have no {col!r}; expected SQuAD v1.1 fields")
        has = any(r.get(key, {}).get("text") for r in split.rows)
    if not has and split.name != "test":
        setting = "task.tags_column" if task.type == "token_classification" else "task.label_column"
        raise TaskDataError(
            f"{split.source}: the {split.name} split has no labels: no {key!r} column ({setting}); its columns are "
            f"{sorted(first)}. Point {setting} at the label column."
        )
    return has


def convert_labels(task, split: Split, names: list[str], inferred: bool) -> None:
    key = task.tags_column if task.type == "token_classification" else task.label_column
    if task.type == "regression":
        bad = [r[key] for r in split.rows if not _is_float(r[key])]
        if bad:
            raise TaskDataError(f"{split.source}: {key} values {bad[:5]} are not numbers (task.type=regression)")
        split.labels = [float(r[key]) for r in split.rows]
    elif task.type == "classification":
        index = {n: i for i, n in enumerate(names)}
        split.labels = [_index(r[key], names, index, not inferred) for r in split.rows]
        bad = {r[key] for r, y in zip(split.rows, split.labels) if y is None}
        if bad:
            raise _unseen_error(split, key, bad, names, inferred)
    elif task.type == "token_classification":
        index = {n: i for i, n in enumerate(names)}
        split.labels, bad = [], set()
        for i, r in enumerate(split.rows):
            if len(r[key]) != len(r[task.tokens_column]):
                raise TaskDataError(
                    f"{split.source}: example {i} has {len(r[task.tokens_column])} tokens and {len(r[key])} tags"
                )
            ids = [_index(t, names, index, not inferred) for t in r[key]]
            bad |= {t for t, y in zip(r[key], ids) if y is None}
            split.labels.append(ids)
        if bad:
            raise _unseen_error(split, key, bad, names, inferred)
    else:
        split.labels = [list(r.get("answers", {}).get("text") or [""]) for r in split.rows]


def _is_float(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def load_task(task, max_train: int | None = None, max_eval: int | None = None) -> tuple[dict[str, Split], list]:
    """The checked splits ({train, validation, [test], [extra validation splits]}) and the class names."""
    raw, declared = read_splits(task)
    for need in ("train", "validation"):
        if need not in raw:
            raise TaskDataError(f"task {task.name}: no {need} split (hub split {getattr(task, need + '_split')!r})")
    splits = {}
    for name, (source, rows) in raw.items():
        cap = max_train if name == "train" else max_eval
        splits[name] = Split(name, source, rows[:cap] if cap else rows)
    for s in splits.values():
        s.labelled = has_labels(task, s)
    names: list[str] = []
    if task.type in ("classification", "token_classification"):
        # From the whole training split, not the first max_train rows: a quick run gets the classes (and the output
        # layer) of the full one, and a rare class in the validation split is not refused for being cut off.
        names = class_names(task, Split("train", *raw["train"]), declared)
        if len(names) < 2:
            raise TaskDataError(
                f"{splits['train'].source}: only one class {names} in the training split; "
                f"list the classes in task.labels=[...]"
            )
    inferred = not (task.labels or declared)
    for s in splits.values():
        if s.labelled:
            convert_labels(task, s, names, inferred)
    if task.type == "classification" and max_train and len(raw["train"][1]) > max_train:
        warn_if_skewed(task.label_column, *raw["train"], max_train)
    return splits, names


def warn_if_skewed(key: str, source: str, rows: list[dict], cap: int, tolerance: float = 0.2) -> str | None:
    """The first ``cap`` rows are what a quick run trains on: say so when their classes are far from the whole
    split's (a file ordered by label gives a quick run mostly one class)."""
    whole, part = Counter(str(r.get(key)) for r in rows), Counter(str(r.get(key)) for r in rows[:cap])
    gap = {c: part[c] / cap - n / len(rows) for c, n in whole.items()}
    worst = max(gap, key=lambda c: abs(gap[c]))
    if abs(gap[worst]) <= tolerance:
        return None
    msg = (
        f"{source}: max_train_samples={cap} keeps the first {cap:,} of {len(rows):,} training examples, "
        f"{part[worst] / cap:.0%} {worst!r} against {whole[worst] / len(rows):.0%} in the whole split (is the file "
        f"ordered by label?): shuffle the file, or raise max_train_samples"
    )
    log.warning(msg)
    return msg


# ---------------------------------------------------------------- features


def _truncate_question(tokenizer, question: str, max_tokens: int) -> str:
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return question
    return question[: enc["offset_mapping"][max_tokens - 1][1]]


def featurize(task, split: Split, tokenizer, train: bool) -> list[dict]:
    """Model inputs per feature, with ``example`` (the row index) and what evaluation needs to map back."""
    feats: list[dict] = []
    L = task.max_seq_len
    if task.type in ("classification", "regression"):
        cols = [[str(r[c]) for r in split.rows] for c in task.text_columns]
        enc = tokenizer(*cols, truncation=True, max_length=L)
        for i in range(len(split.rows)):
            f = {k: enc[k][i] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}
            f["example"] = i
            if split.labelled:
                f["labels"] = split.labels[i]
            feats.append(f)
    elif task.type == "token_classification":
        words = [[str(w) for w in r[task.tokens_column]] for r in split.rows]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=L)
        for i in range(len(split.rows)):
            word_ids = enc.word_ids(i)
            first = {}
            for pos, w in enumerate(word_ids):
                if w is not None and w not in first:
                    first[w] = pos
            f = {k: enc[k][i] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}
            f["example"] = i
            f["word_starts"] = [first.get(w, -1) for w in range(len(words[i]))]  # -1: truncated away
            if split.labelled:
                lab = [-100] * len(word_ids)
                for w, pos in first.items():  # only the first subword of each word is labelled
                    lab[pos] = split.labels[i][w]
                f["labels"] = lab
            feats.append(f)
    else:
        qs = [_truncate_question(tokenizer, r["question"].lstrip(), task.max_query_len) for r in split.rows]
        enc = tokenizer(
            qs,
            [r["context"] for r in split.rows],
            truncation="only_second",
            max_length=L,
            stride=task.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        for j, i in enumerate(enc["overflow_to_sample_mapping"]):
            seq = enc.sequence_ids(j)
            offsets = [o if s == 1 else None for o, s in zip(enc["offset_mapping"][j], seq)]
            f = {k: enc[k][j] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}
            f["example"] = int(i)
            f["offsets"] = offsets
            if train:
                f["start_positions"], f["end_positions"] = _answer_positions(split.rows[i]["answers"], offsets)
            feats.append(f)
    if not feats:
        raise TaskDataError(f"{split.source}: the {split.name} split gave no features")
    for j, f in enumerate(feats):
        f["index"] = j
    return feats


def _answer_positions(answers: dict, offsets: list) -> tuple[int, int]:
    """Token span of the first answer if this window holds all of it; otherwise [CLS] (0, 0), as in BERT."""
    if not answers["text"]:
        return 0, 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    ctx = [k for k, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
        return 0, 0
    s = next(k for k in ctx if offsets[k][1] > start_char)
    e = next(k for k in reversed(ctx) if offsets[k][0] < end_char)
    return s, max(s, e)


MODEL_KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "start_positions", "end_positions")


def collate(feats: list[dict], pad_id: int, multiple: int = 8) -> dict:
    """Pad to the longest feature (rounded up to ``multiple``); ``meta`` holds the feature indices (not model input)."""
    import torch

    n = max(len(f["input_ids"]) for f in feats)
    n = (n + multiple - 1) // multiple * multiple
    out = {}
    for k in MODEL_KEYS:
        if k not in feats[0]:
            continue
        v0 = feats[0][k]
        if isinstance(v0, list):
            fill = {"input_ids": pad_id, "labels": -100}.get(k, 0)
            out[k] = torch.tensor([f[k] + [fill] * (n - len(f[k])) for f in feats])
        else:
            out[k] = torch.tensor([f[k] for f in feats], dtype=torch.float32 if isinstance(v0, float) else torch.long)
    out["meta"] = torch.tensor([f["index"] for f in feats])
    return out
