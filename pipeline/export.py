"""python -m pipeline.export run_dir=DIR [step=N] [output=HF_DIR]

Turns a pretraining checkpoint of any ZeRO stage into a Hugging Face directory: config.json, model.safetensors
(fp32, consolidated by DeepSpeed's own zero_to_fp32 through pipeline.engine), the tokenizer files, and a README with
the training config and the data manifest's summary. It reads the run_dir alone (its tokenizer/ and data.json,
written when pretraining started), so the data directory may have moved or gone. ``transformers.BertForPreTraining``,
``AutoModel`` and ``AutoModelForSequenceClassification`` load it directly.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.config import ConfigError
from pipeline.storage import storage_error, write_failed

log = logging.getLogger(__name__)


class ExportError(ConfigError):
    """A run_dir or step that cannot be exported: reported in one line (pipeline/cli.py)."""


_BAR = re.compile(r"\d+/\d+ \[")  # a tqdm line ("1/1 [00:00<00:00"): worth nothing once it is done


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """DeepSpeed's zero_to_fp32 prints its steps ("Processing zero checkpoint ...") and a "Loading checkpoint shards"
    bar, and transformers' save_pretrained a "Writing model shards" bar: among our lines on the console they read as
    something to act on. Here they go to this module's log at DEBUG instead. Logging handlers keep the stream they
    were built with, so our own log lines still reach the console and the log file."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    finally:
        for line in buf.getvalue().replace("\r", "\n").splitlines():
            if line.strip() and not _BAR.search(line):
                log.debug("%s", line)


def find_checkpoint(run_dir: Path, step: int | None) -> tuple[Path, str]:
    from pipeline.checkpoint import CheckpointManager

    mgr = CheckpointManager(run_dir, 1, 0, lambda: None)
    if not (run_dir / "checkpoints").is_dir():
        raise ExportError(f"{run_dir} is not a pretraining run directory (no checkpoints/ inside)")
    if step is None:
        tag = mgr.latest()
        if tag is None:
            raise ExportError(f"{run_dir}/checkpoints holds no complete checkpoint (a folder with COMPLETE)")
    else:
        tag = mgr.tag(step)
        if not (mgr.root / tag / "COMPLETE").is_file():
            raise ExportError(f"no complete checkpoint for step {step} in {mgr.root}; complete: {mgr.complete_tags()}")
    return mgr.root, tag


def export(run_dir: str | Path, step: int | None = None, output: str | Path | None = None) -> Path:
    from transformers import BertForPreTraining

    from pipeline.engine import consolidated_state_dict
    from pipeline.pretrain.model import bert_config
    from pipeline.pretrain.shards import RUN_TOKENIZER, run_data

    run_dir = Path(run_dir)
    ckpt_root, tag = find_checkpoint(run_dir, step)
    cfg = OmegaConf.load(ckpt_root / tag / "config.yaml")
    state = json.loads((ckpt_root / tag / "trainer_state.json").read_text())
    out = Path(output) if output else run_dir / "hf" / tag
    data, tokenizer_dir = run_data(run_dir), run_dir / RUN_TOKENIZER
    if data is None or not tokenizer_dir.is_dir():
        raise ExportError(
            f"{run_dir} has no data.json or tokenizer/ (a run_dir from before they were kept): rerun pretraining in "
            f"it for one step with its original data.path ({cfg.data.path}) to add them, then export again"
        )

    with library_output():
        sd = consolidated_state_dict(ckpt_root, tag)
    if cfg.model.init_from:
        config = BertForPreTraining.config_class.from_pretrained(cfg.model.init_from)
    else:
        config = bert_config(cfg.model, data["vocab_size"], data["special_ids"]["pad"])
    config.architectures = ["BertForPreTraining"]
    model = BertForPreTraining(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")]
    if missing or unexpected:
        raise ExportError(
            f"checkpoint {ckpt_root / tag} does not match BertForPreTraining: missing {missing}, "
            f"unexpected {unexpected}"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with library_output():
            model.save_pretrained(out, safe_serialization=True)
        for f in tokenizer_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
        write_card(out, cfg, state, data, tag)
    except Exception as e:  # safetensors raises its own SafetensorError, with the OS's error in its text
        if not write_failed(e):
            raise
        raise storage_error(
            f"exporting {ckpt_root / tag} to {out}", out, e,
            "the checkpoint is untouched; free space (or give output=DIR elsewhere) and export again",
        ) from e  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    log.info("exported step %s (%s) to %s: %s parameters, tokenizer, README.md", state.get("step"), ckpt_root / tag,
             out, f"{params:,}")  # fmt: skip
    return out


def write_card(out: Path, cfg, state: dict, data: dict, tag: str) -> None:
    splits = data.get("splits", {})
    docs = data.get("documents", {})
    lines = [
        "---",
        "library_name: transformers",
        "tags: [bert, fill-mask, pretraining, bertrun]",
        "---",
        f"# {cfg.model.name} pretrained with MLM + NSP",
        "",
        f"Checkpoint `{tag}`: step {state.get('step')}, {state.get('samples')} samples, {state.get('tokens')} tokens.",
        "",
        "## Data",
        f"- seq_len {data.get('seq_len')}, fingerprint `{data.get('fingerprint', '')[:16]}`",
        *(
            f"- {k}: {v.get('shards')} shards, {v.get('samples')} samples, {v.get('tokens', '?')} tokens"
            for k, v in splits.items()
        ),
        f"- documents: read {docs.get('read')}, used {docs.get('used')}, skipped {docs.get('skipped')}",
        "",
        "## Training config",
        "```yaml",
        OmegaConf.to_yaml(cfg, resolve=True).rstrip(),
        "```",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    import hydra

    from pipeline.cli import run, user_errors

    # Consolidating a checkpoint is CPU work: named, DeepSpeed does not guess aloud ("Setting accelerator to CPU").
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    @hydra.main(config_path="../conf", config_name="export", version_base="1.3")
    def _run(cfg) -> None:
        with user_errors():
            out = export(cfg.run_dir, cfg.step, cfg.output)
            print(f"  next: python -m pipeline.finetune model.path={out} task=NAME (the tasks: conf/task/README.md)")

    run(_run, "export")


if __name__ == "__main__":
    main()
