"""Synthetic visual-instruction data: scenes of simple shapes, with captions and exact-answer questions.

The demo model that ships with the package is trained on these scenes; anyone can draw their own and ask
about them in the same words. Everything is deterministic from the seed (each image from its own
`numpy.random.default_rng((seed, split, index))`), so a data set can be regenerated anywhere bit for bit.

A scene: 1-4 shapes on a 3 x 3 grid (at most one per cell), each shape a colour and a kind, on a plain or
gradient background, sometimes with light noise. Shapes always contrast with the background.

Vocabulary
  shapes     circle, square, triangle, star, diamond, cross, heart
             (plural: circles, squares, triangles, stars, diamonds, crosses, hearts)
  colors     red, green, blue, yellow, purple, orange, pink, white, black
  positions  top left, top, top right, left, center, right, bottom left, bottom, bottom right
             (in sentences: "in the top left", "at the top", "in the top right", "on the left",
             "in the center", "on the right", "in the bottom left", "at the bottom", "in the bottom right")
  backgrounds  light gray, dark gray, beige, light blue, light green, navy; or a gradient of two of them

Questions (several wordings each; `QUESTION_TYPES`) and their exact answers
  count        "How many shapes are there?"                 -> "3"
  count_shape  "How many circles are there?"                -> "2" (or "0")
  count_color  "How many red shapes are there?"             -> "1" (or "0")
  color        "What color is the shape in the top left?"   -> "red"
               "What color is the star?" (one star)         -> "blue"
  shape        "What shape is in the center?"               -> "circle"
               "What shape is the green one?" (one green)   -> "square"
  position     "Where is the red circle?"                   -> "top left"
  exists       "Is there a triangle?"                       -> "Yes, there is a triangle." /
                                                               "No, there is no triangle."
               "Is there a blue star?"                      -> "No, there is no blue star."
  caption      "Describe the image."  -> "A red circle in the top left and a blue star in the center, on a
               light gray background."  (shapes in reading order: rows top to bottom, left to right)
  Refusals: asking about something absent gets "There is no triangle." / "There is no red circle." /
  "There is no green shape." / "There is no shape in the top left."
  A few text-only samples ask which shapes / colors the model knows ("circle, square, ...").

Files written by `make_demo_data(out_dir, ...)`:
  images/train_NNNNNN.png, images/heldout_NNNNNN.png
  train.json      LLaVA instruction format: [{id, image, conversations: [{from: human, value:
                  "<image>\\nQ"}, {from: gpt, value: A}, ...]}]; 1 to `max_turns` turns; a few samples
                  are text-only
  pretrain.json   one caption per training image ("Describe the image briefly." -> caption), for the
                  projector stage
  eval.json       held-out images' conversations, for an eval loss
  questions.json  held-out exact-answer set: [{image, question, answer, type}], the types balanced
  scenes.json     {image: scene} for every image (what was drawn: shapes, cells, colors, background)
Image paths in the JSON files are relative to `out_dir`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "heart")
PLURALS = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES}
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (250, 220, 30),
    "purple": (130, 50, 180),
    "orange": (250, 140, 20),
    "pink": (250, 130, 190),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
BACKGROUNDS = {
    "light gray": (200, 200, 200),
    "dark gray": (85, 85, 85),
    "beige": (225, 210, 175),
    "light blue": (175, 205, 235),
    "light green": (190, 225, 185),
    "navy": (25, 35, 80),
}
# (row, column) of each position on the 3 x 3 grid, in reading order
POSITIONS = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}
IN_POSITION = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
QUESTION_TYPES = ("count", "count_shape", "count_color", "color", "shape", "position", "exists")
MIN_CONTRAST = 120.0  # least RGB distance between a shape's colour and every background colour under it
MAX_SHAPES = 4
SUPERSAMPLE = 4  # shapes are drawn this many times larger, then downsampled: smooth edges


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # one of COLORS
    position: str  # one of POSITIONS
    # geometry in units of the image side: centre offset from the cell centre, and radius
    dx: float = 0.0
    dy: float = 0.0
    radius: float = 0.12


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str = "light gray"  # a BACKGROUNDS name
    gradient_to: str | None = None  # a second BACKGROUNDS name: a linear gradient between the two
    gradient_angle: float = 0.0  # degrees
    noise: float = 0.0  # standard deviation of the added pixel noise, in 0..255 units
    noise_seed: int = 0

    def __post_init__(self) -> None:
        cells = [s.position for s in self.shapes]
        for s in self.shapes:
            if s.kind not in SHAPES:
                raise ValueError(f"shape kind {s.kind!r}: expected one of {', '.join(SHAPES)}")
            if s.color not in COLORS:
                raise ValueError(f"shape color {s.color!r}: expected one of {', '.join(COLORS)}")
            if s.position not in POSITIONS:
                raise ValueError(f"shape position {s.position!r}: expected one of {', '.join(POSITIONS)}")
        if len(set(cells)) != len(cells):
            raise ValueError(f"two shapes share a position: {cells}")
        for name in (self.background, self.gradient_to):
            if name is not None and name not in BACKGROUNDS:
                raise ValueError(f"background {name!r}: expected one of {', '.join(BACKGROUNDS)}")

    @classmethod
    def of(cls, *shapes: tuple[str, str, str], background: str = "light gray") -> Scene:
        """A scene from (color, kind, position) triples with centred, mid-sized shapes, e.g.
        `Scene.of(("red", "circle", "top left"), ("blue", "star", "center"))`."""
        return cls(tuple(Shape(kind, color, pos) for color, kind, pos in shapes), background)

    @property
    def background_name(self) -> str:
        return "gradient" if self.gradient_to else self.background

    def sorted_shapes(self) -> list[Shape]:
        """Shapes in reading order (rows top to bottom, then left to right)."""
        return sorted(self.shapes, key=lambda s: POSITIONS[s.position])


# -- random scenes -------------------------------------------------------------------------------------


def _contrasts(color: str, backgrounds: Iterable[str]) -> bool:
    c = np.array(COLORS[color], np.float64)
    return all(np.linalg.norm(c - np.array(BACKGROUNDS[b], np.float64)) >= MIN_CONTRAST for b in backgrounds)


def random_scene(rng: np.random.Generator, n_shapes: int | None = None) -> Scene:
    """A random scene: 1..MAX_SHAPES shapes in distinct cells, colours that contrast with the background."""
    bg_names = list(BACKGROUNDS)
    background = bg_names[rng.integers(len(bg_names))]
    gradient_to = None
    if rng.random() < 0.35:
        others = [b for b in bg_names if b != background]
        gradient_to = others[rng.integers(len(others))]
    under = [background] + ([gradient_to] if gradient_to else [])
    colors = [c for c in COLORS if _contrasts(c, under)]
    n = int(n_shapes or rng.integers(1, MAX_SHAPES + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    cell = 1 / 3
    shapes = []
    for i in cells:
        radius = cell * rng.uniform(0.26, 0.42)
        room = cell / 2 - radius - 0.02  # keep every shape inside its own cell
        shapes.append(
            Shape(
                kind=SHAPES[rng.integers(len(SHAPES))],
                color=colors[rng.integers(len(colors))],
                position=list(POSITIONS)[i],
                dx=float(rng.uniform(-room, room)),
                dy=float(rng.uniform(-room, room)),
                radius=float(radius),
            )
        )
    noisy = rng.random() < 0.3
    return Scene(
        tuple(shapes),
        background,
        gradient_to,
        gradient_angle=float(rng.uniform(0, 360)),
        noise=float(rng.uniform(2, 6)) if noisy else 0.0,
        noise_seed=int(rng.integers(2**31)),
    )


# -- rendering -----------------------------------------------------------------------------------------


def _outline(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of a shape centred at (cx, cy) with radius r (None: the circle, drawn as such)."""
    if kind == "circle":
        return None
    if kind == "square":
        h = 0.8 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        angles = np.radians([-90, 30, 150])
        return [(cx + r * np.cos(a), cy + 0.15 * r + r * np.sin(a)) for a in angles]
    if kind == "star":
        angles = np.radians(-90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles, strict=True)]
    if kind == "diamond":
        return [(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)]
    if kind == "cross":
        a, b = 0.3 * r, 0.95 * r
        pts = [(a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a)]
        pts += [(-a, -a), (-a, -b)]
        return [(cx + x, cy + y) for x, y in pts]
    if kind == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        s = r / 16.5
        return [(cx + s * u, cy + s * (v + 1.5)) for u, v in zip(x, y, strict=True)]
    raise ValueError(f"unknown shape {kind!r}")


def _background(scene: Scene, size: int) -> np.ndarray:
    """The background as float RGB [size, size, 3]."""
    a = np.array(BACKGROUNDS[scene.background], np.float64)
    if scene.gradient_to is None:
        return np.broadcast_to(a, (size, size, 3)).copy()
    b = np.array(BACKGROUNDS[scene.gradient_to], np.float64)
    theta = np.radians(scene.gradient_angle)
    u = (np.arange(size) + 0.5) / size - 0.5
    proj = np.cos(theta) * u[None, :] + np.sin(theta) * u[:, None]  # [y, x]
    t = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-9)
    return a + (b - a) * t[..., None]


def render_scene(scene: Scene, image_size: int = 112) -> Image.Image:
    """Draw a scene as an RGB image of image_size x image_size pixels (a pure function of the scene).
    Each shape's coverage is drawn SUPERSAMPLE times larger and box-filtered down: smooth edges."""
    n, big = image_size, image_size * SUPERSAMPLE
    pixels = _background(scene, n)
    for s in scene.shapes:
        row, col = POSITIONS[s.position]
        cx, cy, r = ((col + 0.5) / 3 + s.dx) * big, ((row + 0.5) / 3 + s.dy) * big, s.radius * big
        mask = Image.new("L", (big, big), 0)
        pts = _outline(s.kind, cx, cy, r)
        if pts is None:
            ImageDraw.Draw(mask).ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            ImageDraw.Draw(mask).polygon(pts, fill=255)
        alpha = np.asarray(mask.resize((n, n), Image.Resampling.BOX), np.float64)[..., None] / 255
        pixels = pixels * (1 - alpha) + np.array(COLORS[s.color], np.float64) * alpha
    if scene.noise > 0:
        pixels = pixels + np.random.default_rng(scene.noise_seed).normal(0, scene.noise, pixels.shape)
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")


# -- language ------------------------------------------------------------------------------------------


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
    """One sentence naming every shape (reading order) and the background."""
    things = [f"{_a(s.color + ' ' + s.kind)} {IN_POSITION[s.position]}" for s in scene.sorted_shapes()]
    text = _join(things) if things else "nothing"
    return f"{text[0].upper()}{text[1:]}, on {_a(scene.background_name)} background."


CAPTION_QUESTIONS = ("Describe the image.", "Describe the image briefly.", "What do you see?")
PRETRAIN_QUESTION = "Describe the image briefly."

_COUNT = ("How many shapes are there?", "How many shapes are in the image?", "Count the shapes.")
_COUNT_SHAPE = ("How many {} are there?", "How many {} are in the image?", "Count the {}.")
_COUNT_COLOR = ("How many {} shapes are there?", "How many {} shapes are in the image?")
_COLOR_AT = ("What color is the shape {}?", "What is the color of the shape {}?")
_COLOR_OF = ("What color is the {}?", "What is the color of the {}?")
_SHAPE_AT = ("What shape is {}?", "Which shape is {}?")
_SHAPE_OF = ("What shape is the {} one?", "What is the {} shape?")
_WHERE = ("Where is the {}?", "What is the position of the {}?")
_EXISTS = ("Is there {}?", "Is there {} in the image?")


def _pick(rng: np.random.Generator, options: Sequence):
    return options[rng.integers(len(options))]


def ask(scene: Scene, qtype: str, rng: np.random.Generator, *, refusal: float = 0.25) -> tuple[str, str]:
    """A question of type `qtype` (one of QUESTION_TYPES or "caption") about `scene` and its exact
    answer. With probability `refusal`, questions that name a thing ask about an absent one."""
    shapes = scene.shapes
    kinds = [s.kind for s in shapes]
    colors = [s.color for s in shapes]
    pairs = [(s.color, s.kind) for s in shapes]
    absent = rng.random() < refusal
    if qtype == "caption":
        return _pick(rng, CAPTION_QUESTIONS), caption(scene)
    if qtype == "count":
        return _pick(rng, _COUNT), str(len(shapes))
    if qtype == "count_shape":
        kind = _pick(rng, SHAPES if absent else kinds)
        return _pick(rng, _COUNT_SHAPE).format(PLURALS[kind]), str(kinds.count(kind))
    if qtype == "count_color":
        color = _pick(rng, list(COLORS) if absent else colors)
        return _pick(rng, _COUNT_COLOR).format(color), str(colors.count(color))
    if qtype == "color":
        unique = [k for k in SHAPES if kinds.count(k) == 1]
        if absent:
            if rng.random() < 0.5:
                pos = _pick(rng, [p for p in POSITIONS if p not in {s.position for s in shapes}])
                return _pick(rng, _COLOR_AT).format(
                    IN_POSITION[pos]
                ), f"There is no shape {IN_POSITION[pos]}."
            kind = _pick(rng, [k for k in SHAPES if k not in kinds])
            return _pick(rng, _COLOR_OF).format(kind), f"There is no {kind}."
        if unique and rng.random() < 0.5:
            kind = _pick(rng, unique)
            return _pick(rng, _COLOR_OF).format(kind), shapes[kinds.index(kind)].color
        s = _pick(rng, shapes)
        return _pick(rng, _COLOR_AT).format(IN_POSITION[s.position]), s.color
    if qtype == "shape":
        unique = [c for c in COLORS if colors.count(c) == 1]
        if absent:
            if rng.random() < 0.5:
                pos = _pick(rng, [p for p in POSITIONS if p not in {s.position for s in shapes}])
                return _pick(rng, _SHAPE_AT).format(
                    IN_POSITION[pos]
                ), f"There is no shape {IN_POSITION[pos]}."
            color = _pick(rng, [c for c in COLORS if c not in colors])
            return _pick(rng, _SHAPE_OF).format(color), f"There is no {color} shape."
        if unique and rng.random() < 0.5:
            color = _pick(rng, unique)
            return _pick(rng, _SHAPE_OF).format(color), shapes[colors.index(color)].kind
        s = _pick(rng, shapes)
        return _pick(rng, _SHAPE_AT).format(IN_POSITION[s.position]), s.kind
    if qtype == "position":
        if absent:
            color, kind = _pick(rng, [(c, k) for c in COLORS for k in SHAPES if (c, k) not in pairs])
            return _pick(rng, _WHERE).format(f"{color} {kind}"), f"There is no {color} {kind}."
        unique_kind = [k for k in kinds if kinds.count(k) == 1]
        unique_pair = [p for p in pairs if pairs.count(p) == 1]
        if unique_kind and rng.random() < 0.5:
            kind = _pick(rng, unique_kind)
            return _pick(rng, _WHERE).format(kind), shapes[kinds.index(kind)].position
        if unique_pair:
            color, kind = _pick(rng, unique_pair)
            return _pick(rng, _WHERE).format(f"{color} {kind}"), shapes[pairs.index((color, kind))].position
        return ask(scene, "count", rng)  # every shape repeats: nothing can be pointed at by name
    if qtype == "exists":
        absent = rng.random() < 0.5  # as many no's as yes's
        if rng.random() < 0.5:
            kind = _pick(rng, [k for k in SHAPES if (k in kinds) != absent])
            thing = kind
        else:
            color, kind = _pick(rng, [(c, k) for c in COLORS for k in SHAPES if ((c, k) in pairs) != absent])
            thing = f"{color} {kind}"
        q = _pick(rng, _EXISTS).format(_a(thing))
        return q, (f"No, there is no {thing}." if absent else f"Yes, there is {_a(thing)}.")
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES} or 'caption'")


# Training mix: shape and "is there" questions were the hardest to learn, so they come more often.
TYPE_WEIGHTS = {
    "count": 1.0,
    "count_shape": 1.0,
    "count_color": 1.0,
    "color": 1.0,
    "shape": 1.5,
    "position": 1.0,
    "exists": 1.5,
    "caption": 0.5,
}

TEXT_ONLY = (
    ("What shapes do you know?", ", ".join(SHAPES) + "."),
    ("Which shapes can you recognize?", ", ".join(SHAPES) + "."),
    ("What colors do you know?", ", ".join(COLORS) + "."),
    ("Which colors can you recognize?", ", ".join(COLORS) + "."),
    ("Where can a shape be?", ", ".join(POSITIONS) + "."),
)


def conversation(
    scene: Scene, rng: np.random.Generator, max_turns: int = 4, weights: dict[str, float] | None = None
) -> list[tuple[str, str]]:
    """1..max_turns (question, answer) pairs about `scene`, no question asked twice."""
    weights = weights or TYPE_WEIGHTS
    types = list(weights)
    p = np.array([weights[t] for t in types], np.float64)
    p /= p.sum()
    turns: list[tuple[str, str]] = []
    for _ in range(int(rng.integers(1, max_turns + 1))):
        for _retry in range(8):
            q, a = ask(scene, types[rng.choice(len(types), p=p)], rng)
            if all(q != prev for prev, _ in turns):
                turns.append((q, a))
                break
    return turns


def llava_sample(sample_id: str, image: str | None, turns: Sequence[tuple[str, str]]) -> dict:
    """One LLaVA-format sample: the image (if any) goes first in the first human turn."""
    conv = []
    for i, (q, a) in enumerate(turns):
        prefix = "<image>\n" if image is not None and i == 0 else ""
        conv += [{"from": "human", "value": prefix + q}, {"from": "gpt", "value": a}]
    out: dict = {"id": sample_id}
    if image is not None:
        out["image"] = image
    out["conversations"] = conv
    return out


# -- the data set --------------------------------------------------------------------------------------

_SPLITS = {"train": 0, "heldout": 1, "text": 2}


@dataclass
class _Job:
    out_dir: str
    split: str
    index: int
    seed: int
    image_size: int
    max_turns: int
    questions_per_image: int
    weights: dict[str, float] = field(default_factory=dict)


def _make_image(job: _Job) -> dict:
    """Draw one image and write it; its scene, conversation, caption and (held-out) questions."""
    rng = np.random.default_rng((job.seed, _SPLITS[job.split], job.index))
    scene = random_scene(rng)
    name = f"images/{job.split}_{job.index:06d}.png"
    render_scene(scene, job.image_size).save(Path(job.out_dir) / name, compress_level=1)
    out = {
        "image": name,
        "scene": asdict(scene),
        "sample": llava_sample(
            f"{job.split}_{job.index:06d}", name, conversation(scene, rng, job.max_turns, job.weights)
        ),
        "caption": caption(scene),
        "questions": [],
    }
    for k in range(job.questions_per_image):
        qtype = QUESTION_TYPES[(job.index * job.questions_per_image + k) % len(QUESTION_TYPES)]
        q, a = ask(scene, qtype, rng)
        out["questions"].append({"image": name, "question": q, "answer": a, "type": qtype})
    return out


def _map(fn: Callable, jobs: list, workers: int) -> list:
    if workers <= 1 or len(jobs) < 64:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, jobs, chunksize=64))


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def make_demo_data(
    out_dir: str | os.PathLike,
    n_images: int,
    seed: int = 0,
    image_size: int = 112,
    *,
    n_heldout: int = 200,
    questions_per_image: int = 3,
    max_turns: int = 4,
    text_only: int | None = None,
    type_weights: dict[str, float] | None = None,
    workers: int = 1,
) -> dict[str, Path]:
    """Write the synthetic data set to `out_dir` (see the module docstring for the files); returns the
    paths of the JSON files by name. `n_images` training images, `n_heldout` held-out images (eval loss and
    `questions_per_image` exact-answer questions each, the types taking turns), `text_only` text-only
    samples (default: 2% of n_images). `workers` processes draw the images; the result does not depend on
    it."""
    if n_images < 1 or n_heldout < 0 or image_size < 8:
        raise ValueError(
            f"need n_images >= 1, n_heldout >= 0, image_size >= 8 (got {n_images}, {n_heldout}, {image_size})"
        )
    weights = dict(type_weights or TYPE_WEIGHTS)
    unknown = set(weights) - set(QUESTION_TYPES) - {"caption"}
    if unknown:
        raise ValueError(f"type_weights: unknown question types {sorted(unknown)}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)

    def jobs(split: str, n: int, questions: int) -> list[_Job]:
        return [_Job(str(out), split, i, seed, image_size, max_turns, questions, weights) for i in range(n)]

    train = _map(_make_image, jobs("train", n_images, 0), workers)
    heldout = _map(_make_image, jobs("heldout", n_heldout, questions_per_image), workers)

    n_text = max(1, n_images // 50) if text_only is None else text_only
    rng = np.random.default_rng((seed, _SPLITS["text"]))
    text_samples = []
    for i in range(n_text):
        q, a = TEXT_ONLY[rng.integers(len(TEXT_ONLY))]
        text_samples.append(llava_sample(f"text_{i:06d}", None, [(q, a)]))
    # text-only samples spread through the training list at seeded places
    samples = [r["sample"] for r in train]
    for s, at in zip(text_samples, rng.integers(0, len(samples) + 1, size=n_text), strict=True):
        samples.insert(int(at), s)

    paths = {name: out / f"{name}.json" for name in ("train", "pretrain", "eval", "questions", "scenes")}
    _write_json(paths["train"], samples)
    _write_json(
        paths["pretrain"],
        [
            llava_sample(f"caption_{i:06d}", r["image"], [(PRETRAIN_QUESTION, r["caption"])])
            for i, r in enumerate(train)
        ],
    )
    _write_json(paths["eval"], [r["sample"] for r in heldout])
    _write_json(paths["questions"], [q for r in heldout for q in r["questions"]])
    _write_json(paths["scenes"], {r["image"]: r["scene"] for r in train + heldout})
    return paths


# -- scoring -------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Case, surrounding spaces and a final period do not count."""
    return text.strip().rstrip(".").strip().lower()


def score_answers(questions: Sequence[dict], predictions: Sequence[str]) -> dict[str, float]:
    """Exact-answer accuracy (after `normalize_answer`) per question type and overall ("all")."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
    hits: dict[str, list[bool]] = {}
    for q, p in zip(questions, predictions, strict=True):
        ok = normalize_answer(p) == normalize_answer(q["answer"])
        hits.setdefault(q.get("type", "all"), []).append(ok)
        if q.get("type", "all") != "all":
            hits.setdefault("all", []).append(ok)
    return {t: float(np.mean(v)) for t, v in sorted(hits.items())}


# -- the example images that ship in examples/ ---------------------------------------------------------

EXAMPLES = {
    "shapes.png": Scene.of(
        ("red", "circle", "top left"), ("blue", "star", "center"), ("yellow", "triangle", "bottom right")
    ),
    "hearts.png": Scene.of(
        ("pink", "heart", "left"),
        ("green", "heart", "top right"),
        ("white", "diamond", "bottom"),
        background="navy",
    ),
    "four.png": Scene.of(
        ("orange", "square", "top"),
        ("purple", "cross", "right"),
        ("black", "circle", "bottom left"),
        ("red", "star", "bottom right"),
        background="beige",
    ),
}


def write_examples(folder: str | os.PathLike, image_size: int = 288) -> dict[str, str]:
    """Draw EXAMPLES into `folder`; returns {file name: caption}. Larger than the demo tower's input (it is
    resized as any photo would be), so that people can see them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, scene in EXAMPLES.items():
        render_scene(scene, image_size).save(folder / name)
        out[name] = caption(scene)
    return out
