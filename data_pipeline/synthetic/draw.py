"""Drawing of synthetic scenes (`synthetic_scene.Layout`) with PIL.ImageDraw."""
import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from data_pipeline.synthetic.scene import NUM_SHADES, OBJECTS, Layout, Person, Thing, skeleton

BODY = ((45, 45, 55), (30, 40, 90), (70, 45, 30))
SKIN = ((240, 200, 160), (205, 155, 115), (150, 100, 70))
HAIR = (20, 20, 20)
assert len(BODY) == NUM_SHADES
COLOURS = {"ball": ((220, 35, 35), (120, 10, 10)), "box": ((235, 150, 30), (140, 80, 10)),
           "board": ((190, 40, 190), (90, 20, 90)), "umbrella": ((40, 90, 230), (15, 35, 110)),
           "kite": ((40, 170, 60), (15, 80, 25)), "chair": ((20, 170, 170), (10, 80, 80))}


@dataclasses.dataclass(frozen=True)
class Picture:
    """A rendered layout: pixels [H, W, 3] uint8, boxes (persons then things) as integer pixel
    edges (x0, y0, x1, y1) with x1, y1 exclusive, their object labels, and the triplets as
    (subject box, object box, verb index)."""
    pixels: np.ndarray
    boxes: list
    labels: list
    triplets: list


def render(layout: Layout, rng) -> Picture:
    """Draws `layout`; every box is measured on the entity's own mask, so it is tight."""
    base = rng.integers(215, 251, size=3)
    noise = 4.0 * rng.standard_normal((layout.height, layout.width, 3), dtype=np.float32)
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes = [None] * (len(layout.persons) + len(layout.things))
    # Things first, so that hands and feet show on top of what they touch.
    for k, t in enumerate(layout.things):
        boxes[len(layout.persons) + k] = _draw_both(
            layout, draw, lambda d, mono: _draw_thing(d, t, mono))
    for i, p in enumerate(layout.persons):
        skin = int(rng.integers(len(SKIN)))
        boxes[i] = _draw_both(layout, draw, lambda d, mono: _draw_person(d, p, skin, mono))
    labels = [0] * len(layout.persons) + [t.kind for t in layout.things]
    n = len(layout.persons)
    return Picture(np.asarray(image), boxes, labels,
                   [(i, n + k, v) for i, k, v in layout.triplets])


def _draw_both(layout: Layout, draw, fn) -> tuple:
    """Draws with `fn` on the picture and on a fresh mask; returns the mask's bounding box."""
    mask = Image.new("L", (layout.width, layout.height), 0)
    fn(ImageDraw.Draw(mask), True)
    fn(draw, False)
    return mask.getbbox()


def _draw_person(d, p: Person, skin: int, mono: bool) -> None:
    j = skeleton(p)
    body, face, hair = (255, 255, 255) if mono else (BODY[p.shade], SKIN[skin], HAIR)
    lw = j["lw"]
    for s in (-1, 1):
        leg = [j["hip_pt"][s]] + ([j["knee"][s]] if j["knee"] else []) + [j["foot"][s]]
        d.line(leg, fill=body, width=lw, joint="curve")
        _dot(d, j["foot"][s], 0.65 * lw, body)
    x, tw = p.x, j["tw"]
    d.rectangle([x - tw / 2, j["neck"][1], x + tw / 2, j["hip"][1] + lw / 2], fill=body)
    for s in (-1, 1):
        d.line([j["shoulder"][s], j["hand"][s]], fill=body, width=lw)
        _dot(d, j["hand"][s], 0.65 * lw, face)
    (hx, hy), r, f = j["head"], j["r"], p.facing
    head = [hx - r, hy - r, hx + r, hy + r]
    if f:  # profile: a nose on the faced side, hair on the back half
        d.polygon([(hx + f * 0.8 * r, hy - 0.35 * r), (hx + f * 1.4 * r, hy + 0.15 * r),
                   (hx + f * 0.8 * r, hy + 0.45 * r)], fill=face)
    d.ellipse(head, fill=face)
    d.chord(head, *{0: (180, 360), 1: (90, 270), -1: (270, 90)}[f], fill=hair)
    eyes = [hx - 0.4 * r, hx + 0.4 * r] if f == 0 else [hx + f * 0.5 * r]
    for ex in eyes:
        _dot(d, (ex, hy + 0.15 * r), max(0.8, 0.16 * r), hair)


def _draw_thing(d, t: Thing, mono: bool) -> None:
    name = OBJECTS[t.kind]
    fill, dark = (255, 255) if mono else COLOURS[name]
    x0, y0, x1, y1 = t.box
    w, h, cx = x1 - x0, y1 - y0, (x0 + x1) / 2
    # PIL shapes include their last pixel; -1 keeps the drawing inside [x0, x1) x [y0, y1).
    if name == "ball":
        d.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill, outline=dark)
    elif name == "box":
        d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill, outline=dark, width=2)
        d.line([(cx, y0), (cx, y1 - 1)], fill=dark, width=2)
    elif name == "board":
        d.rectangle([x0, y0, x1 - 1, y0 + 0.5 * h], fill=fill)
        wr = 0.25 * h
        for wx in (x0 + 0.22 * w, x1 - 0.22 * w):
            d.ellipse([wx - wr, y1 - 2 * wr, wx + wr, y1 - 1], fill=dark)
    elif name == "umbrella":
        d.pieslice([x0, y0, x1 - 1, y0 + w], 180, 360, fill=fill)
        d.line([(cx, y0 + w / 2), (cx, y1 - 1)], fill=dark, width=2)
    elif name == "kite":
        mid = y0 + 0.38 * h
        d.polygon([(cx, y0), (x1 - 1, mid), (cx, y1 - 1), (x0, mid)], fill=fill, outline=dark)
        d.line([(cx, y0), (cx, y1 - 1)], fill=dark)
        d.line([(x0, mid), (x1 - 1, mid)], fill=dark)
    else:  # chair: seat, backrest on one side, two legs
        seat = y0 + 0.45 * h
        back = x0 if t.variant == 0 else x1 - 4
        d.rectangle([x0, seat, x1 - 1, seat + 3], fill=fill)
        d.rectangle([back, y0, back + 3, seat], fill=fill)
        for lx in (x0 + 1.5, x1 - 2.5):
            d.line([(lx, seat + 3), (lx, y1 - 1)], fill=dark if not mono else fill, width=3)


def _dot(d, pt: tuple, radius: float, fill) -> None:
    d.ellipse([pt[0] - radius, pt[1] - radius, pt[0] + radius, pt[1] + radius], fill=fill)
