"""Prints the weighting catalogue as a markdown table (name, what it needs, hyperparameters, paper line).

python -m experiments.list_methods > /tmp/methods.md     # from a checkout
jmtl-schemes > /tmp/methods.md                           # after pip install
"""

from jmtl.weighting.catalogue import table

if __name__ == "__main__":
    print(table())
