"""Strict reading of TOML tables: every key is accounted for, every error names its key path."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from retention.errors import ConfigError

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
T = TypeVar("T")
_MISSING: Any = object()


@dataclass(frozen=True)
class EnvRef:
    """A `"${NAME}"` value, read from the environment only when it is used."""

    name: str
    key: str  # where it stands in the config, for error messages

    def __repr__(self) -> str:
        return f"${{{self.name}}}"


Setting = str | EnvRef


class Environment:
    """Resolves `${NAME}` references and remembers every value it handed out, so logs can redact them."""

    def __init__(self, variables: Mapping[str, str] | None = None, *, source: str = "") -> None:
        self._variables = dict(os.environ if variables is None else variables)
        self.source = source
        self.revealed: set[str] = set()

    def resolve(self, setting: Setting, *, secret: bool = True) -> str:
        """The value of a setting; unless `secret` is False, it is redacted from every later message and log."""
        if isinstance(setting, str):
            return setting
        value = self._variables.get(setting.name)
        if value is None or value == "":
            raise ConfigError(
                f"environment variable {setting.name} is not set (the config reads it as ${{{setting.name}}})",
                source=self.source,
                key=setting.key,
            )
        if secret:
            self.revealed.add(value)
        return value


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "an array", dict: "a table"}


class Section:
    """One TOML table being read; `done()` rejects every key nobody asked for."""

    def __init__(self, data: Any, path: str, source: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"expected a table, got {_describe(data)}", source=source, key=path or None)
        self._data: dict[str, Any] = data
        self.path = path
        self.source = source
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, message: str) -> ConfigError:
        return ConfigError(message, source=self.source, key=self.key(name) if name else self.path or None)

    def has(self, name: str) -> bool:
        return name in self._data

    def get(self, name: str, kind: type[T], default: Any = _MISSING) -> T:
        """The value of `name`, which must be of `kind`; `default` when absent, an error when required."""
        self._seen.add(name)
        if name not in self._data:
            if default is _MISSING:
                raise self.error(name, f"is required ({_TYPE_NAMES.get(kind, kind.__name__)})")
            return default  # type: ignore[no-any-return]
        value = self._data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, f"expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {_describe(value)}")
        return value

    def setting(self, name: str, default: Any = _MISSING) -> Setting:
        """A string that may be a `${NAME}` environment reference."""
        value = self.get(name, str, default)
        if value is default and not isinstance(value, str):
            return value  # type: ignore[no-any-return]
        match = _ENV_REF.match(value)
        return EnvRef(match.group(1), self.key(name)) if match else value

    def strings(self, name: str, default: Any = _MISSING) -> tuple[str, ...]:
        values = self.get(name, list, default)
        if values is default and not isinstance(values, list):
            return values  # type: ignore[no-any-return]
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise self.error(f"{name}[{index}]", f"expected a string, got {_describe(value)}")
        return tuple(values)

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise self.error(name, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    def parsed(self, name: str, parse: Callable[[str], T], default: Any = _MISSING) -> T:
        """A string turned into a value by `parse`, whose ValueError becomes a config error."""
        value = self.get(name, str, default)
        if value is default and not isinstance(value, str):
            return value  # type: ignore[no-any-return]
        try:
            return parse(value)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def positive(self, name: str, default: int | None) -> Any:
        """A count of 1 or more (a batch size)."""
        value = self.get(name, int, default)
        if value is not None and value < 1:
            raise self.error(name, f"expected a positive integer, got {value}")
        return value

    def section(self, name: str, *, required: bool = False) -> Section | None:
        self._seen.add(name)
        if name not in self._data:
            if required:
                raise self.error(name, "is required (a table)")
            return None
        return Section(self._data[name], self.key(name), self.source)

    def raw(self, name: str) -> Any:
        self._seen.add(name)
        return self._data.get(name, _MISSING)

    def items(self) -> list[tuple[str, Any]]:
        self._seen.update(self._data)
        return list(self._data.items())

    def done(self, hint: str = "") -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            known = sorted(self._seen)
            message = f"unknown key; expected one of: {', '.join(known)}" if known else "unknown key"
            raise self.error(unknown[0], message + (f" ({hint})" if hint else ""))


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return f"{name.split(' ', 1)[-1]} {value!r}" if kind in (str, int, float) else name
    return type(value).__name__


def is_missing(value: Any) -> bool:
    return value is _MISSING
