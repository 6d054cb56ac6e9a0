"""The config system every stage uses: dataclass configs with named presets, ``--set KEY=VALUE``
overrides checked against the dataclass fields, and the dict form stored in a run's config.json.
Core layer: imports nothing of nfldm.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["copy_preset", "dataclass_from_dict", "dict_without_added", "apply_overrides", "with_overrides"]


def copy_preset(presets: dict, name: str, what: str):
    """A fresh copy of the named preset (a dataclass whose dataclass fields, at any depth, are
    copied too, so the caller may change them); ValueError naming the choices if unknown."""
    if name not in presets:
        raise ValueError(f"unknown {what} preset {name!r}; choose one of {sorted(presets)}")

    def fresh(x):
        return dataclasses.replace(x, **{f.name: fresh(getattr(x, f.name)) for f in dataclasses.fields(x)
                                         if dataclasses.is_dataclass(getattr(x, f.name))})
    return fresh(presets[name])


def dataclass_from_dict(cls: type, d: dict, what: str):
    """Inverse of ``asdict`` for a config dataclass ``cls`` (lists back to tuples); unknown keys
    are a ValueError naming ``what``."""
    bad = sorted(set(d) - set(cls.__dataclass_fields__))
    if bad:
        raise ValueError(f"unknown {what} config keys {bad}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def dict_without_added(cfg: Any, added: dict) -> dict:
    """``asdict(cfg)`` as stored in a run's config.json: every field named in ``added`` (field
    -> the value runs made before it existed implicitly had) that holds that value is left
    out, so older runs resume, and hash, exactly as before (a missing key reads back as the
    dataclass default, which must be that value)."""
    d = dataclasses.asdict(cfg)
    for k, old in added.items():
        if d.get(k) == old:
            del d[k]
    return d


def apply_overrides(model_cfg: Any, train_cfg: Any, overrides: dict | None, what: str,
                    fixed: tuple[str, ...] = (), fixed_by: str = "") -> None:
    """Set each ``--set KEY=VALUE`` of ``overrides`` on ``model_cfg`` when KEY is one of its
    dataclass fields, else on ``train_cfg``; a KEY in ``fixed`` or in neither config is a
    ValueError (``what`` names the stage in the message, ``fixed_by`` what sets the fixed keys)."""
    for k, v in (overrides or {}).items():
        if k in fixed:
            raise ValueError(f"{what} option {k!r} is set by {fixed_by}, not by --set")
        if k in type(model_cfg).__dataclass_fields__:
            setattr(model_cfg, k, _as_field_type(getattr(model_cfg, k), v, what, k))
        elif k in type(train_cfg).__dataclass_fields__:
            setattr(train_cfg, k, _as_field_type(getattr(train_cfg, k), v, what, k))
        else:
            raise ValueError(f"unknown {what} option {k!r}")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _as_field_type(current: Any, v: Any, what: str, key: str) -> Any:
    """A switch (a bool field) takes True / False, 1 / 0 or the words true / false, yes / no,
    on / off (any case); anything else is a ValueError rather than a truthy string."""
    if not isinstance(current, bool) or isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ValueError(f"{what} option {key!r} is a switch: give true or false, not {v!r}")


def with_overrides(cfg: Any, overrides: dict | None, what: str) -> Any:
    """A copy of the dataclass config ``cfg`` with each ``--set KEY=VALUE`` of ``overrides`` set
    (switches parsed as in :func:`apply_overrides`); an unknown KEY is a ValueError naming ``what``
    and the known keys."""
    fields = type(cfg).__dataclass_fields__
    bad = sorted(set(overrides or {}) - set(fields))
    if bad:
        raise ValueError(f"unknown {what} option(s) {bad}; known: {', '.join(sorted(fields))}")
    return dataclasses.replace(cfg, **{k: _as_field_type(getattr(cfg, k), v, what, k)
                                       for k, v in (overrides or {}).items()})
