"""Runs experiments.train on a small gradnorm_toy config; prints the summary and a params digest as JSON.

Arguments: workdir, then optional config overrides ``field=value`` (e.g. ``num_steps=30``). Set
JMTL_COORDINATOR / JMTL_NUM_PROCESSES / JMTL_PROCESS_ID for a multi-process run.
"""

import json
import sys

import jax
import numpy as np

from experiments.configs import gradnorm_toy
from jmtl.training.loop import train


def main():
    workdir, overrides = sys.argv[1], sys.argv[2:]
    config = gradnorm_toy.get_config()
    config.num_steps = 30
    config.eval_every_steps = 10
    config.progress_bar = False
    for item in overrides:
        key, value = item.split("=", 1)
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = type(node[last])(value) if node[last] is not None else value
    summary, state = train(config, workdir)
    leaves = {
        jax.tree_util.keystr(p): np.asarray(v).ravel()[:50].tolist()
        for p, v in jax.tree_util.tree_flatten_with_path(state.params)[0]
    }
    print("RESULT " + json.dumps({"summary": summary, "params": leaves, "process": jax.process_index()}))


if __name__ == "__main__":
    main()
