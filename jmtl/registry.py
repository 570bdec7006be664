"""The one small registry behind jmtl's four: weighting schemes (:mod:`jmtl.weighting.registry`),
encoders (:mod:`jmtl.models.encoders`), architectures (:mod:`jmtl.models.architectures`) and
datasets (:mod:`jmtl.data.pipeline`).

A :class:`Registry` is a ``dict`` of ``name -> object`` (so ``in``, ``[name]``, iteration and a
test's snapshot / restore work as on any dict) that adds what every registry needs and each used to
write by hand: :meth:`Registry.register` refuses a taken name (unless the registry allows
``overwrite=True``), :meth:`Registry.lookup` answers an unknown name with the valid ones and the
closest ("did you mean"), and :meth:`Registry.names` lists them.

This module imports nothing from jmtl, so every package can use it.
"""

from __future__ import annotations

import difflib
from typing import Generic, Iterable, Mapping, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "closest", "did_you_mean"]


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The closest of ``valid`` to ``name`` (``difflib``, ratio >= 0.6), or None: the one "did you
    mean" rule of jmtl (the registries' errors and the command lines' one-line errors)."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``valid`` (empty when none is close)."""
    close = closest(name, valid)
    return f" Did you mean {close!r}?" if close else ""


class Registry(dict, Generic[T]):
    """``name -> object`` with duplicate-name refusal and unknown-name errors that list the valid names.

    Args:
      kind: what the entries are, for the messages (``"encoder"``, ``"weighting scheme"``, ...).
      entries: the built-in entries, in order.
      valid_label: how the list of names is introduced in an unknown-name error (default
        ``"valid <kind>s"``).
      error: the exception class of the refusals (default ``ValueError``; the datasets' is
        ``jmtl.errors.DataError``).
      sort_names: :meth:`names` sorted (default) or in registration order.
      allow_overwrite: whether :meth:`register` accepts ``overwrite=True`` (default True).
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T] | None = None,
        *,
        valid_label: str | None = None,
        error: type[Exception] = ValueError,
        sort_names: bool = True,
        allow_overwrite: bool = True,
    ):
        super().__init__(entries or {})
        self.kind = kind
        self.valid_label = f"valid {kind}s" if valid_label is None else valid_label
        self.error = error
        self.sort_names = sort_names
        self.allow_overwrite = allow_overwrite

    def names(self) -> list[str]:
        """The registered names (sorted, or in registration order; see ``sort_names``)."""
        return sorted(self) if self.sort_names else list(self)

    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Adds ``obj`` under ``name`` and returns it; a taken name is refused unless ``overwrite``.

        Raises:
          ``self.error``: ``name`` is empty or not a string, or taken (and not ``overwrite``).
        """
        self.check_new(name, overwrite=overwrite)
        self[name] = obj
        return obj

    def check_new(self, name: str, *, overwrite: bool = False) -> None:
        """What :meth:`register` checks of the name, without adding anything (for a registry that
        validates its entry afterwards)."""
        if not isinstance(name, str) or not name.strip():
            raise self.error(f"{self.kind} name must be a non-empty string, got {name!r}")
        if overwrite and not self.allow_overwrite:
            raise self.error(f"{self.kind} registrations cannot be replaced (overwrite=True). Fix: use another name")
        if name in self and not overwrite:
            fix = (
                "choose another name, or pass overwrite=True to replace it"
                if self.allow_overwrite
                else "choose another name"
            )
            raise self.error(f"{self.kind} {name!r} is already registered. Fix: {fix}")

    def lookup(self, name: str) -> T:
        """The object registered under ``name``.

        Raises:
          ``self.error``: an unknown name; the message lists the valid names and the closest one.
        """
        if name not in self:
            valid = self.names()
            raise self.error(
                f"unknown {self.kind} {name!r}; {self.valid_label}: {', '.join(valid)}.{did_you_mean(name, valid)}"
            )
        return self[name]
