"""Pictures of predicted interactions: human box, object box, a line between them, the labels.

Used by `evaluate --pictures` (a grid of test images) and `predict` (one PNG per image).
"""
import os

import numpy as np
from PIL import Image, ImageDraw

HUMAN_COLOR = (40, 120, 255)
OBJECT_COLOR = (255, 60, 60)
LINK_COLOR = (40, 200, 80)
LABEL_BACKGROUND = (255, 255, 255)
LINE_WIDTH = 2  # pixels of the upscaled picture; rectangles grow inwards from their edges


def draw_triplets(image: Image.Image, triplets: list[dict], scale: int = 3) -> Image.Image:
    """Draws triplets on a copy of `image`, upscaled by `scale` so the labels stay readable.

    Triplets of one pair of boxes (one query, several verbs) share one drawing, with a label
    line each. Boxes are clipped to the picture, so a box that leaves the image is drawn along
    its border; the best pair is drawn last (on top).

    Args:
      image: the original RGB image.
      triplets: dicts with `sub_box`, `obj_box` ([4] xyxy, pixels of `image`), `label` (str) and
        `score` (float), best first.
      scale: integer upscaling (nearest neighbour) of the picture.

    Returns:
      the RGB picture, `scale` times the size of `image`.
    """
    canvas = image.convert("RGB").resize((image.width * scale, image.height * scale),
                                         Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    limits = np.array([canvas.width - 1, canvas.height - 1] * 2, np.float64)
    pairs = group_pairs(triplets)
    boxes = [(np.clip(np.asarray(sub, np.float64) * scale, 0, limits),
              np.clip(np.asarray(obj, np.float64) * scale, 0, limits)) for sub, obj, _ in pairs]
    for sub, obj in reversed(boxes):
        draw.rectangle(sub.tolist(), outline=HUMAN_COLOR, width=LINE_WIDTH)
        draw.rectangle(obj.tolist(), outline=OBJECT_COLOR, width=LINE_WIDTH)
        draw.line([tuple((sub[:2] + sub[2:]) / 2), tuple((obj[:2] + obj[2:]) / 2)],
                  fill=LINK_COLOR, width=LINE_WIDTH)
    for (sub, _), (_, _, labels) in reversed(list(zip(boxes, pairs))):
        # Inside the human box, clear of its outline.
        position = (sub[0] + LINE_WIDTH + 1, sub[1] + LINE_WIDTH + 1)
        text = "\n".join(labels)
        draw.rectangle(draw.multiline_textbbox(position, text), fill=LABEL_BACKGROUND)
        draw.multiline_text(position, text, fill=(0, 0, 0))
    return canvas


def group_pairs(triplets: list[dict]) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
    """(sub_box, obj_box, labels) per distinct pair of boxes, in order of their best triplet;
    labels are 'rank. label score' (rank 1 = the first triplet)."""
    pairs = {}
    for rank, t in enumerate(triplets, 1):
        sub, obj = np.asarray(t["sub_box"], np.float64), np.asarray(t["obj_box"], np.float64)
        key = tuple(sub.tolist()) + tuple(obj.tolist())
        pairs.setdefault(key, (sub, obj, []))[2].append(
            f"{rank}. {t['label']} {t['score']:.2f}")
    return list(pairs.values())


def display_scale(size: tuple[int, int], short_side: int = 480) -> int:
    """The integer upscaling that brings the short side of a (w, h) image near `short_side`
    (1 for images that are already that large)."""
    return max(1, int(round(short_side / max(1, min(size)))))


def save_picture(picture: Image.Image, path: str) -> str:
    """Writes `picture` as a PNG at `path` (folders created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    picture.save(path, format="PNG")
    return path


def save_grid(pictures: list[Image.Image], path: str, columns: int = 3) -> str:
    """Tiles pictures (padded to the largest) into one PNG at `path`."""
    width = max(p.width for p in pictures)
    height = max(p.height for p in pictures)
    rows = -(-len(pictures) // columns)
    grid = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for i, picture in enumerate(pictures):
        grid.paste(picture, ((i % columns) * width, (i // columns) * height))
    return save_picture(grid, path)
