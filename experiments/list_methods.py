"""Prints the weighting catalogue as a markdown table (name, what it needs, hyperparameters, paper line).

    python -m experiments.list_methods > /tmp/methods.md
"""

from jmtl import weighting


def table() -> str:
    rows = ["| method | needs | hyperparameters (defaults) | what it is |", "|---|---|---|---|"]
    for name in weighting.names():
        t = weighting.get(name) if name != "static" else weighting.get(name, weights=None)
        hp = ", ".join(f"`{k}={v!r}`" for k, v in weighting.hyperparameters(name).items()) or "—"
        doc = (weighting.factory(name).__doc__ or "").strip().splitlines()
        first = doc[0].rstrip(".") if doc else ""
        rows.append(f"| `{name}` | {t.requires} | {hp} | {first} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
