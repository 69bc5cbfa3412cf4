"""Scenes of the synthetic data set: the class tables, geometry, interaction rules and sampling.

Coordinates are float pixels, boxes `(x0, y0, x1, y1)`. A person is a stick figure given by its
centre line `x`, the top of its head `top`, its standing `height`, a `pose` and the side it faces.
`derive_interactions` turns the drawn geometry into (person, thing, verb) triplets; it is the only
place that decides what an image means. Drawing is in `synthetic_draw`.
"""
import dataclasses
import math

import numpy as np


VERBS = ("no_interaction", "hold", "carry", "kick", "ride", "sit_on", "look_at")
VERB_GERUNDS = {"hold": "holding", "carry": "carrying", "kick": "kicking", "ride": "riding",
                "sit_on": "sitting on", "look_at": "looking at"}
OBJECTS = ("person", "ball", "box", "board", "umbrella", "kite", "chair")
COCO_IDS = (1, 37, 100, 41, 28, 38, 62)  # distinct ids; sports ball, skateboard, ... where apt
_V = {name: i for i, name in enumerate(VERBS)}
_O = {name: i for i, name in enumerate(OBJECTS)}

RARE_WEIGHT = 0.015  # ~4 expected training instances at --num-train 2000
# Sampling weight of each person's intended interaction (verb, object). The look_at classes also
# come from hold/kick with the face turned to the object (LOOK_PROB).
INTENTS = {
    ("hold", "ball"): 1.0, ("carry", "ball"): 0.4, ("kick", "ball"): 1.0,
    ("look_at", "ball"): 0.3, ("no_interaction", "ball"): 0.4,
    ("hold", "box"): 0.6, ("carry", "box"): 0.8, ("kick", "box"): RARE_WEIGHT,
    ("sit_on", "box"): 0.5, ("look_at", "box"): 0.3, ("no_interaction", "box"): 0.4,
    ("hold", "board"): RARE_WEIGHT, ("carry", "board"): RARE_WEIGHT, ("ride", "board"): 1.0,
    ("look_at", "board"): 0.3, ("no_interaction", "board"): 0.3,
    ("hold", "umbrella"): 0.8, ("look_at", "umbrella"): 0.25,
    ("no_interaction", "umbrella"): 0.25,
    ("hold", "kite"): 0.8, ("look_at", "kite"): 0.25, ("no_interaction", "kite"): RARE_WEIGHT,
    ("carry", "chair"): RARE_WEIGHT, ("sit_on", "chair"): 0.8, ("look_at", "chair"): 0.25,
    ("no_interaction", "chair"): RARE_WEIGHT,
}
HOIS = tuple(sorted(((_V[v], _O[o]) for v, o in INTENTS), key=lambda vo: (vo[1], vo[0])))
HOI_INDEX = {vo: k for k, vo in enumerate(HOIS)}
LOOK_PROB = 0.45

TOL = 2.0          # a joint touches a box when within TOL px of it
LOOK_RANGE = 70.0  # px from the head centre to the centre of a looked-at object
FAR_GAP = 20.0     # an idle person's nearest object must be at least this far (box gap)
MARGIN = 4.0       # gap between unrelated groups
CLEAR_MARGIN = 12.0  # the nearest thing must be nearer than the next one by this much (px)
MAX_TRIES = 40

NUM_SHADES = 3     # body colours of people (synthetic_draw.BODY)


@dataclasses.dataclass(frozen=True)
class Person:
    """A stick figure: centre line `x`, head top `top`, standing `height` (px)."""
    x: float
    top: float
    height: float
    pose: str = "stand"  # stand | reach | reach_high | arms_up | kick | sit | balance
    side: int = 1        # side of the reaching arm / kicking leg (+1 right, -1 left)
    facing: int = 0      # -1 left, 0 front, +1 right
    shade: int = 0


@dataclasses.dataclass(frozen=True)
class Thing:
    """An object drawn inside `box` (x0, y0, x1, y1)."""
    kind: int            # object index (never 0: people are `Person`s)
    box: tuple
    variant: int = 0     # chair: side of the backrest


@dataclasses.dataclass(frozen=True)
class Layout:
    """A scene before drawing; `triplets` are its derived interactions."""
    width: int
    height: int
    persons: tuple
    things: tuple
    triplets: tuple      # (person index, thing index, verb index), sorted


def shift(obj, dx: float, dy: float):
    if isinstance(obj, Person):
        return dataclasses.replace(obj, x=obj.x + dx, top=obj.top + dy)
    x0, y0, x1, y1 = obj.box
    return dataclasses.replace(obj, box=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))


# ----------------------------------------------------------------------------- geometry
def skeleton(p: Person) -> dict:
    """Joint positions: head (centre), r (head radius), lw (limb width), tw (torso width),
    neck, hip, shoulder/hip_pt/hand/knee/foot as {-1: left, +1: right}."""
    h, x, t = p.height, p.x, p.top
    r, tw, la = 0.12 * h, 0.2 * h, 0.34 * h
    sh_y, hip_y = t + 2 * r + 0.04 * h, t + 0.58 * h
    j = {"head": (x, t + r), "r": r, "lw": max(3, round(0.08 * h)), "tw": tw,
         "neck": (x, t + 2 * r), "hip": (x, hip_y),
         "shoulder": {s: (x + s * 0.45 * tw, sh_y) for s in (-1, 1)},
         "hip_pt": {s: (x + s * 0.05 * h, hip_y) for s in (-1, 1)},
         "hand": {s: (x + s * (tw / 2 + 0.08 * h), sh_y + 0.93 * la) for s in (-1, 1)},
         "foot": {s: (x + s * 0.12 * h, t + h) for s in (-1, 1)}, "knee": None}
    s = p.side
    if p.pose == "reach":
        j["hand"][s] = (x + s * (tw / 2 + 0.95 * la), sh_y + 0.25 * la)
    elif p.pose == "reach_high":
        j["hand"][s] = (x + s * (tw / 2 + 0.75 * la), sh_y - 0.55 * la)
    elif p.pose == "arms_up":
        j["hand"] = {q: (x + q * 0.17 * h, t - 0.12 * h) for q in (-1, 1)}
    elif p.pose == "balance":
        j["hand"] = {q: (x + q * (tw / 2 + 0.7 * la), sh_y - 0.45 * la) for q in (-1, 1)}
    elif p.pose == "kick":
        j["foot"][s] = (x + s * 0.4 * h, t + 0.86 * h)
    elif p.pose == "sit":
        j["knee"] = {q: (x + q * 0.13 * h, hip_y + 0.04 * h) for q in (-1, 1)}
        j["foot"] = {q: (x + q * 0.15 * h, hip_y + 0.32 * h) for q in (-1, 1)}
    return j


def person_box(p: Person) -> tuple:
    """Analytic extent of the drawn figure (head with nose, torso, limbs with hands/feet)."""
    j = skeleton(p)
    pad = 0.65 * j["lw"] + 0.5
    pts = [*j["hand"].values(), *j["foot"].values(), *j["shoulder"].values()]
    pts += list(j["knee"].values()) if j["knee"] else []
    (hx, hy), r = j["head"], j["r"]
    x0 = min(min(px for px, _ in pts) - pad, hx - 1.4 * r, p.x - j["tw"] / 2)
    x1 = max(max(px for px, _ in pts) + pad, hx + 1.4 * r, p.x + j["tw"] / 2)
    y0 = min(min(py for _, py in pts) - pad, hy - r)
    y1 = max(py for _, py in pts) + pad
    return (x0, y0, x1, y1)


def union(a: tuple, b: tuple) -> tuple:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def box_gap(a: tuple, b: tuple) -> float:
    """Euclidean distance between two boxes (0 when they overlap)."""
    gx = max(0.0, b[0] - a[2], a[0] - b[2])
    gy = max(0.0, b[1] - a[3], a[1] - b[3])
    return math.hypot(gx, gy)


def touches(pt: tuple, box: tuple) -> bool:
    return box[0] - TOL <= pt[0] <= box[2] + TOL and box[1] - TOL <= pt[1] <= box[3] + TOL


# ----------------------------------------------------------------------------- the rules
def contact_verbs(p: Person, box: tuple) -> set:
    """Verbs of `p` with the thing in `box` that come from body contact."""
    j = skeleton(p)
    if p.pose == "sit" and touches(j["hip"], box):
        return {"sit_on"}  # hands and feet of a seated person may rest on the seat
    hands = [touches(j["hand"][s], box) for s in (-1, 1)]
    feet = [touches(j["foot"][s], box) for s in (-1, 1)]
    verbs = set()
    if p.pose == "arms_up" and all(hands) and box[3] <= p.top + TOL:
        verbs.add("carry")
    elif any(hands):
        verbs.add("hold")
    if all(feet) and box[1] >= max(y for _, y in j["foot"].values()) - TOL:
        verbs.add("ride")
    elif p.pose == "kick" and touches(j["foot"][p.side], box):
        verbs.add("kick")
    return verbs


def faced_things(p: Person, things) -> list:
    """Sorted (distance from the head centre, index) of the things on the side `p` faces."""
    if p.facing == 0:
        return []
    j = skeleton(p)
    (hx, hy), found = j["head"], []
    for i, t in enumerate(things):
        cx, cy = (t.box[0] + t.box[2]) / 2, (t.box[1] + t.box[3]) / 2
        if (cx - hx) * p.facing > j["r"]:
            found.append((math.hypot(cx - hx, cy - hy), i))
    return sorted(found)


def looked_at(p: Person, things) -> int | None:
    """Index of the nearest thing on the side `p` faces if within LOOK_RANGE, else None."""
    faced = faced_things(p, things)
    return faced[0][1] if faced and faced[0][0] <= LOOK_RANGE else None


def derive_interactions(persons, things) -> tuple:
    """Sorted (person index, thing index, verb index) triplets that the geometry shows.

    A person with no contact and no look is idle: no_interaction with its nearest thing, if that
    thing is at least FAR_GAP away (nothing otherwise).
    """
    out = set()
    for i, p in enumerate(persons):
        mine = {(i, k, v) for k, t in enumerate(things) for v in contact_verbs(p, t.box)}
        look = looked_at(p, things)
        if look is not None:
            mine.add((i, look, "look_at"))
        if not mine and things:
            pbox = person_box(p)
            gap, k = min((box_gap(pbox, t.box), k) for k, t in enumerate(things))
            if gap >= FAR_GAP:
                mine.add((i, k, "no_interaction"))
        out |= mine
    return tuple(sorted((i, k, _V[v]) for i, k, v in out))


# ----------------------------------------------------------------------------- sampling


def correspondence() -> np.ndarray:
    """[V, O] bool: True where (verb, object) is an HOI class."""
    corr = np.zeros((len(VERBS), len(OBJECTS)), bool)
    for v, o in HOIS:
        corr[v, o] = True
    return corr
