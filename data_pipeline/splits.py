"""Training splits of HICO-Det: zero-shot filtering (reference §3.4), fractional subsets (§4.2)
and the rare / non-rare classes of the training file in use.

Zero-shot: under a setting of `ZERO_SHOT_SETTINGS` other than 'none', every (subject, object)
pair of a training image that carries an unseen HOI loses all its HOI rows (as the reference's
`--del_unseen` loader, §3.3), and an image left without any pair is dropped. The test split is
never filtered (the evaluation uses all classes).

Fractional subsets: the authors' `trainval_hico_{5,15,25,50}%.json` are used when present. No
selection rule was published, so when one is missing `sample_fraction` draws a deterministic
subset instead: the images of `trainval_hico.json` ranked by sha256(f"{seed}/{file_name}"), the
first round(N * percent / 100) kept in file order. The rank does not depend on the percentage,
so the 5 % sample is inside the 15 % one, and so on. Such a subset is **not the authors' one**:
its file name says so (`sampled_fraction_name`) and it is logged.
"""
import dataclasses
import hashlib
import json
import logging
import os
import re

import numpy as np

from data_pipeline.class_tables import ClassTables
from data_pipeline.hico_reader import HoiRecord

ZERO_SHOT_SETTINGS = ("none", "rare_first", "non_rare_first", "unseen_object", "unseen_verb")
FULL_TRAIN_FILE = "trainval_hico.json"
FRACTIONS = (5, 15, 25, 50)  # percentages of the authors' subsets (reference §4.2)
_FRACTION_FILE = re.compile(r"trainval_hico_(\d+)%\.json")


# ----------------------------------------------------------------------------- zero-shot

@dataclasses.dataclass(frozen=True)
class ZeroShotStats:
    """What a zero-shot filter removed from a split.

    Attributes:
        setting: one of `ZERO_SHOT_SETTINGS`.
        num_unseen_hois: number of unseen HOI classes of the setting.
        pairs_removed: (subject, object) pairs dropped because they carry an unseen HOI.
        hois_removed: HOI rows dropped with those pairs.
        images_removed: images that had pairs and have none left (dropped).
        images_kept: images left in the split.
    """
    setting: str
    num_unseen_hois: int
    pairs_removed: int
    hois_removed: int
    images_removed: int
    images_kept: int


def unseen_hois(tables: ClassTables, setting: str) -> np.ndarray:
    """[U] int32 unseen HOI indices of `setting` (sorted); empty for 'none'."""
    check_zero_shot_setting(setting)
    if setting == "none":
        return np.zeros(0, np.int32)
    return np.sort(np.array(tables.unseen_hois(setting), np.int32))


def seen_hois(tables: ClassTables, setting: str) -> np.ndarray:
    """[K_train] int32 HOI indices trained on under `setting`, ascending (reference §3.4)."""
    seen = np.ones(tables.num_hois, bool)
    seen[unseen_hois(tables, setting)] = False
    return np.flatnonzero(seen).astype(np.int32)


def check_zero_shot_setting(setting: str) -> None:
    if setting not in ZERO_SHOT_SETTINGS:
        raise ValueError(f"dataset.zero_shot is {setting!r}, expected one of {ZERO_SHOT_SETTINGS}")


def filter_zero_shot(records: list[HoiRecord], tables: ClassTables,
                     setting: str) -> tuple[list[HoiRecord], ZeroShotStats]:
    """Drops the pairs carrying an unseen HOI of `setting`, then the images left without pairs.

    Images that had no HOI to begin with are kept (the loader skips them for training); boxes
    are kept even when no pair refers to them any more. Logs and returns the counts.
    """
    unseen = np.zeros(tables.num_hois, bool)
    unseen[unseen_hois(tables, setting)] = True
    kept, pairs, rows, images = [], 0, 0, 0
    for record in records:
        clean, pairs_removed = drop_unseen_pairs(record, unseen)
        pairs += pairs_removed
        rows += len(record.hois) - len(clean.hois)
        if len(record.hois) and not len(clean.hois):
            images += 1
        else:
            kept.append(clean)
    stats = ZeroShotStats(setting, int(unseen.sum()), pairs, rows, images, len(kept))
    if setting != "none":
        logging.info("Zero-shot '%s' (%d unseen HOIs): removed %d pairs (%d HOI rows) and %d "
                     "images left without pairs; %d images kept", setting,
                     stats.num_unseen_hois, pairs, rows, images, len(kept))
    return kept, stats


def drop_unseen_pairs(record: HoiRecord, unseen: np.ndarray) -> tuple[HoiRecord, int]:
    """`record` without the HOI rows of its pairs that carry an unseen HOI ([K] bool mask).

    Returns (record, number of (subject, object) pairs removed).
    """
    if not len(record.hois):
        return record, 0
    # Pair id of every row: rows with the same (subject, object) share it.
    pairs, pair_of_row = np.unique(record.hois[:, :2], axis=0, return_inverse=True)
    pair_of_row = pair_of_row.reshape(-1)
    bad_pair = np.zeros(len(pairs), bool)
    np.logical_or.at(bad_pair, pair_of_row, unseen[record.hois[:, 3]])
    if not bad_pair.any():
        return record, 0
    hois = record.hois[~bad_pair[pair_of_row]]
    return dataclasses.replace(record, hois=hois), int(bad_pair.sum())


# ----------------------------------------------------------------------------- fractions

def fraction_of(train_file: str) -> int:
    """Percentage of HICO-Det training images that `train_file` names: 100 for the full file,
    p for the authors' `trainval_hico_{p}%.json` (p in `FRACTIONS`)."""
    if train_file == FULL_TRAIN_FILE:
        return 100
    match = _FRACTION_FILE.fullmatch(train_file)
    if match is None or int(match.group(1)) not in FRACTIONS:
        names = [FULL_TRAIN_FILE] + [fraction_file_name(p) for p in FRACTIONS]
        raise ValueError(f"dataset.train_file {train_file!r} is not a HICO-Det training file of "
                         f"the reference layout; expected one of {names}")
    return int(match.group(1))


def fraction_file_name(percent: int) -> str:
    """The authors' file name of a fractional subset, e.g. 'trainval_hico_5%.json'."""
    return f"trainval_hico_{percent}%.json"


def sampled_fraction_name(percent: int, seed: int) -> str:
    """The file name of a subset drawn by `sample_fraction`, marked as not the authors'."""
    return f"trainval_hico_{percent}%_SAMPLED_NOT_AUTHORS_seed{seed}.json"


def sample_fraction(entries: list, percent: int, seed: int) -> list:
    """The deterministic `percent` % subset of annotation `entries` (dicts with 'file_name').

    Keeps max(1, round(N * percent / 100)) entries: those with the smallest
    sha256(f"{seed}/{file_name}") (ties by index), in their original order.
    """
    if not 0 < percent <= 100:
        raise ValueError(f"fraction {percent} % is not in (0, 100]")
    count = max(1, int(len(entries) * percent / 100 + 0.5)) if entries else 0
    rank = sorted(range(len(entries)), key=lambda i: (_digest(seed, entries[i]["file_name"]), i))
    return [entries[i] for i in sorted(rank[:count])]


def write_sampled_fraction(entries: list, percent: int, seed: int, out_dir: str) -> str:
    """Writes `sample_fraction(entries, percent, seed)` to `out_dir`; returns its path."""
    path = os.path.join(out_dir, sampled_fraction_name(percent, seed))
    subset = sample_fraction(entries, percent, seed)
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(subset, f)
    logging.warning("%s is missing: wrote %s, a deterministic %d %% sample (%d of %d images, "
                    "seed %d). It is NOT the authors' subset; results are not comparable with "
                    "the published fractional numbers.", fraction_file_name(percent), path,
                    percent, len(subset), len(entries), seed)
    return path


def _digest(seed: int, file_name: str) -> bytes:
    return hashlib.sha256(f"{seed}/{file_name}".encode()).digest()


# ----------------------------------------------------------------------------- rare classes

def rare_split(hoi_counts: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """(rare, non_rare) int32 HOI indices from the instance counts of the training file in use.

    Rare: 0 < count < threshold; non-rare: count >= threshold. Classes absent from the file (a
    fractional subset) are in neither list, as in the reference (§4.2).
    """
    counts = np.asarray(hoi_counts)
    rare = np.flatnonzero((counts > 0) & (counts < threshold)).astype(np.int32)
    non_rare = np.flatnonzero(counts >= threshold).astype(np.int32)
    absent = int((counts == 0).sum())
    if absent:
        logging.warning("%d HOI classes have no instance in the training file: neither rare nor "
                        "non-rare", absent)
    return rare, non_rare
