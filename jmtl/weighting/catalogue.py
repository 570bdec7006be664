"""The weighting catalogue as a markdown table, built from the registry (never written by hand)."""

from __future__ import annotations

from jmtl.weighting.registry import factory, get, hyperparameters, names


def table() -> str:
    """One row per registered scheme: name, what it needs from the step, hyperparameters, paper line."""
    rows = ["| scheme | needs | hyperparameters (defaults) | what it is |", "|---|---|---|---|"]
    for name in names():
        t = get(name)
        hp = ", ".join(f"`{k}={v!r}`" for k, v in hyperparameters(name).items()) or "—"
        doc = (factory(name).__doc__ or "").strip().splitlines()
        first = doc[0].rstrip(".") if doc else ""
        needs = t.requires + (", key" if t.needs_key else "")
        rows.append(f"| `{name}` | {needs} | {hp} | {first} |")
    return "\n".join(rows)


__all__ = ["table"]
