"""Typed YAML configs: flat files, validated at start-up, overridable with ``--set a.b=value``.

A config is a pydantic model whose sections forbid unknown keys, so a typo fails before any work
starts, with the dotted key and what was expected::

    cfg = load_config("configs/tiny.yaml", TrainConfig, overrides=["train.max_steps=20"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from deblurdiff.errors import UsageError

__all__ = ["Section", "load_config", "apply_overrides", "describe_validation_error", "validate_config"]

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {item!r}: expected key=value, e.g. --set train.max_steps=100")
    # YAML parsing gives `--set a.b=3` an int, `=true` a bool, `=[1,2]` a list, `=null` None.
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise UsageError(f"--set {key}: value {raw!r} is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=value`` overrides to a nested dict (in place) and return it."""
    for item in overrides or []:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"--set {'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def describe_validation_error(exc: ValidationError, source: str, unknown_key_hint: str = "") -> str:
    """pydantic's errors as one line: ``"{source}: {dotted.key}: {what} (got {value!r}) (+N more)"``.

    Used by every typed boundary (configs, blur recipes, Serve's args and user_config), so a wrong
    key reads the same everywhere. ``unknown_key_hint`` says where the valid keys are documented.
    """
    errors = exc.errors()
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {_describe_one(errors[0], unknown_key_hint)}{more}"


def _describe_one(error: dict, unknown_key_hint: str) -> str:
    # pydantic adds the validator name / tuple index to the location; keep the user-facing dotted key
    loc = [str(p) for p in error["loc"] if not str(p).startswith(("function-", "tuple[", "literal["))]
    key = ".".join(loc) or "<root>"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key" + (f" ({unknown_key_hint})" if unknown_key_hint else "")
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message} (got {error.get('input')!r})"


def validate_config(data: dict, schema: type[ConfigT], source: str = "config") -> ConfigT:
    """Validate a nested dict against ``schema``; the first problem becomes one UsageError line."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        hint = "check the spelling; see the config's documented keys"
        raise UsageError(describe_validation_error(exc, source, hint)) from None


def load_config(path: str | Path | None, schema: type[ConfigT], overrides: list[str] | None = None) -> ConfigT:
    """Read a YAML file (or start from the schema's defaults when ``path`` is None), apply
    overrides, and validate."""
    data: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise UsageError(f"--config {path}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UsageError(f"--config {path}: not valid YAML ({exc})".splitlines()[0]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UsageError(f"--config {path}: expected a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    apply_overrides(data, overrides)
    return validate_config(data, schema, source)
