"""python -m data_prep input=CORPUS output=DIR [key=value ...]: every key in data_prep/README.md."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

import data_prep.config  # noqa: F401 - registers data_prep_schema in Hydra's ConfigStore
from data_prep.config import ConfigError
from data_prep.manifest import MergeError, format_summary
from data_prep.run import prepare

log = logging.getLogger("data_prep")


@hydra.main(config_path="../conf", config_name="data_prep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        manifest = prepare(cfg)
    except (ConfigError, MergeError, TimeoutError) as e:
        log.error("%s", e)
        sys.exit(2)
    if "fingerprint" in manifest:
        print(format_summary(manifest))
        print(f"manifest: {cfg.output}/manifest.json")
    else:
        print(f"part {cfg.part} of {cfg.num_parts} done; manifest.json is written when every part is done")


if __name__ == "__main__":
    main()
