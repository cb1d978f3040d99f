"""The synthetic scene data set: deterministic from its seed, answers that follow from what was drawn, and
JSON the trainer reads."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_edge.demo_data import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    QUESTION_TYPES,
    Scene,
    make_demo_data,
    normalize_answer,
    render_scene,
    score_answers,
)

SIZE = 48


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    make_demo_data(out, 40, seed=7, image_size=SIZE, n_heldout=14, questions_per_image=3)
    return out


def test_same_seed_same_files_other_seed_other_files(data, tmp_path):
    make_demo_data(tmp_path / "again", 40, seed=7, image_size=SIZE, n_heldout=14, questions_per_image=3)
    assert digest(tmp_path / "again") == digest(data)
    make_demo_data(tmp_path / "other", 40, seed=8, image_size=SIZE, n_heldout=14, questions_per_image=3)
    theirs = digest(tmp_path / "other")
    assert theirs.keys() == digest(data).keys()
    assert sum(theirs[k] != v for k, v in digest(data).items()) > 40


@pytest.mark.slow
def test_worker_processes_do_not_change_the_data(tmp_path):
    make_demo_data(tmp_path / "one", 70, seed=3, image_size=24, n_heldout=0, workers=1)
    make_demo_data(tmp_path / "two", 70, seed=3, image_size=24, n_heldout=0, workers=2)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")


# -- what is in the pictures ---------------------------------------------------------------------------


def cells_seen(img: Image.Image, background: np.ndarray) -> dict[str, str]:
    """Read a picture back: for each grid cell, the named colour nearest to the pixels that stand out from
    the background there (cells where nothing does are left out)."""
    px = np.asarray(img.convert("RGB"), np.float64)
    n = px.shape[0]
    names = list(COLORS)
    palette = np.array([COLORS[c] for c in names], np.float64)
    found = {}
    for pos, (row, col) in POSITIONS.items():
        cell = px[row * n // 3 : (row + 1) * n // 3, col * n // 3 : (col + 1) * n // 3].reshape(-1, 3)
        bg = background[row * n // 3 : (row + 1) * n // 3, col * n // 3 : (col + 1) * n // 3].reshape(-1, 3)
        far = np.linalg.norm(cell - bg, axis=1) > 60
        if far.sum() >= 6:
            dist = np.linalg.norm(cell[far][:, None, :] - palette[None], axis=2)
            found[pos] = names[np.bincount(dist.argmin(1), minlength=len(names)).argmax()]
    return found


def background_of(scene: dict, n: int) -> np.ndarray:
    plain = Scene((), scene["background"], scene["gradient_to"], scene["gradient_angle"])
    return np.asarray(render_scene(plain, n), np.float64)


def test_drawn_shapes_are_where_and_what_the_scene_says(data):
    scenes = json.loads((data / "scenes.json").read_text())
    assert len(scenes) == 54
    for image, scene in scenes.items():
        seen = cells_seen(Image.open(data / image), background_of(scene, SIZE))
        assert seen == {s["position"]: s["color"] for s in scene["shapes"]}, image


def test_a_scene_drawn_by_hand():
    scene = Scene.of(("red", "circle", "top left"), ("blue", "star", "center"), background="beige")
    img = render_scene(scene, 96)
    seen = cells_seen(img, np.broadcast_to(np.array(BACKGROUNDS["beige"], np.float64), (96, 96, 3)))
    assert seen == {"top left": "red", "center": "blue"}
    with pytest.raises(ValueError, match="shape kind 'oval'"):
        Scene.of(("red", "oval", "top"))
    with pytest.raises(ValueError, match="share a position"):
        Scene.of(("red", "circle", "top"), ("blue", "star", "top"))


# -- answers follow from the scene ---------------------------------------------------------------------

PLURAL = {"crosses": "cross"}


def singular(word: str) -> str:
    return PLURAL.get(word, word[:-1])


def place(phrase: str) -> str:
    return re.sub(r"^(in|at|on) the ", "", phrase)


def expected_answer(question: str, shapes: list[dict]) -> str:
    """The answer to a question, worked out from the scene by reading the question (not by the generator's
    code paths)."""
    kinds = [s["kind"] for s in shapes]
    colors = [s["color"] for s in shapes]
    at = {s["position"]: s for s in shapes}

    def only(matches: list[dict], what: str) -> dict:
        assert len(matches) == 1, f"{question!r} names {what}, which is not unique"
        return matches[0]

    if m := re.fullmatch(
        r"How many shapes are there\?|How many shapes are in the image\?|Count the shapes\.", question
    ):
        return str(len(shapes))
    if m := re.fullmatch(r"How many (\w+) shapes (are there|are in the image)\?", question):
        return str(colors.count(m[1]))
    if m := re.fullmatch(r"(?:How many (\w+) (?:are there|are in the image)\?|Count the (\w+)\.)", question):
        return str(kinds.count(singular(m[1] or m[2])))
    if m := re.fullmatch(
        r"(?:What color is|What is the color of) the shape ((?:in|at|on) the [\w ]+)\?", question
    ):
        s = at.get(place(m[1]))
        return s["color"] if s else f"There is no shape {m[1]}."
    if m := re.fullmatch(r"(?:What color is|What is the color of) the (\w+)\?", question):
        matches = [s for s in shapes if s["kind"] == m[1]]
        return only(matches, m[1])["color"] if matches else f"There is no {m[1]}."
    if m := re.fullmatch(r"(?:What|Which) shape is ((?:in|at|on) the [\w ]+)\?", question):
        s = at.get(place(m[1]))
        return s["kind"] if s else f"There is no shape {m[1]}."
    if m := re.fullmatch(r"(?:What shape is the (\w+) one|What is the (\w+) shape)\?", question):
        color = m[1] or m[2]
        matches = [s for s in shapes if s["color"] == color]
        return only(matches, color)["kind"] if matches else f"There is no {color} shape."
    if m := re.fullmatch(r"(?:Where is|What is the position of) the (?:(\w+) )?(\w+)\?", question):
        matches = [s for s in shapes if s["kind"] == m[2] and m[1] in (None, s["color"])]
        thing = f"{m[1]} {m[2]}" if m[1] else m[2]
        return only(matches, thing)["position"] if matches else f"There is no {thing}."
    if m := re.fullmatch(r"Is there an? (?:(\w+) )?(\w+)(?: in the image)?\?", question):
        color, kind = m[1], m[2]
        thing = f"{color} {kind}" if color else kind
        article = "an" if thing[0] in "aeiou" else "a"
        there = any(s["kind"] == kind and color in (None, s["color"]) for s in shapes)
        return f"Yes, there is {article} {thing}." if there else f"No, there is no {thing}."
    if question in ("Describe the image.", "Describe the image briefly.", "What do you see?"):
        return "<caption>"
    raise AssertionError(f"a question outside the documented forms: {question!r}")


def check_caption(answer: str, shapes: list[dict]) -> None:
    for s in shapes:
        article = "an" if s["color"][0] in "aeiou" else "a"
        assert re.search(
            rf"\b{article} {s['color']} {s['kind']} (in|at|on) the {s['position']}\b", answer, re.I
        )
    assert len(re.findall(r"\b(circle|square|triangle|star|diamond|cross|heart)\b", answer)) == len(shapes)


def test_every_answer_follows_from_the_scene(data):
    scenes = json.loads((data / "scenes.json").read_text())
    n_checked = 0
    for name in ("train.json", "eval.json", "pretrain.json"):
        for sample in json.loads((data / name).read_text()):
            if "image" not in sample:
                continue
            shapes = scenes[sample["image"]]["shapes"]
            conv = sample["conversations"]
            for q, a in zip(conv[0::2], conv[1::2], strict=True):
                want = expected_answer(q["value"].removeprefix("<image>\n"), shapes)
                if want == "<caption>":
                    check_caption(a["value"], shapes)
                else:
                    assert a["value"] == want, (sample["id"], q["value"])
                n_checked += 1
    questions = json.loads((data / "questions.json").read_text())
    for q in questions:
        assert q["answer"] == expected_answer(q["question"], scenes[q["image"]]["shapes"])
    assert n_checked > 100


def test_question_set_is_balanced_and_has_refusals(data):
    questions = json.loads((data / "questions.json").read_text())
    assert len(questions) == 14 * 3
    counts = {t: sum(q["type"] == t for q in questions) for t in QUESTION_TYPES}
    assert set(counts.values()) == {6}
    answers = [q["answer"] for q in questions]
    assert any(a.startswith("No, there is no") for a in answers)
    assert any(a.startswith("Yes, there is") for a in answers)


def test_json_is_what_the_trainer_reads(data):
    pytest.importorskip("torch")
    from llava_edge.convert.data import load_samples

    train = load_samples(data / "train.json")
    assert len(train) == 40 + 1  # one text-only sample per 50 images, at least one
    text_only = [s for s in train if not s.images]
    assert len(text_only) == 1 and text_only[0].images_per_turn == (0,)
    for s in train:
        if s.images:
            assert Path(s.images[0]).is_file()
            assert s.images_per_turn[0] == 1 and sum(s.images_per_turn) == 1
            assert 1 <= len(s.turns) <= 4
            assert all("<image>" not in q for q, _ in s.turns)
    pretrain = load_samples(data / "pretrain.json")
    assert len(pretrain) == 40 and all(len(s.turns) == 1 for s in pretrain)
    assert len(load_samples(data / "eval.json")) == 14


def test_scoring():
    qs = [
        {"question": "?", "answer": "red", "type": "color"},
        {"question": "?", "answer": "No, there is no star.", "type": "exists"},
        {"question": "?", "answer": "3", "type": "count"},
    ]
    scores = score_answers(qs, [" Red ", "No, there is no star", "4"])
    assert scores == {"all": 2 / 3, "color": 1.0, "count": 0.0, "exists": 1.0}
    assert normalize_answer("  Top left. ") == "top left"
    with pytest.raises(ValueError):
        score_answers(qs, ["red"])
