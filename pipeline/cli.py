"""What every ``python -m pipeline.*`` entry does around its Hydra main: one-line errors and ``--help``.

A mistake the user can fix (a misspelt key, a value outside a choice, a missing ``???`` value, a ConfigError,
DataError, TaskDataError, ExportError or ReportError), or a failed write (StorageError: a full disk), prints one
line, ``error: <key or file>: <what to do>``, on one rank only, and exits 2; the traceback comes back with
``BERTRUN_DEBUG=1`` or Hydra's own ``HYDRA_FULL_ERROR=1``.
Anything else is a bug and keeps its traceback. Under torchrun the line also goes to the elastic error file, so
torchrun's closing "ChildFailedError" block names it as the root cause instead of a link to its docs.

This module is light (no torch): it runs before the config is known to be valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

USER_ERROR = 2
DEBUG_VARS = ("BERTRUN_DEBUG", "HYDRA_FULL_ERROR")


_OURS = "BERTRUN_SET_HYDRA_FULL_ERROR"  # marks a HYDRA_FULL_ERROR we set, which Slurm jobs inherit from us


def debugging() -> bool:
    names = ("BERTRUN_DEBUG",) if os.environ.get(_OURS) else DEBUG_VARS
    return any(os.environ.get(v, "") not in ("", "0") for v in names)


_debug_at_start: bool | None = None


def _user_debug() -> bool:
    """The user's debug switch as it was before ``run`` set HYDRA_FULL_ERROR for its own use."""
    return debugging() if _debug_at_start is None else _debug_at_start


def rank() -> int:
    """This process's global rank as the launcher set it (0 when not distributed): only rank 0 prints errors."""
    for var in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _user_error_types() -> tuple[type[BaseException], ...]:
    from omegaconf.errors import MissingMandatoryValue

    from data_prep.format import DataError
    from pipeline.config import ConfigError
    from pipeline.storage import StorageError

    # ExportError, TaskDataError, ReportError and launch's LaunchError derive from ConfigError.
    return ConfigError, DataError, MissingMandatoryValue, FileNotFoundError, StorageError


def _omegaconf_line(e: BaseException, override: str | None = None) -> str:
    """``key: reason`` from an OmegaConf error (its message's first line, without the full_key/object_type lines)."""
    key = getattr(e, "full_key", None) or ""
    msg = str(getattr(e, "msg", None) or e).strip().splitlines()[0]
    if type(e).__name__ == "MissingMandatoryValue":
        return f"{key} is required and has no value: give {key}=..."
    if type(e).__name__ in ("ConfigKeyError", "ConfigAttributeError"):
        return f"{override or key}: no such key{_suggest(key, e)}; the keys are listed by --help"
    return f"{override or key}: {msg}"


def _suggest(key: str, e: BaseException) -> str:
    """' (did you mean max_steps?)' from the fields of the dataclass the key was looked up in."""
    kind = getattr(e, "object_type", None)
    names = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else []
    head, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, names, n=1, cutoff=0.6)
    return f" (did you mean {head + '.' if head else ''}{close[0]}?)" if close else ""


def one_line(e: BaseException) -> str | None:
    """The one line for a mistake the user can fix, or None for a bug (which keeps its traceback)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(e, MissingConfigException):
        # Hydra lists our schema nodes (task_schema) among the presets and appends its search path: drop both.
        options = ", ".join(o for o in e.options or [] if not o.endswith("_schema"))
        first = str(e).strip().splitlines()[0]
        if e.missing_cfg_file and "/" in e.missing_cfg_file:
            group, name = e.missing_cfg_file.rsplit("/", 1)
            return f"{group}={name}: no such preset in conf/{group}/; available: {options}"
        return f"{first}; available: {options}"
    if isinstance(e, OverrideParseException):
        return f"cannot parse the override {e.override!r}: write key=value (quote values with spaces or commas)"
    if isinstance(e, ConfigCompositionException):
        cause = e.__cause__
        override = None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        for prefix in ("Could not override '", "Error merging override "):
            if first.startswith(prefix):
                override = first[len(prefix) :].rstrip("'.")
        if first.startswith("You must specify '"):  # a group without a default, such as finetune's task
            group = first.split("'")[1]
            text = " ".join(str(e).split())
            options = [o for o in text.split("Available options:")[-1].split() if not o.endswith("_schema")]
            return f"{group} is required: give {group}=NAME; available: {', '.join(options)}"
        if isinstance(cause, OmegaConfBaseException):
            return _omegaconf_line(cause, override)
        return " ".join(x.strip() for x in str(e).splitlines() if x.strip())
    if isinstance(e, OmegaConfBaseException):
        return _omegaconf_line(e) if type(e).__name__ == "MissingMandatoryValue" else None
    if isinstance(e, _user_error_types()):
        return " ".join(str(e).split("\n")) if not isinstance(e, FileNotFoundError) else f"{e.strerror}: {e.filename}"
    return None


def report(line: str) -> None:
    """Print ``error: line`` on rank 0; under torchrun every rank also leaves it in the elastic error file."""
    if rank() == 0:
        print(f"error: {line}", file=sys.stderr, flush=True)
    # Every rank: torchrun names the first rank to fail as the root cause, which need not be rank 0.
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        try:
            # torchrun's own format; its block prints py_callstack as the root cause's "traceback".
            info = {"py_callstack": f"error: {line}", "timestamp": str(int(time.time()))}
            Path(error_file).write_text(json.dumps({"message": {"message": f"error: {line}", "extraInfo": info}}))
        except OSError:
            pass


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Around a stage's body inside ``@hydra.main``: a user mistake is reported (one line) and the process exits 2.
    Exiting here, not in ``run``, keeps Hydra's own "Error executing job" line away and gives a Slurm job step the
    non-zero exit code that marks it FAILED."""
    try:
        yield
    except Exception as e:
        line = None if _user_debug() else one_line(e)
        if line is None:
            raise
        report(line)
        sys.exit(USER_ERROR)


class ThirdPartyNoise(logging.Filter):
    """On the console handler (conf/pretrain.yaml, conf/finetune.yaml): drops lines that bury ours, such as
    DeepSpeed's compiler probes (``compilers.*``) and library warnings (FutureWarning...). The run's log file keeps
    them all."""

    NOISY = ("compilers", "py.warnings", "torch._dynamo", "torch._inductor")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(self.NOISY):
            return False
        # DeepSpeed's INFO lines (config dumps, op builds) on the console: its warnings and errors still show.
        return not (record.name.startswith(("DeepSpeed", "deepspeed")) and record.levelno < logging.WARNING)


def sweep_safe(args: list[str]) -> list[str]:
    """``KEY.sub=V`` as ``KEY.sub=choice(V)`` in a multirun that sweeps ``KEY=a,b``; other arguments unchanged.

    In a multirun Hydra first composes one config without the swept groups, then each job's. A group with no default
    (finetune's ``task``) is missing in that first config, so ``-m task=mr,trec task.max_seq_len=64`` stopped with
    "task is required" although task was given. A one-value choice() is a sweep too: Hydra applies it only in each
    job's config, after the task is chosen, with the same checks (a misspelt key still fails), and the number of
    jobs stays the same. Each job's overrides.yaml records the plain ``task.max_seq_len=64``.
    """
    if not any(a in ("-m", "--multirun") for a in args):
        return args
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parser = OverridesParser.create()
    parsed: dict[int, object] = {}
    for i, a in enumerate(args):
        if not a.startswith("-"):
            with contextlib.suppress(Exception):  # Hydra reports an unparsable override itself, in its own words
                parsed[i] = parser.parse_override(a)
    swept = {o.key_or_group for o in parsed.values() if o.is_sweep_override() and not o.is_hydra_override()}
    out = list(args)
    for i, o in parsed.items():
        head = o.key_or_group.split(".", 1)[0]
        if o.type is OverrideType.CHANGE and "." in o.key_or_group and head in swept and not o.is_sweep_override():
            key, _, value = args[i].partition("=")
            out[i] = f"{key}=choice({value or repr('')})"
    return out


def run(main: Callable[[], object], entry: str) -> None:
    """Call a ``@hydra.main`` function with the convention above; ``--help``/``-h`` prints the entry's help."""
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        from pipeline.help import help_text

        print(help_text(entry))
        return
    sys.argv[1:] = sweep_safe(sys.argv[1:])
    global _debug_at_start
    _debug_at_start = debugging()
    logging.captureWarnings(True)  # Python warnings become log records: the log file has them, the console not
    if _debug_at_start:
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's whole traceback, not its trimmed one
        main()
        return
    # Hydra prints its own multi-line report and exits 1 unless HYDRA_FULL_ERROR is set; set, it lets the exception
    # reach us. Set only for the call, so that processes started later do not read it as the user's debug switch.
    os.environ["HYDRA_FULL_ERROR"] = os.environ[_OURS] = "1"
    try:
        main()
    except Exception as e:
        line = one_line(e)
        if line is None:
            raise
        report(line)
        sys.exit(USER_ERROR)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
        os.environ.pop(_OURS, None)


def closing_summary(run_dir: Path) -> str | None:
    """The lines a stage ends with: what was done, the headline numbers, where the outputs are, what comes next."""
    run_dir = Path(run_dir)

    def num(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    if (run_dir / "results.json").is_file():  # finetune
        r = json.loads((run_dir / "results.json").read_text())
        val = ", ".join(f"{k} {num(v)}" for k, v in r.get("validation", {}).items() if isinstance(v, int | float))
        return "\n".join(
            [
                f"finetune {r.get('task')}: {r.get('steps')} steps, best at step {r.get('best_step')}"
                + (" (stopped early)" if r.get("stopped_early") else ""),
                f"  validation ({r.get('validation_examples')} examples): {val or 'none'}",
                f"  outputs in {run_dir}: results.json, best_model/ (Hugging Face), predictions_*.jsonl, metrics.jsonl",
                f"  next: python -m pipeline.report run_dir={run_dir}",
            ]
        )
    if (run_dir / "summary.json").is_file():  # pretrain
        s = json.loads((run_dir / "summary.json").read_text())
        val = ", ".join(f"{k} {num(s[k])}" for k in ("val_loss", "val_mlm_acc", "val_nsp_acc") if k in s)
        state = (
            "stopped on a signal with a checkpoint: run the same command to resume"
            if s.get("stopped_by_signal")
            else "done"
        )
        return "\n".join(
            [
                f"pretrain: step {s.get('step')} of {s.get('max_steps')} ({state}); {num(s.get('samples'))} samples, "
                f"{num(s.get('tokens'))} tokens; skipped steps {s.get('skipped_steps', 0)}",
                f"  validation: {val or 'none (no val split, or eval.at_end=false)'}",
                f"  outputs in {run_dir}: checkpoints/{s.get('checkpoint') or ''}, metrics.jsonl, summary.json",
                f"  next: python -m pipeline.export run_dir={run_dir}; python -m pipeline.report run_dir={run_dir}",
            ]
        )
    return None
