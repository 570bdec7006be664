"""UCI Census-Income (KDD) as the two-task benchmark of MMoE (Ma et al., KDD 2018, Sec. 6.3).

Raw files (never copied into the repo), from ``data_dir`` / ``$JMTL_DATA_DIR`` (the folder itself or
its ``census_income_kdd/`` subfolder): ``census-income.data`` and ``census-income.test``, each
plain, ``.gz`` (the official UCI form) or ``.bz2``; the compression is read from the file's magic
bytes. Format: 42 fields per line separated by ``", "``: 40 attributes, ``instance weight`` at
index 24 and the label (``- 50000.`` / ``50000+.``) last; ``?`` marks a missing value.

Verification (``verify_checksums=True``, the default): the raw files' published checksums
(``jmtl.data.fingerprint.PUBLISHED``, checked on every load) and, when the cache is built, the
published row counts (199,523 train / 99,762 test) and the SHA-256 of the *decompressed* text
(the values in shared/data/README.md; the same for the official ``.gz``, a bz2 or a plain copy of
that text, so the official ``census-income.data.gz`` -- which has no published file checksum here
-- is verified too). Always, whatever ``verify_checksums``: every line has 42 fields, the label is one of
the two values, the continuous attributes and the instance weight parse as finite numbers.
Errors name the file, the 1-based line and the column.

Tasks (MMoE Sec. 6.3; both groups are binary):

* group 1 (``income_marital``): ``income`` = income > 50K, ``marital`` = marital status is
  "Never married";
* group 2 (``education_marital``): ``education`` = education "at least college", ``marital``.

The paper does not list which of the 17 education values count as "at least college". Here it is
an associate degree or higher (``COLLEGE_EDUCATION``: both associate degrees, bachelor's,
master's, professional school, doctorate): the paper reports |Pearson correlation| 0.2373 between
the group-2 labels over 10,000 random samples, and this split gives 0.2400 on train (0.2376 on
test), while "bachelor's or higher" (used by some public re-implementations) gives 0.198 and
adding "some college but no degree" gives 0.288 (the sampling s.d. is about 0.009). Group 1 gives
0.178 against the paper's 0.1768. ``education_split='bachelors'`` selects the stricter split.

As the paper says, education and marital status are removed from the inputs in both groups (they
are labels), and so is the income label; the instance weight is not a feature either (the UCI
notes: it "should *not* be used in the classifiers"). That leaves 38 inputs: 31 categorical and 7
continuous (age, wage per hour, capital gains, capital losses, dividends from stocks, number of
persons worked for employer, weeks worked in year).

* Categorical inputs become integer ids with a vocabulary from TRAIN only: id 0 is the
  out-of-vocabulary id (a test value never seen in train), train values get 1..V in sorted order.
  ``?`` (missing) is an ordinary value with its own id.
* Continuous inputs are standardised with the TRAIN mean and (population) standard deviation.

Splits: train = ``census-income.data``; the paper "further randomly split[s] test examples into a
validation dataset and a test dataset by the fraction of 1:1". Here a permutation of the 99,762
test rows drawn with ``np.random.default_rng(seed)`` (``seed``, default 0, part of the cache key)
puts its first half (49,881) in ``validation`` and the rest in ``test``.

Storage: a tfds builder writes the three splits (array_record, read back without TensorFlow) via
``jmtl.data.cache.prepare``: the cache folder is keyed by the raw files' source fingerprint and
checked for damage before each use, as for the other datasets. The vocabularies and the
standardisation statistics go to the builder's metadata (``builder.info.metadata``), so a
prepared cache loads without the raw files (with no data dir given, the one cached build of this
seed is used, as MultiMNIST does).

Batch format (what ``load_census(...).train_iterator`` yields and ``arrays(split)`` holds)::

  {'x': float32 [B, 38]   # columns 0..30: categorical ids (exact small integers),
                          # columns 31..37: standardised continuous values
   <task>: int32 [B] in {0, 1} for each task of the group}

``DatasetSpec.input_transform`` (applied on device by the train and eval steps) one-hot encodes
the ids and appends the continuous values: the model sees float32 ``[B, input_dim]`` (input_dim
= total vocabulary size incl. the OOV ids + 7), i.e. the one-hot input of the reference Keras
MMoE implementation, so the plain ``mlp`` encoder works. An embedding encoder can instead call
``split_inputs`` on the raw ``x`` (the vocabulary sizes are in ``CensusInfo``).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import os
import pathlib
import sys
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow_datasets as tfds

from jmtl.data import cache, fingerprint
from jmtl.data.idx import DataError
from jmtl.data.pipeline import DatasetSpec, LabelSpec, MTLDataset, resolve_cache_dir

ENV_DATA_DIR = "JMTL_DATA_DIR"
SUBFOLDER = "census_income_kdd"
SEPARATOR = ", "

# Column names in file order (census-income.names; index 24 is the instance weight, 41 the label).
COLUMNS = (
    "age",
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_stat",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income",
)
NUM_FIELDS = len(COLUMNS)  # 42
CONTINUOUS = (
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
)
LABEL_COLUMNS = ("income", "marital_stat", "education")
IGNORED = ("instance_weight",)
CATEGORICAL = tuple(c for c in COLUMNS if c not in CONTINUOUS + LABEL_COLUMNS + IGNORED)
INPUT_DIM = len(CATEGORICAL) + len(CONTINUOUS)  # 38 stored columns of 'x'
OOV_ID = 0
BINARY_KIND = "binary"  # = jmtl.tasks.BINARY (one logit, sigmoid cross-entropy); not imported: data stays model-free

INCOME_NEGATIVE, INCOME_POSITIVE = "- 50000.", "50000+."
NEVER_MARRIED = "Never married"
BACHELORS_OR_HIGHER = (
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
)
COLLEGE_EDUCATION = ("Associates degree-occup /vocational", "Associates degree-academic program") + BACHELORS_OR_HIGHER
EDUCATION_SPLITS = {"associates": COLLEGE_EDUCATION, "bachelors": BACHELORS_OR_HIGHER}
ALL_EDUCATION = (
    "Children",
    "Less than 1st grade",
    "1st 2nd 3rd or 4th grade",
    "5th or 6th grade",
    "7th and 8th grade",
    "9th grade",
    "10th grade",
    "11th grade",
    "12th grade no diploma",
    "High school graduate",
    "Some college but no degree",
) + COLLEGE_EDUCATION

GROUPS = {
    "income_marital": ("income", "marital"),
    "education_marital": ("education", "marital"),
}
GROUP_ALIASES = {1: "income_marital", 2: "education_marital"}


@dataclasses.dataclass(frozen=True)
class RawFile:
    """One raw file: its base name and what the published file holds."""

    name: str
    rows: int
    sha256: str  # of the decompressed text


TRAIN = RawFile("census-income.data", 199_523, "3676a81db7d3528f3f8b9f3c699d0f0aa28db45e6e994fa0b8ed38327539ee86")
TEST = RawFile("census-income.test", 99_762, "98402b1ab879573d0a7f38a699a40258080e25e33d3401e7bf9c96d3fa0fab8c")
SUFFIXES = ("", ".gz", ".bz2")

_FIX = (
    "download census.tar.gz (or census-income.data.gz / census-income.test.gz) from "
    "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld/ and point "
    f"--config.dataset.data_dir / ${ENV_DATA_DIR} at the folder holding the two files (plain, .gz or "
    f".bz2), or at its parent with a {SUBFOLDER}/ subfolder"
)


def _error(path: os.PathLike[str] | str, problem: str, fix: str = _FIX) -> DataError:
    return DataError(f"{path}: {problem}. Fix: {fix}.")


# ----------------------------------------------------------------------------- reading


def find_file(data_dir: os.PathLike[str] | str | None, raw: RawFile) -> pathlib.Path:
    """The path of ``raw`` (plain, ``.gz`` or ``.bz2``) in ``data_dir`` or ``data_dir/census_income_kdd``.

    Raises:
      DataError: no data dir given, or the file is absent in both places.
    """
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or None
    if data_dir is None:
        raise DataError(f"Census-Income: no data dir (neither a data_dir argument nor ${ENV_DATA_DIR}). Fix: {_FIX}.")
    root = pathlib.Path(data_dir).expanduser()
    for folder in (root / SUBFOLDER, root):
        for suffix in SUFFIXES:
            path = folder / (raw.name + suffix)
            if path.is_file():
                return path
    tried = ", ".join(raw.name + s for s in SUFFIXES)
    raise _error(root, f"no Census-Income file {raw.name} (tried {tried} here and in {SUBFOLDER}/)")


def read_text(path: os.PathLike[str] | str) -> bytes:
    """The decompressed bytes of a plain, gzip or bzip2 file (chosen by the magic bytes)."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(3)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        if head == b"BZh":
            with bz2.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, ValueError) as e:  # truncated / corrupt gzip or bzip2 stream
        raise _error(path, f"cannot decompress ({type(e).__name__}: {e}); the file is truncated or corrupt") from e


class RawTable(NamedTuple):
    """A parsed file: per column, the distinct values and every row's code into them."""

    values: tuple[tuple[str, ...], ...]  # [42] distinct strings of each column, first-seen order
    codes: np.ndarray  # int32 [rows, 42]


def parse(text: bytes, path: os.PathLike[str] | str, raw: RawFile | None = None) -> RawTable:
    """Parses and checks the decompressed text of one file.

    Args:
      text: the decompressed file contents.
      path: used in error messages.
      raw: when given, the published row count and SHA-256 are checked too.

    Raises:
      DataError: naming the file, the 1-based line and the column of the first problem.
    """
    if raw is not None:
        digest = hashlib.sha256(text).hexdigest()
    try:
        lines = text.decode("ascii").split("\n")
    except UnicodeDecodeError as e:
        line = text[: e.start].count(b"\n") + 1
        raise _error(path, f"line {line}: byte {text[e.start]:#x} is not ASCII (the file is corrupt)") from e
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if raw is not None and len(lines) != raw.rows:
        raise _error(path, f"{len(lines)} rows, the published {raw.name} has {raw.rows} (truncated or altered file)")
    if not lines:
        raise _error(path, "the file is empty")
    maps: list[dict[str, int]] = [{} for _ in range(NUM_FIELDS)]
    codes = []
    for i, line in enumerate(lines):
        fields = line.split(SEPARATOR)
        if len(fields) != NUM_FIELDS:
            raise _error(
                path,
                f"line {i + 1} has {len(fields)} fields separated by {SEPARATOR!r}, expected {NUM_FIELDS} "
                f"(40 attributes, instance weight, label): {line[:120]!r}",
            )
        codes.append([m.setdefault(v, len(m)) for m, v in zip(maps, fields)])
    table = RawTable(tuple(tuple(m) for m in maps), np.asarray(codes, np.int32))
    _check_values(table, path)
    if raw is not None and digest != raw.sha256:
        raise _error(
            path,
            f"SHA-256 of the decompressed text is {digest}, the published {raw.name} gives {raw.sha256} "
            "(same row count, so values were altered)",
            _FIX + f"; pass {fingerprint.FLAG_HINT} only for a deliberately modified copy",
        )
    return table


def _first_line(table: RawTable, column: int, value_code: int) -> int:
    return int(np.argmax(table.codes[:, column] == value_code)) + 1


def _check_values(table: RawTable, path) -> None:
    label = COLUMNS.index("income")
    for code, value in enumerate(table.values[label]):
        if value not in (INCOME_NEGATIVE, INCOME_POSITIVE):
            raise _error(
                path,
                f"line {_first_line(table, label, code)}, column 42 (income): label {value!r} is neither "
                f"{INCOME_NEGATIVE!r} nor {INCOME_POSITIVE!r}",
            )
    for name in CONTINUOUS + IGNORED:
        j = COLUMNS.index(name)
        for code, value in enumerate(table.values[j]):
            try:
                ok = np.isfinite(float(value))
            except ValueError:
                ok = False
            if not ok:
                raise _error(
                    path,
                    f"line {_first_line(table, j, code)}, column {j + 1} ({name}): {value!r} is not a finite number",
                )


def _column(table: RawTable, name: str) -> np.ndarray:
    """The strings of one column, as a numpy array of objects."""
    j = COLUMNS.index(name)
    return np.asarray(table.values[j], dtype=object)[table.codes[:, j]]


def _continuous(table: RawTable) -> np.ndarray:
    out = np.empty((len(table.codes), len(CONTINUOUS)), np.float64)
    for k, name in enumerate(CONTINUOUS):
        j = COLUMNS.index(name)
        out[:, k] = np.asarray([float(v) for v in table.values[j]], np.float64)[table.codes[:, j]]
    return out


def _labels(table: RawTable, education_split: str) -> dict[str, np.ndarray]:
    education = _column(table, "education")
    unknown = sorted(set(education) - set(ALL_EDUCATION))
    if unknown:
        raise DataError(
            f"Census-Income: education value(s) {unknown[:5]} are not among the 17 of census-income.names; "
            "the education task cannot be labelled. Fix: use the original UCI files"
        )
    college = set(EDUCATION_SPLITS[education_split])
    return {
        "income": (_column(table, "income") == INCOME_POSITIVE).astype(np.int64),
        "marital": (_column(table, "marital_stat") == NEVER_MARRIED).astype(np.int64),
        "education": np.asarray([e in college for e in education], np.int64),
    }


def encode(train: RawTable, others: Sequence[RawTable], education_split: str = "associates"):
    """Turns parsed tables into model arrays, with every statistic taken from ``train``.

    Args:
      train: the parsed training file (vocabularies, means and standard deviations come from it).
      others: further parsed tables (the test file) encoded with the train statistics.
      education_split: 'associates' (default; see the module docstring) or 'bachelors'.

    Returns:
      ``(arrays, info)``: ``arrays`` is a list (train first, then ``others``) of
      ``{'categorical': int32 [n, 31], 'continuous': float32 [n, 7], 'income', 'marital',
      'education': int64 [n]}``; ``info`` a ``CensusInfo``.
    """
    if education_split not in EDUCATION_SPLITS:
        raise DataError(f"education_split must be one of {sorted(EDUCATION_SPLITS)}, got {education_split!r}")
    vocab = {name: tuple(sorted(set(train.values[COLUMNS.index(name)]))) for name in CATEGORICAL}
    cont = _continuous(train)
    mean = cont.mean(axis=0)
    std = cont.std(axis=0)
    # A constant column carries no information; dividing by 1 keeps it at 0 instead of NaN.
    std = np.where(std > 0, std, 1.0)
    info = CensusInfo(
        categorical=CATEGORICAL,
        vocabularies=vocab,
        continuous=CONTINUOUS,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        education_split=education_split,
    )
    out = []
    for table in (train, *others):
        ids = np.empty((len(table.codes), len(CATEGORICAL)), np.int32)
        for k, name in enumerate(CATEGORICAL):
            j = COLUMNS.index(name)
            lookup = {v: i + 1 for i, v in enumerate(vocab[name])}  # 0 = OOV
            per_value = np.asarray([lookup.get(v, OOV_ID) for v in table.values[j]], np.int32)
            ids[:, k] = per_value[table.codes[:, j]]
        arrays = {
            "categorical": ids,
            "continuous": ((_continuous(table) - mean) / std).astype(np.float32),
        }
        arrays.update(_labels(table, education_split))
        out.append(arrays)
    return out, info


class CensusInfo(NamedTuple):
    """What the encoding used (stored in the tfds metadata of the cache).

    Attributes:
      categorical: names of the categorical input columns, in the order of ``x[:, :31]``.
      vocabularies: column -> its train values; value ``vocabularies[c][i]`` has id ``i + 1``,
        id 0 is out-of-vocabulary.
      continuous: names of the continuous input columns, in the order of ``x[:, 31:]``.
      mean, std: the train statistics the continuous columns were standardised with.
      education_split: which education values count as "at least college".
    """

    categorical: tuple[str, ...]
    vocabularies: Mapping[str, tuple[str, ...]]
    continuous: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    education_split: str

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        """Ids per categorical column, the OOV id included."""
        return tuple(len(self.vocabularies[c]) + 1 for c in self.categorical)

    @property
    def one_hot_dim(self) -> int:
        """Width of the model input made by ``input_transform``."""
        return sum(self.vocab_sizes) + len(self.continuous)

    def as_metadata(self) -> dict:
        return {
            "categorical": list(self.categorical),
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
            "continuous": list(self.continuous),
            "mean": list(self.mean),
            "std": list(self.std),
            "education_split": self.education_split,
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "CensusInfo":
        return cls(
            categorical=tuple(meta["categorical"]),
            vocabularies={k: tuple(v) for k, v in meta["vocabularies"].items()},
            continuous=tuple(meta["continuous"]),
            mean=tuple(float(m) for m in meta["mean"]),
            std=tuple(float(s) for s in meta["std"]),
            education_split=str(meta["education_split"]),
        )


def validation_test_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the official test file that go to 'validation' (first half of a seeded
    permutation, ``n // 2`` rows) and to 'test' (the other ``n - n // 2``), each sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


# ----------------------------------------------------------------------------- tfds builder


@dataclasses.dataclass(eq=False)
class CensusConfig(tfds.core.BuilderConfig):
    """Builder config; the name encodes every field, so caches never mix."""

    seed: int = 0
    education_split: str = "associates"
    source_fingerprint: str = ""


def census_config(seed: int = 0, education_split: str = "associates", source_fingerprint: str = "") -> CensusConfig:
    """Validates the arguments and returns the matching config.

    Args:
      seed: seed of the validation/test halving (non-negative int).
      education_split: 'associates' or 'bachelors' (see the module docstring).
      source_fingerprint: ``fingerprint.source_fingerprint`` of the raw files, appended to the
        name as ``-src<fingerprint>`` so the cache folder is tied to the exact files.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"census: seed must be a non-negative int, got {seed!r}")
    if education_split not in EDUCATION_SPLITS:
        raise DataError(f"census: education_split must be one of {sorted(EDUCATION_SPLITS)}, got {education_split!r}")
    name = f"seed{int(seed)}" + ("" if education_split == "associates" else f"_{education_split}")
    if source_fingerprint:
        name += f"-src{source_fingerprint}"
    return CensusConfig(
        name=name,
        seed=int(seed),
        education_split=education_split,
        source_fingerprint=source_fingerprint,
        description=f"validation/test halves drawn with seed {int(seed)}; education split {education_split}",
    )


class CensusIncome(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder for Census-Income (KDD) with the MMoE labels (see the module docstring)."""

    name = "census_income_kdd"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MMoE (Ma et al. 2018) tasks; train-vocabulary ids, train-standardised continuous."}
    BUILDER_CONFIGS = [census_config()]

    def __init__(self, *, raw_paths: Mapping[str, os.PathLike[str] | str] | None = None, verify: bool = True, **kwargs):
        """Creates the builder; the raw files are read only if the cache has to be built.

        Args:
          raw_paths: ``TRAIN.name`` / ``TEST.name`` -> the file to read (see ``find_file``); the
            caller has checked them against the config's source fingerprint.
          verify: check the published row counts and decompressed SHA-256s of the raw files.
          **kwargs: forwarded to ``tfds.core.GeneratorBasedBuilder`` (data_dir = the cache, config).
        """
        self._raw_paths = dict(raw_paths or {})
        self._verify = verify
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        label = tfds.features.ClassLabel(num_classes=2)
        return tfds.core.DatasetInfo(
            builder=self,
            description="UCI Census-Income (KDD) with the MMoE task labels (income, marital, education).",
            features=tfds.features.FeaturesDict(
                {
                    "categorical": tfds.features.Tensor(shape=(len(CATEGORICAL),), dtype=np.int32),
                    "continuous": tfds.features.Tensor(shape=(len(CONTINUOUS),), dtype=np.float32),
                    "income": label,
                    "marital": label,
                    "education": label,
                }
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
            citation="Ma et al., Modeling Task Relationships in Multi-task Learning with Multi-gate "
            "Mixture-of-Experts, KDD 2018; UCI Census-Income (KDD), Lane & Kohavi.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # raw files come from the local data dir
        cfg = self.builder_config
        tables = []
        for raw in (TRAIN, TEST):  # read and verify both files before writing anything
            if raw.name not in self._raw_paths:
                raise DataError(f"Census-Income: the cache must be built but no {raw.name} was given. Fix: {_FIX}.")
            path = self._raw_paths[raw.name]
            tables.append(parse(read_text(path), path, raw if self._verify else None))
        (train, test), info = encode(tables[0], tables[1:], cfg.education_split)
        self.info.metadata.update(info.as_metadata())
        val_ids, test_ids = validation_test_split(len(test["income"]), cfg.seed)
        take = lambda d, ids: {k: v[ids] for k, v in d.items()}
        return {
            "train": self._generate_examples(train),
            "validation": self._generate_examples(take(test, val_ids)),
            "test": self._generate_examples(take(test, test_ids)),
        }

    def _generate_examples(self, data: Mapping[str, np.ndarray]) -> Iterator[tuple[int, dict]]:
        for i in range(len(data["income"])):
            yield i, {k: v[i] for k, v in data.items()}


# ----------------------------------------------------------------------------- dataset


def split_inputs(x: Any, num_categorical: int = len(CATEGORICAL)) -> tuple[Any, Any]:
    """``x`` [B, 38] -> (categorical ids int32 [B, 31], continuous float32 [B, 7]); numpy or jax."""
    ids = x[:, :num_categorical]
    return ids.astype(np.int32), x[:, num_categorical:]


def one_hot_transform(vocab_sizes: Sequence[int]) -> Callable[[Any], Any]:
    """The on-device input transform: ``x`` [B, 38] -> float32 [B, sum(vocab_sizes) + 7], the
    concatenated one-hot codes of the categorical ids followed by the continuous values."""
    sizes = tuple(int(v) for v in vocab_sizes)

    def transform(x):
        import jax  # pylint: disable=g-import-not-at-top  (this module stays importable without jax work)
        import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

        ids, cont = split_inputs(x, len(sizes))
        parts = [jax.nn.one_hot(ids[:, k], v, dtype=jnp.float32) for k, v in enumerate(sizes)]
        return jnp.concatenate(parts + [cont.astype(jnp.float32)], axis=-1)

    return transform


def _batch_fn(task_labels: Sequence[str]) -> Callable[[Mapping[str, np.ndarray]], dict]:
    def to_batch(raw: Mapping[str, np.ndarray]) -> dict:
        batch = {
            "x": np.concatenate(
                [raw["categorical"].astype(np.float32), np.asarray(raw["continuous"], np.float32)], axis=1
            )
        }
        for k in task_labels:
            batch[k] = np.asarray(raw[k], np.int32)
        return batch

    return to_batch


def resolve_group(group: int | str) -> str:
    """1 / 2 / 'income_marital' / 'education_marital' -> the group name."""
    name = GROUP_ALIASES.get(group, group) if not isinstance(group, bool) else group
    if name not in GROUPS:
        raise DataError(f"census: group must be 1, 2 or one of {sorted(GROUPS)}, got {group!r}")
    return name


def _config_and_sources(bare: CensusConfig, data_dir, cache_root: str, verify: bool) -> tuple:
    """``(config, prepare kwargs)`` for ``cache.prepare``: the config carries the raw
    files' fingerprint. With no data dir at all (no argument, no $JMTL_DATA_DIR) the one existing
    build of this config is reused, its source files named on stderr."""
    if data_dir is None and not os.environ.get(ENV_DATA_DIR):
        built = cache.find_built(cache_root, CensusIncome, f"{bare.name}-src")
        if len(built) > 1:
            raise DataError(
                f"census: no data dir given and the cache holds {len(built)} builds from different raw files: "
                + ", ".join(map(str, built))
                + f". Fix: {_FIX} (it picks the matching build)."
            )
        if built:
            record = cache.read_record(built[0]) or {}
            fp = record.get("fingerprint") or ""
            paths = [d.get("path", "?") for d in record.get("sources", [])]
            print(
                f"jmtl.data: no data dir given; using the cached {CensusIncome.name} in {built[0]}, built from "
                f"{', '.join(paths) or 'unrecorded files'} (fingerprint {fp}).",
                file=sys.stderr,
                flush=True,
            )
            config = census_config(bare.seed, bare.education_split, fp)
            return config, dict(fingerprint=fp, can_rebuild=False, rebuild_fix=_FIX)
    paths = {raw.name: find_file(data_dir, raw) for raw in (TRAIN, TEST)}
    digests = fingerprint.check_family_files("census_income_kdd", {p.name: p for p in paths.values()}, verify=verify)
    fp = fingerprint.source_fingerprint(CensusIncome.name, str(CensusIncome.VERSION), digests)
    config = census_config(bare.seed, bare.education_split, fp)
    return config, dict(fingerprint=fp, sources=digests, raw_paths=paths)


def load_census(
    *,
    data_dir: os.PathLike[str] | str | None = None,
    cache_dir: os.PathLike[str] | str | None = None,
    group: int | str = 1,
    seed: int = 0,
    education_split: str = "associates",
    verify_checksums: bool = True,
) -> MTLDataset:
    """Census-Income (KDD) with one MMoE task group, built into the tfds cache on first use.

    Args:
      data_dir: raw files (argument > $JMTL_DATA_DIR); only read when the cache lacks the dataset.
      cache_dir: tfds cache (argument > $JMTL_CACHE_DIR > ~/.cache/jmtl/tfds).
      group: 1 / 'income_marital' (tasks income, marital) or 2 / 'education_marital' (tasks
        education, marital). Both groups share one cache.
      seed: seed of the validation/test halving of the official test file (part of the cache key).
      education_split: 'associates' (associate degree or higher; default) or 'bachelors'.
      verify_checksums: check the raw files against their published checksums (every load) and the
        published row counts / decompressed SHA-256s (when building); False only for a
        deliberately modified copy (its cache is keyed by its own fingerprint).

    Returns:
      An ``MTLDataset``: labels are ``binary`` LabelSpecs (one logit, sigmoid cross-entropy), the
      spec's ``input_transform`` one-hot encodes the ids on device, ``input_shape`` is the
      transformed width. ``dataset.census_info`` is the ``CensusInfo`` of the cache.
    """
    name = resolve_group(group)
    bare = census_config(seed, education_split)  # validates before any file work
    cache_root = resolve_cache_dir(cache_dir)
    config, prepare_kwargs = _config_and_sources(bare, data_dir, cache_root, verify_checksums)
    builder = cache.prepare(CensusIncome, config, cache_root, verify=verify_checksums, **prepare_kwargs)
    info = CensusInfo.from_metadata(builder.info.metadata)
    sources = {s: builder.as_data_source(split=s) for s in ("train", "validation", "test")}
    tasks = GROUPS[name]
    spec = DatasetSpec(
        name=f"census_{name}",
        input_key="x",
        input_shape=(info.one_hot_dim,),
        labels={t: LabelSpec(t, BINARY_KIND, None, ()) for t in tasks},
        split_sizes={s: len(src) for s, src in sources.items()},
        input_transform=one_hot_transform(info.vocab_sizes),
    )
    dataset = MTLDataset(spec, sources, _batch_fn(tasks), builder)
    dataset.census_info = info
    return dataset
