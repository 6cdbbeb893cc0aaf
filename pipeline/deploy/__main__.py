"""python -m pipeline.deploy model.path=FINETUNE_RUN_DIR output=DIR [quantize=int8|none] [prune.heads=0.25]

Exports a finetuned classifier or NER model to ONNX (logits checked against PyTorch), quantizes it to dynamic int8,
optionally removes the least important attention heads (Michel et al. 2019) with a few recovery steps, evaluates
every variant on the task's validation split (metric and its difference from PyTorch fp32, size, batch-1 latency,
batch-32 throughput) and writes a folder that ``python -m pipeline.serve`` serves: deploy.json, deploy.md, the ONNX
files and the tokenizer. See pipeline/deploy/README.md.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

import pipeline.deploy.config  # noqa: F401 - registers deploy_schema
from pipeline.cli import USER_ERROR, report, run, user_errors


def task_keys_without_a_task(argv: list[str]) -> str | None:
    """``task.KEY=V`` needs a task to change: Hydra fails on the null default with an assertion, not a message."""
    keys = [a for a in argv if a.lstrip("+~").startswith("task.")]
    if keys and not any(a.startswith("task=") for a in argv):
        return (
            f"{keys[0]}: a finetune run's task is read from its run_dir and cannot be changed key by key; give "
            f"task=NAME (conf/task/) first, then task.KEY=VALUE"
        )
    return None


@hydra.main(config_path="../../conf", config_name="deploy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        from pipeline.deploy.source import check_output, resolve

        resolve(cfg.model.path, cfg.task)  # a wrong path or task fails here, before torch is imported
        check_output(cfg.output)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        for noisy in ("onnxruntime", "transformers", "torch.onnx"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()  # save_pretrained's one-shard bar
        from pipeline.deploy.stage import deploy, summary

        print(summary(deploy(cfg)), flush=True)


if __name__ == "__main__":
    if line := task_keys_without_a_task(sys.argv[1:]):
        report(line)
        sys.exit(USER_ERROR)
    run(main, "deploy")
