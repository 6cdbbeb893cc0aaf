"""``--help`` for the pipeline entry points, built from the schemas and ``conf/`` so that it cannot go stale.

Hydra's own help composes the config first, so it fails wherever a group has no default (finetune's ``task: ???``)
and lists every group in ``conf/`` (and the schema names registered beside them) for every entry. This text names
only the entry's own groups with their presets, its top-level keys with their defaults, the components' keys, and
the README section; ``--hydra-help`` still gives Hydra's.
"""

from __future__ import annotations

import dataclasses
import enum
import textwrap

from pipeline.stages import CONF_DIR, schema, stage


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
    else:
        return ""
    if v == "???":
        return "(required)"
    if isinstance(v, enum.Enum):
        v = v.value
    return "null" if v is None else str(v)


def _kind(f: dataclasses.Field, of: type) -> type | None:
    """The dataclass a field holds (engine, data, ...), or None for a plain value."""
    import typing

    hint = typing.get_type_hints(of).get(f.name)
    return hint if dataclasses.is_dataclass(hint) else None


def _presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _default_preset(entry: str, group: str) -> str:
    import yaml

    for item in yaml.safe_load((CONF_DIR / f"{entry}.yaml").read_text()).get("defaults", []):
        if isinstance(item, dict) and group in item:
            return str(item[group])
    return "?"


def help_text(entry: str) -> str:
    s = stage(entry)
    what, usage, groups, readme = s.what, s.usage, s.groups, s.readme
    kind = schema(entry)
    lines = [what, "", f"usage: {usage}", ""]
    if groups:
        lines.append("config groups (group=preset; the default in brackets):")
        for g in groups:
            d = _default_preset(entry, g).replace("???", "required")
            lines += textwrap.wrap(
                f"{g:8} [{d}] " + ", ".join(_presets(g)), 118, initial_indent="  ", subsequent_indent=" " * 11
            )
        lines.append("")
    plain = [f for f in dataclasses.fields(kind) if _kind(f, kind) is None]
    nested = [f for f in dataclasses.fields(kind) if _kind(f, kind) is not None]
    lines.append("keys (key=value; the default after the name):")
    lines += [f"  {f.name} = {_default(f)}" for f in plain]
    for f in nested:
        names = ", ".join(g.name for g in dataclasses.fields(_kind(f, kind)))
        lines += textwrap.wrap(f"{f.name}.{{{names}}}", 118, initial_indent="  ", subsequent_indent="    ")
    lines.append("")
    if groups:
        lines.append("The full composed config: add --cfg job. Sweeps: -m key=a,b (hydra/launcher=slurm on Slurm).")
    lines += ["A mistake prints one line and exits 2; BERTRUN_DEBUG=1 shows the traceback.", f"More: {readme}."]
    return "\n".join(lines)
