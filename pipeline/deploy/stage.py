"""The deploy run (``python -m pipeline.deploy``, see __main__.py): build every variant, check, measure, write.

Variants: the PyTorch fp32 source, its ONNX fp32 export (logits checked against PyTorch), dynamic int8, and with
``prune.heads`` the same three of the head-pruned model. Everything is built in ``<output>.tmp`` and renamed at the
end, so an output folder is complete or absent. It holds what the server needs and nothing it does not:
deploy.json, the .onnx files, tokenizer.json (+ the tokenizer's other files), config.json, predictions/ and, when
pruned, pruned_model/ (the pruned PyTorch weights, loadable with pipeline.deploy.prune.load_model).
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import platform
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.deploy import onnx_io, prune, report
from pipeline.deploy.measure import TorchRunner, evaluate, padded, speed
from pipeline.deploy.runtime import Encoder, OrtModel, cores
from pipeline.deploy.source import DeployError, check_output, resolve

log = logging.getLogger("pipeline.deploy")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_encoder(tokenizer_file: Path, task, split, feats: list[dict]) -> None:
    """The server's tokenizer (``tokenizers`` alone) must give finetuning's token ids, or served answers would
    differ from the measured ones."""
    enc = Encoder(tokenizer_file, task.max_seq_len, task.type == "token_classification")
    if task.type == "classification":
        items = enc.encode([str(r[task.text_columns[0]]) for r in split.rows])
    else:
        items = enc.encode_words([[str(w) for w in r[task.tokens_column]] for r in split.rows])
    for i, (it, f) in enumerate(zip(items, feats)):
        if it.ids != f["input_ids"] or (task.type != "classification" and it.word_starts != f["word_starts"]):
            raise DeployError(
                f"{tokenizer_file}: tokenizer.json alone gives other token ids than the model's tokenizer for "
                f"validation example {i}; save the tokenizer with a current transformers (tokenizer.save_pretrained)"
            )


def save_model(model, tokenizer, folder: Path) -> None:
    """config.json, model.safetensors and the tokenizer. Not save_pretrained: through accelerate it imports DeepSpeed
    (seconds, and a warning on the console) for nothing here."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    model.config.save_pretrained(folder)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, folder / "model.safetensors", {"format": "pt"})
    tokenizer.save_pretrained(folder)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) if path.is_dir() else path.stat().st_size


def deploy(cfg) -> Path:
    import torch
    from transformers import AutoTokenizer

    from pipeline.finetune.tasks import featurize, load_task

    src = resolve(cfg.model.path, cfg.task)
    out = check_output(cfg.output)
    if not 0 <= cfg.prune.heads < 1:
        raise DeployError(f"prune.heads={cfg.prune.heads}: a fraction of the heads in [0, 1)")
    task, pruning = src.task, cfg.prune.heads > 0
    threads = cfg.threads or cores()
    torch.set_num_threads(threads)
    splits, names = load_task(task, None, cfg.max_eval_samples)
    model = prune.load_model(src.model_dir, task.type)
    model_names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    if model_names != names:
        raise DeployError(
            f"{src.model_dir}: the model's labels {model_names} are not the task's {names} "
            f"(task.labels, or the training split's classes): is task= the one it was finetuned on?"
        )
    tokenizer = AutoTokenizer.from_pretrained(src.model_dir)
    val = splits["validation"]
    feats = featurize(task, val, tokenizer, train=False)
    check_encoder(src.model_dir / "tokenizer.json", task, val, feats)
    pad_id = tokenizer.pad_token_id or 0

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "predictions").mkdir(parents=True)
    for f in (*TOKENIZER_FILES, "config.json"):
        if (src.model_dir / f).is_file():
            shutil.copy2(src.model_dir / f, tmp / f)
    n_par = min(cfg.onnx.parity_examples, len(feats))
    checks = [padded(feats[i : i + 32], pad_id) for i in range(0, n_par, 32)]
    checks += [padded([f], pad_id) for f in feats[:2]]
    ort = lambda p: OrtModel(p, threads)  # noqa: E731
    int8 = cfg.quantize == "int8"

    # The source, its ONNX export (checked), int8.
    variants = {"pytorch_fp32": {"runner": TorchRunner(model), "file": None, "size_bytes": _size(src.model_dir)}}
    path, exported = onnx_io.export_checked(model, variants["pytorch_fp32"]["runner"], tmp, "model", checks, cfg, ort)
    variants["onnx_fp32"] = {"runner": ort(path), "file": path.name, "size_bytes": _size(path)}
    quant = None
    if int8:
        quant = onnx_io.quantize_int8(path, tmp / "model.int8.onnx", cfg.per_channel)
        variants["onnx_int8"] = {"runner": ort(tmp / "model.int8.onnx"), "file": "model.int8.onnx"}

    # Pruned: heads ranked on training data, removed, optionally recovered; then the same export and int8.
    pruned_record = None
    if pruning:
        p = cfg.prune
        train = featurize(task, splits["train"], tokenizer, train=True)
        small = copy.deepcopy(model)
        before = prune.heads_per_layer(small)
        imp = prune.importance(small, train[: p.samples], task.type, p.batch_size, pad_id)
        removed = prune.choose(imp, p.heads)
        prune.prune_heads(small, removed)
        losses = prune.recover(small, train, task.type, p.recover_steps, p.recover_lr, p.batch_size, p.seed, pad_id)
        save_model(small, tokenizer, tmp / "pruned_model")
        runner = TorchRunner(small)
        variants["pruned_pytorch_fp32"] = {"runner": runner, "file": "pruned_model/model.safetensors"}
        ppath, pexp = onnx_io.export_checked(small, runner, tmp, "pruned", checks, cfg, ort)
        variants["pruned_onnx_fp32"] = {"runner": ort(ppath), "file": ppath.name}
        if int8:
            onnx_io.quantize_int8(ppath, tmp / "pruned.int8.onnx", cfg.per_channel)
            variants["pruned_onnx_int8"] = {"runner": ort(tmp / "pruned.int8.onnx"), "file": "pruned.int8.onnx"}
        pruned_record = {
            "fraction": p.heads,
            "heads_before": sum(before),
            "removed": sum(len(v) for v in removed.values()),
            "heads_per_layer": prune.heads_per_layer(small),
            "removed_heads": {str(k): v for k, v in removed.items()},
            "importance": [[None if x != x else round(float(x), 6) for x in row] for row in imp],
            "samples": min(p.samples, len(train)),
            "recover_steps": p.recover_steps,
            "recover_lr": p.recover_lr,
            "recover_loss": losses,
            "export": pexp,
        }

    # Every variant on the validation split, then timed.
    for name, v in variants.items():
        if "size_bytes" not in v:
            v["size_bytes"] = _size(tmp / v["file"])
        v["metrics"], recs = evaluate(v["runner"], task, val, feats, names, pad_id)
        with open(tmp / "predictions" / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        v["threads"] = torch.get_num_threads() if "pytorch" in name else threads
    log.info("timing %d variants (%d rounds)", len(variants), cfg.measure.rounds)
    timed = speed({k: v.pop("runner") for k, v in variants.items()}, feats, pad_id, cfg.measure)
    for name, v in variants.items():
        v.update(timed[name])
    report.finish(variants, task.main_metric)

    record = {
        "format": 1,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "task": {
            "name": task.name,
            "type": str(task.type),
            "main_metric": task.main_metric,
            "labels": names,
            "max_seq_len": task.max_seq_len,
        },
        "source": src.as_dict(),
        "validation": {"source": val.source, "examples": len(val.rows)},
        "threads": threads,
        "machine": {"cpu": cpu_name(), "cores": cores(), "torch": torch.__version__, "onnxruntime": _ort_version()},
        "export": exported,
        "onnx": {"parity_examples": n_par, "atol": cfg.onnx.atol, "optimize": cfg.onnx.optimize},
        "quantize": quant,
        "prune": pruned_record,
        "measure": OmegaConf.to_container(cfg.measure),
        "variants": {k: variants[k] for k in sorted(variants, key=report.ORDER.index)},
        "serve": report.serve_variant(variants),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    report.write(tmp, record, out)
    tmp.rename(out)
    return out


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def summary(out: Path) -> str:
    r = json.loads((out / "deploy.json").read_text())
    return "\n".join(
        [
            f"deploy {r['task']['name']}: {len(r['variants'])} variants on {r['validation']['examples']:,} "
            f"validation examples, {r['threads']} threads",
            *report.table(r),
            f"  outputs in {out}: deploy.json, deploy.md, *.onnx, tokenizer, predictions/",
            f"  next: python -m pipeline.serve model.path={out}",
        ]
    )
