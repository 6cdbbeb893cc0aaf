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


def run() -> None:
    """``main`` with Hydra's composition errors (a misspelt key, a bad value) in one line and exit 2, as data_prep's
    own errors; HYDRA_FULL_ERROR=1 gives the traceback. (pipeline/cli.py does the same for the pipeline entries;
    data_prep imports nothing from pipeline.)"""
    import os

    from hydra.errors import ConfigCompositionException

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # so that the exception reaches us instead of Hydra's report
    try:
        main()
    except ConfigCompositionException as e:
        cause = e.__cause__
        key = getattr(cause, "full_key", None)
        reason = str(getattr(cause, "msg", None) or cause or e).strip().splitlines()[0]
        log.error("%s%s; every key: python -m data_prep --help", f"{key}: " if key else "", reason)
        sys.exit(2)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    run()
