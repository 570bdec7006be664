"""Writes plateau_torch.json: learning rates of PyTorch's ReduceLROnPlateau on seeded value sequences.

The independent reference of tests/test_plateau.py (jmtl's rule must give the same rates). Needs torch
(not a jmtl dependency); run it by hand when the cases change:

    python tests/reference/make_plateau_torch.py
"""

import json
from pathlib import Path

import numpy as np
import torch

rng = np.random.default_rng(0)
cases = []
for _ in range(60):
    settings = dict(
        factor=float(rng.choice([0.1, 0.5, 0.7])),
        patience=int(rng.integers(0, 4)),
        cooldown=int(rng.integers(0, 3)),
        threshold=float(rng.choice([0.0, 1e-4, 0.05])),
        min_lr=float(rng.choice([0.0, 1e-5, 3e-4])),
    )
    # Random walks rounded to 0.1 (ties make plateaus), around 0 or +-50 (negative bests, as Delta-m%).
    values = np.round(np.cumsum(rng.normal(size=40)) + rng.choice([0, 50, -50]), 1).tolist()
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", **settings)
    lrs = []
    for v in values:
        sched.step(v)
        lrs.append(opt.param_groups[0]["lr"])
    cases.append({"settings": settings, "base_lr": 1e-3, "values": values, "lrs": lrs})
out = Path(__file__).with_name("plateau_torch.json")
lines = ",\n".join(json.dumps(case) for case in cases)  # one case per line
out.write_text(f'{{"torch": {json.dumps(torch.__version__)}, "cases": [\n{lines}\n]}}\n')
print(f"wrote {out} ({len(cases)} cases, torch {torch.__version__})")
