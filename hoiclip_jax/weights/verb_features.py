"""The verb class representation E_v from CLIP embeddings of GT crops (reference §5, §11 item 9).

Each HOI annotation (subject, object, verb) of a training image gives three crops of the raw,
un-augmented image, cut at the raw GT boxes (xyxy pixels of the original image): the human box,
the object box and their union `[min x1, min y1, max x2, max y2]`. Each crop goes through the
CLIP preprocess (bicubic short side to the CLIP input size, centre crop, CLIP mean/std, as
`transforms.clip_view`) and the CLIP image tower; `f_h`, `f_o`, `f_u` are the projected CLS
embeddings, **not** normalised. Two recipes:

- 'original' (§5.1, the released `tmp/verb.pth`): `Ĥ_k = normalise(sum of f_u over the
  instances of HOI class k)`, `Ô_o = normalise(sum of f_o over the instances whose object is o,
  plus, per image, the mean f_h of its instances into o = person)`, `v = mean over the HOI
  classes k of the verb of (Ĥ_k - Ô_obj(k))`, `E_v = normalise(v)`.
- 'seed' (§5.2, the reproduction report): `E_v = normalise(sum over the verb's instances of
  (2 f_u - f_o - f_h) / 2)`.

Decisions the reference leaves open (it has no answer for them, or crashes):
- Repeated indices inside one image are all summed (the reference's `x[idx] += y` keeps one of
  the duplicates, §5.1 caveat).
- A HOI class without instances (zero-shot filtered, or absent from the file) is left out of its
  verb's mean (the reference divides by every HOI class of the verb and would get NaN); a verb
  without any instance gets a zero row (verb logit 0; the row is trainable) and is logged.
- V-COCO no-object roles (object index -1, HOI object `no_object_index`): the human crop stands
  in for the union and the object term is dropped, i.e. f_u = f_h and f_o = 0: 'original' uses
  `Ĥ_k` alone for such a class, 'seed' adds f_h / 2.
- Crops are cut at the boxes rounded to whole pixels (what PIL's `crop` does); parts outside the
  image are black, as with PIL. An instance with a crop less than one pixel wide or high after
  rounding is skipped and counted.
"""
import collections
import concurrent.futures
import dataclasses
import functools
import logging
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from PIL import Image

from data_pipeline.class_tables import ClassTables
from data_pipeline.hico_reader import HoiRecord
from data_pipeline.transforms import clip_view
from hoiclip_jax.lib import sharding
from hoiclip_jax.models.attention import l2_normalize
from hoiclip_jax.models.clip import CLIP

METHODS = ("original", "seed")
PREFETCH_PER_THREAD = 4  # records prepared ahead per thread (bounds host memory)


# ----------------------------------------------------------------------------- crops

@dataclasses.dataclass(frozen=True)
class CropPlan:
    """The crops of one record and the HOI instances that use them.

    Attributes:
        record: the record.
        rects: [c, 4] int64 crop rectangles (x1, y1, x2, y2) in pixels of the original image,
            the GT boxes rounded; each distinct box once.
        human, union: [n] int32 crop index of each instance's human / union box.
        obj: [n] int32 crop index of the object box, -1 for a no-object role.
        obj_class: [n] int32 object index of the object box, -1 for a no-object role.
        verbs, hois: [n] int32 verb and HOI index of each instance.
        skipped: instances of the record left out (a crop under one pixel).
    """
    record: HoiRecord
    rects: np.ndarray
    human: np.ndarray
    union: np.ndarray
    obj: np.ndarray
    obj_class: np.ndarray
    verbs: np.ndarray
    hois: np.ndarray
    skipped: int


def plan_crops(record: HoiRecord) -> CropPlan:
    """The distinct crops (GT boxes and pair unions) of `record`'s HOI instances."""
    hois = record.hois.reshape(-1, 4)
    subject, obj = hois[:, 0], hois[:, 1]
    has_obj = obj >= 0
    union_boxes = union_box(record.boxes[subject], record.boxes[np.maximum(obj, 0)])
    # Candidate boxes: the record's boxes, then one union per instance (the human box itself
    # for a no-object role); duplicates are merged below.
    union_boxes[~has_obj] = record.boxes[subject[~has_obj]]
    rects = np.round(np.concatenate([record.boxes, union_boxes])).astype(np.int64)
    union = len(record.boxes) + np.arange(len(hois))
    valid = _nonempty(rects)
    keep = valid[subject] & valid[union] & (~has_obj | valid[np.maximum(obj, 0)])
    used = np.concatenate([subject[keep], union[keep], obj[keep & has_obj]])
    distinct, inverse = np.unique(rects[used], axis=0, return_inverse=True)
    crop_of = np.full(len(rects), -1, np.int64)
    crop_of[used] = inverse.reshape(-1)
    obj_crop = np.where(has_obj, crop_of[np.maximum(obj, 0)], -1)[keep]
    labels = np.where(has_obj, record.box_labels[np.maximum(obj, 0)], -1)[keep]
    return CropPlan(record, distinct, crop_of[subject[keep]].astype(np.int32),
                    crop_of[union[keep]].astype(np.int32), obj_crop.astype(np.int32),
                    labels.astype(np.int32), hois[keep, 2].astype(np.int32),
                    hois[keep, 3].astype(np.int32), int((~keep).sum()))


def union_box(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, 4] xyxy boxes enclosing each pair of rows of `a` and `b` ([n, 4] xyxy)."""
    return np.concatenate([np.minimum(a[:, :2], b[:, :2]), np.maximum(a[:, 2:], b[:, 2:])], 1)


def _nonempty(rects: np.ndarray) -> np.ndarray:
    return (rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])


def crop_pixels(image: Image.Image, rects: np.ndarray, size: int) -> np.ndarray:
    """[c, size, size, 3] float32 CLIP inputs of the crops `rects` ([c, 4] int xyxy)."""
    return np.stack([clip_view(image.crop(tuple(int(v) for v in r)), size) for r in rects])


# ----------------------------------------------------------------------------- CLIP on the mesh

class CropEncoder:
    """CLIP image embeddings of crop batches, data-parallel over a ('data',) mesh.

    Every call runs one padded global batch of `batch_size` rows (a multiple of the mesh size,
    so one compilation), sharded on the batch axis; the padded rows are masked to zero and
    dropped.
    """

    def __init__(self, clip: CLIP, params: dict, mesh, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"crop batch size {batch_size} must be positive")
        self.batch_size = -(-batch_size // mesh.size) * mesh.size
        self.image_size = clip.spec.image_size
        self.embed_dim = clip.spec.embed_dim
        self._rows = sharding.batch_sharding(mesh)
        self._params = sharding.put_replicated(params, mesh)
        self._encode = jax.jit(functools.partial(_masked_embeddings, clip),
                               in_shardings=(sharding.replicated(mesh), self._rows, self._rows),
                               out_shardings=self._rows)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: [b, S, S, 3] CLIP inputs, b <= batch_size -> [b, E] float32 embeddings."""
        b = len(pixels)
        if not 0 < b <= self.batch_size:
            raise ValueError(f"{b} crops for a batch of {self.batch_size}")
        padded = np.zeros((self.batch_size,) + pixels.shape[1:], np.float32)
        padded[:b] = pixels
        mask = np.arange(self.batch_size) < b
        out = self._encode(self._params, jax.device_put(padded, self._rows),
                           jax.device_put(mask, self._rows))
        return np.asarray(out)[:b]


def _masked_embeddings(clip: CLIP, params, pixels, mask):
    """[B, S, S, 3], [B] bool -> [B, E] projected CLS embeddings, zero on padding rows."""
    embeds, _ = clip.apply({"params": params}, pixels, method=CLIP.encode_image)
    return jnp.where(mask[:, None], embeds, 0.0)


def embed_stream(items: Iterable, encode: Callable[[np.ndarray], np.ndarray],
                 batch_size: int) -> Iterator:
    """(item, pixels [c, ...]) pairs -> (item, embeddings [c, E]) in the same order.

    The crops of consecutive items are packed into batches of `batch_size` rows (one item may
    span two batches); only the last batch is short.
    """
    waiting = collections.deque()  # (item, number of crops) not yet handed out
    pending, ready = [], []        # pixel chunks not yet encoded; embedded rows not handed out
    for item, pixels in items:
        waiting.append((item, len(pixels)))
        pending.append(pixels)
        while sum(len(p) for p in pending) >= batch_size:
            rows = np.concatenate(pending)
            pending = [rows[batch_size:]]
            ready = [np.concatenate(ready + [encode(rows[:batch_size])])]
            ready = yield from _release(waiting, ready[0])
    rows = [p for p in pending if len(p)]
    if rows:
        ready = [np.concatenate(ready + [encode(np.concatenate(rows))])]
    # Items without crops at the tail are released with no rows.
    yield from _release(waiting, ready[0] if ready else np.zeros((0, 0), np.float32))


def _release(waiting: collections.deque, rows: np.ndarray):
    """Yields the waiting items whose crops are all in `rows`; returns the rows left over."""
    while waiting and waiting[0][1] <= len(rows):
        item, count = waiting.popleft()
        yield item, rows[:count]
        rows = rows[count:]
    return [rows] if len(rows) else []


def ordered_map(fn: Callable, items: Iterable, threads: int) -> Iterator:
    """`map(fn, items)` on `threads` threads, in order, with a bounded number in flight."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = collections.deque()
        for item in items:
            futures.append(pool.submit(fn, item))
            if len(futures) >= threads * PREFETCH_PER_THREAD:
                yield futures.popleft().result()
        while futures:
            yield futures.popleft().result()


# ----------------------------------------------------------------------------- sums

@dataclasses.dataclass
class VerbSums:
    """Running sums of the unnormalised crop embeddings (float64) for both recipes.

    Attributes:
        hoi: [K, E] sum of f_u per HOI class; hoi_count [K] instances.
        obj: [O, E] sum of f_o per object class, plus per image the mean f_h into person (0);
            obj_count [O] terms added.
        verb: [V, E] sum of (2 f_u - f_o - f_h) / 2 per verb; verb_count [V] instances.
        images, instances, skipped: images and instances used; instances skipped.
    """
    hoi: np.ndarray
    hoi_count: np.ndarray
    obj: np.ndarray
    obj_count: np.ndarray
    verb: np.ndarray
    verb_count: np.ndarray
    images: int = 0
    instances: int = 0
    skipped: int = 0

    @classmethod
    def zeros(cls, tables: ClassTables, embed_dim: int) -> "VerbSums":
        k, o, v = tables.num_hois, tables.num_objects, tables.num_verbs
        return cls(np.zeros((k, embed_dim)), np.zeros(k, np.int64), np.zeros((o, embed_dim)),
                   np.zeros(o, np.int64), np.zeros((v, embed_dim)), np.zeros(v, np.int64))

    def add(self, plan: CropPlan, embeddings: np.ndarray) -> None:
        """Adds one record's instances; embeddings: [c, E] of `plan.rects`."""
        self.skipped += plan.skipped
        if not len(plan.hois):
            return
        emb = embeddings.astype(np.float64)
        has_obj = plan.obj >= 0
        f_h, f_u = emb[plan.human], emb[plan.union]
        f_o = np.where(has_obj[:, None], emb[np.maximum(plan.obj, 0)], 0.0)
        np.add.at(self.hoi, plan.hois, f_u)
        np.add.at(self.hoi_count, plan.hois, 1)
        np.add.at(self.obj, plan.obj_class[has_obj], f_o[has_obj])
        np.add.at(self.obj_count, plan.obj_class[has_obj], 1)
        self.obj[0] += f_h.mean(axis=0)  # §5.1: obj_feature[0] += mean(human feats), per image
        self.obj_count[0] += 1
        np.add.at(self.verb, plan.verbs, (2 * f_u - f_o - f_h) / 2)
        np.add.at(self.verb_count, plan.verbs, 1)
        self.images += 1
        self.instances += len(plan.hois)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm; all-zero rows stay zero."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), 0.0)


def original_features(sums: VerbSums, tables: ClassTables) -> np.ndarray:
    """[V, E] E_v of §5.1: the mean over the verb's HOI classes (with instances) of Ĥ - Ô."""
    hoi_to_obj, hoi_to_verb = tables.hoi_to_obj, tables.hoi_to_verb
    objects = normalize_rows(sums.obj)
    # No-object classes (V-COCO object `no_object_index`) have no object term.
    has_obj = hoi_to_obj != tables.no_object_index
    terms = normalize_rows(sums.hoi) - np.where(has_obj[:, None], objects[hoi_to_obj], 0.0)
    present = sums.hoi_count > 0
    total = np.zeros((tables.num_verbs, sums.hoi.shape[1]))
    np.add.at(total, hoi_to_verb[present], terms[present])
    classes = np.bincount(hoi_to_verb[present], minlength=tables.num_verbs)
    return normalize_rows(total / np.maximum(classes, 1)[:, None])


def seed_features(sums: VerbSums) -> np.ndarray:
    """[V, E] E_v of §5.2: the normalised per-verb sum of (2 f_u - f_o - f_h) / 2."""
    return normalize_rows(sums.verb)


def finalize(sums: VerbSums, tables: ClassTables, method: str) -> np.ndarray:
    """[V, E] float32 E_v of `method` ('original' | 'seed'); zero rows for verbs without data."""
    check_method(method)
    features = original_features(sums, tables) if method == "original" else seed_features(sums)
    missing = np.flatnonzero(sums.verb_count == 0)
    if len(missing):
        logging.warning("E_v: %d of %d verbs have no training instance and get a zero row: %s",
                        len(missing), tables.num_verbs,
                        ", ".join(tables.verbs[v] for v in missing))
    return features.astype(np.float32)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"E_v method {method!r}: expected one of {METHODS}")


# ----------------------------------------------------------------------------- driver

def accumulate(records: list[HoiRecord], images: Callable[[HoiRecord], Image.Image],
               tables: ClassTables, encoder: CropEncoder, threads: int = 4,
               progress: bool = True) -> VerbSums:
    """Crops, embeds and sums the HOI instances of `records` (images: record -> PIL RGB)."""
    sums = VerbSums.zeros(tables, encoder.embed_dim)

    def prepare(record):
        plan = plan_crops(record)
        if not len(plan.rects):
            return plan, np.zeros((0, encoder.image_size, encoder.image_size, 3), np.float32)
        return plan, crop_pixels(images(record), plan.rects, encoder.image_size)

    with_hois = [r for r in records if len(r.hois)]
    prepared = ordered_map(prepare, with_hois, threads)
    bar = tqdm.tqdm(total=len(with_hois), desc="E_v crops", unit="image", disable=not progress)
    with bar:
        for plan, embeddings in embed_stream(prepared, encoder, encoder.batch_size):
            sums.add(plan, embeddings)
            bar.update(1)
    return sums


def verb_features(records: list[HoiRecord], images: Callable[[HoiRecord], Image.Image],
                  tables: ClassTables, encoder: CropEncoder, method: str, threads: int = 4,
                  progress: bool = True) -> tuple[np.ndarray, VerbSums]:
    """E_v [V, E] float32 (rows L2-normalised, zero for verbs without instances) and the sums.

    Args:
      records: training records (boxes xyxy in pixels of the original image).
      images: record -> its raw PIL RGB image.
      tables: the class tables of the records.
      encoder: CLIP on the mesh (`CropEncoder`).
      method: 'original' (§5.1) or 'seed' (§5.2).
      threads: host threads that decode and crop images.
    """
    check_method(method)
    sums = accumulate(records, images, tables, encoder, threads, progress)
    if sums.skipped:
        logging.warning("E_v: skipped %d HOI instances whose crop is under one pixel",
                        sums.skipped)
    return finalize(sums, tables, method), sums


def verb_embeddings(model_config, tables, hoi_text) -> jax.Array:
    """E_v [V, E]: the .npy of config.model.verb_features, or a text stand-in.

    The stand-in (verb_features == '') is the L2-normalised mean of the normalised HOI text
    embeddings of each verb's HOI classes; it holds until the visual E_v of issue 7 (§5.1). A
    file is used as-is (the reference's V-COCO E_v is not normalised either).
    """
    if model_config.verb_features:
        verbs = np.load(model_config.verb_features).astype(np.float32)
        expected = (tables.num_verbs, hoi_text.shape[1])
        if verbs.shape != expected:
            raise ValueError(f"config.model.verb_features={model_config.verb_features!r}: shape "
                             f"{verbs.shape}, expected [V, E] = {expected}")
        return jnp.asarray(verbs)
    hoi_to_verb = np.asarray(tables.hoi_to_verb)
    # In numpy: V eager jax gathers would each dispatch (and first compile) their own program.
    hoi_text = np.asarray(hoi_text)
    rows = []
    for v in range(tables.num_verbs):
        members = np.flatnonzero(hoi_to_verb == v)
        if members.size == 0:
            raise ValueError(f"class tables '{tables.name}': verb {v} ({tables.verbs[v]!r}) has "
                             "no HOI class, so it has no text E_v; set config.model.verb_features")
        rows.append(hoi_text[members].mean(axis=0))
    return l2_normalize(jnp.asarray(np.stack(rows)))
