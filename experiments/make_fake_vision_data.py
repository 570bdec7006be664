r"""Write tiny vision datasets in the exact on-disk formats the loaders read (a few examples each).

    python -m experiments.make_fake_vision_data --out /tmp/fake_vision              # all five
    python -m experiments.make_fake_vision_data --out /tmp/fake_vision --dataset nyuv2 --n 4

writes ``OUT/nyuv2/`` (MTAN's ``{train,val}/{image,label,depth,normal}/{i}.npy``, 288x384 HWC),
``OUT/cityscapes/`` (``{train,val}/{image,label_7,label_19,depth}/{i}.npy``, 128x256), ``OUT/celeba/``
(``Anno/list_attr_celeba.txt``, ``Eval/list_eval_partition.txt``, ``Img/img_align_celeba/*.jpg``),
``OUT/office31/`` and ``OUT/office_home/`` (JPEGs and LibMTL's ``data_txt/<Domain>_{train,val,test}.txt``).
Then ``--config.dataset.data_dir=OUT`` points any run at them. The same from Python:
``jmtl.data.fake_vision.write(name, out_dir, n=...)``.
"""

from __future__ import annotations

import argparse

from jmtl.data import fake_vision


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="parent folder; each dataset goes to OUT/<name>/")
    parser.add_argument(
        "--dataset",
        choices=fake_vision.NAMES,
        action="append",
        help="which dataset(s); repeat the flag for several (default: all)",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="examples per split (NYUv2/Cityscapes per folder, Office per domain and split, CelebA in total)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n is not None and args.n < 1:
        parser.error("--n must be at least 1")
    for name in args.dataset or fake_vision.NAMES:
        print(fake_vision.write(name, args.out, n=args.n, seed=args.seed))


if __name__ == "__main__":
    main()
