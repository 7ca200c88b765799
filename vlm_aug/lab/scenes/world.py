"""Synthetic scenes of 1-3 coloured shapes: ground truth, rendering, terse and dense captions.

Everything is a pure function of a `random.Random`, so a seed fixes every scene, image and caption.
The dense description has one sentence per object, "A large red circle at the top left.",
in reading order of the 3x3 grid, so sentences can be scored (and perturbed) one by one.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 20),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top center", "top right", "middle left", "center", "middle right",
             "bottom left", "bottom center", "bottom right")
ATTRIBUTES = ("colour", "shape", "size", "position")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
# Shape extent as a fraction of a grid cell: the small one must still be recognisable at 64 px.
SIZE_FRACTION = {"small": 0.62, "large": 0.92}
RENDER_SCALE = 4  # draw big, then downsample: anti-aliased edges


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str

    def sentence(self) -> str:
        return f"A {self.size} {self.colour} {self.shape} at the {self.position}."


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # in grid reading order
    background: tuple[int, int, int]

    def to_json(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "background": list(self.background)}

    @classmethod
    def from_json(cls, data: dict) -> "Scene":
        return cls(tuple(SceneObject(**o) for o in data["objects"]), tuple(data["background"]))


def sample_scene(rng: random.Random, max_objects: int = 3) -> Scene:
    """A random scene: 1..max_objects shapes in distinct grid cells on a light background."""
    n = rng.randint(1, max_objects)
    cells = sorted(rng.sample(range(len(POSITIONS)), n))
    objects = tuple(
        SceneObject(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES), POSITIONS[c])
        for c in cells
    )
    grey = rng.randint(225, 250)
    return Scene(objects, (grey, grey, grey))


def _shape_points(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half * 0.8), (cx - half, cy + half * 0.8)]
    return [(cx - half, cy - half), (cx + half, cy + half)]


def render(scene: Scene, image_size: int = 64) -> Image.Image:
    """Draw the scene as an RGB image of `image_size` pixels square."""
    big = image_size * RENDER_SCALE
    img = Image.new("RGB", (big, big), scene.background)
    draw = ImageDraw.Draw(img)
    cell = big / 3
    for obj in scene.objects:
        row, col = divmod(POSITIONS.index(obj.position), 3)
        half = cell * SIZE_FRACTION[obj.size] / 2
        points = _shape_points(obj.shape, (col + 0.5) * cell, (row + 0.5) * cell, half)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(points, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(points, fill=fill)
        else:
            draw.polygon(points, fill=fill)
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS)


def dense_sentences(objects) -> list[str]:
    return [o.sentence() for o in objects]


def dense_description(objects) -> str:
    """All of the scene: one sentence per object, in the given order."""
    return " ".join(dense_sentences(objects))


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def terse_caption(scene: Scene, rng: random.Random) -> str:
    """A short caption naming only part of the scene (always true)."""
    obj = rng.choice(scene.objects)
    n = len(scene.objects)
    options = [
        f"{_a(obj.colour)} shape", _a(obj.shape), obj.shape, f"{_a(obj.colour)} {obj.shape}",
        f"a {obj.size} {obj.shape}",
        f"{NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}",
    ]
    return rng.choice(options)


def wrong_terse_caption(scene: Scene, rng: random.Random) -> tuple[str, dict]:
    """A terse caption naming a colour or a shape that is in no object of the scene."""
    absent_shapes = [s for s in SHAPES if s not in {o.shape for o in scene.objects}]
    absent_colours = [c for c in COLOURS if c not in {o.colour for o in scene.objects}]
    if absent_shapes and rng.random() < 0.5:
        shape = rng.choice(absent_shapes)
        return rng.choice([_a(shape), shape]), {"attribute": "shape", "value": shape}
    colour = rng.choice(absent_colours)  # at most 3 of 6 colours are used: never empty
    text = rng.choice([f"{_a(colour)} shape", f"{_a(colour)} {rng.choice(SHAPES)}"])
    return text, {"attribute": "colour", "value": colour}


def _free_positions(scene: Scene) -> list[str]:
    used = {o.position for o in scene.objects}
    return [p for p in POSITIONS if p not in used]


def perturb(scene: Scene, index: int, attribute: str, rng: random.Random) -> tuple[SceneObject, ...]:
    """The scene's objects with one object's `attribute` changed to another value (order kept)."""
    obj = scene.objects[index]
    if attribute == "position":
        choices = _free_positions(scene)
    else:
        values = {"colour": list(COLOURS), "shape": SHAPES, "size": SIZES}[attribute]
        choices = [v for v in values if v != getattr(obj, attribute)]
    changed = replace(obj, **{attribute: rng.choice(choices)})
    return scene.objects[:index] + (changed,) + scene.objects[index + 1:]


def perturbed_description(scene: Scene, attribute: str, rng: random.Random) -> str:
    """The dense description with one random object's `attribute` changed: a hard negative."""
    index = rng.randrange(len(scene.objects))
    return dense_description(perturb(scene, index, attribute, rng))


def absent_object(scene: Scene, rng: random.Random) -> SceneObject:
    """An object that is not in the scene: a colour-shape pair no object has, in a free cell."""
    present = {(o.colour, o.shape) for o in scene.objects}
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    colour, shape = rng.choice(pairs)
    return SceneObject(shape, colour, rng.choice(SIZES), rng.choice(_free_positions(scene)))


def plant_wrong_sentence(scene: Scene, rng: random.Random) -> tuple[list[str], int]:
    """The dense sentences with one sentence about an absent object inserted; returns its index."""
    sentences = dense_sentences(scene.objects)
    index = rng.randint(0, len(sentences))
    sentences.insert(index, absent_object(scene, rng).sentence())
    return sentences, index


def parse_description(text: str) -> list[SceneObject] | None:
    """Objects named by a description in the dense grammar; None if any sentence does not parse."""
    objects = []
    for raw in text.strip().split("."):
        words = raw.strip()
        if not words:
            continue
        parts = words.split(" ", 4)
        if len(parts) < 5 or parts[0] != "A" or not parts[4].startswith("at the "):
            return None
        size, colour, shape, position = parts[1], parts[2], parts[3], parts[4][len("at the "):]
        if size not in SIZES or colour not in COLOURS or shape not in SHAPES or position not in POSITIONS:
            return None
        objects.append(SceneObject(shape, colour, size, position))
    return objects
