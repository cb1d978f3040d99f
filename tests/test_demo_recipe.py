"""The demo model's recipe (llava_edge/convert/demo_recipe.py): its tower-stage labels say what the scene
holds, and the whole command runs end to end for a few steps (CI never trains the shipped model) and leaves
a bundle with an int8 tower that our runtime loads and answers with."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

from llava_edge.bundle import LlavaMeta  # noqa: E402
from llava_edge.convert import demo_recipe  # noqa: E402
from llava_edge.demo_data import BACKGROUNDS, COLORS, POSITIONS, SHAPES, Scene, render_scene  # noqa: E402
from llava_edge.gguf_file import GGUFFile  # noqa: E402
from llava_edge.vision_tower import file_sha256  # noqa: E402


def test_patch_labels_name_each_cell_of_the_scene():
    scene = Scene.of(("red", "circle", "top left"), ("blue", "star", "center"), background="navy")
    grid = 12
    labels = demo_recipe.patch_labels(json.loads(json.dumps(_as_dict(scene))), grid)
    kind, color, cell, bg = labels.reshape(4, grid, grid)
    # cells are 4 x 4 blocks of patches in reading order
    for r in range(grid):
        for c in range(grid):
            assert cell[r, c] == (r // 4) * 3 + c // 4
    assert (kind[:4, :4] == SHAPES.index("circle") + 1).all()
    assert (color[:4, :4] == list(COLORS).index("red") + 1).all()
    assert (kind[4:8, 4:8] == SHAPES.index("star") + 1).all()
    assert (color[4:8, 4:8] == list(COLORS).index("blue") + 1).all()
    empty = np.ones((grid, grid), bool)
    empty[:4, :4] = empty[4:8, 4:8] = False
    assert (kind[empty] == 0).all() and (color[empty] == 0).all()
    assert (bg == list(BACKGROUNDS).index("navy")).all()
    gradient = {**_as_dict(scene), "gradient_to": "beige"}
    assert (demo_recipe.patch_labels(gradient, grid)[3] == len(BACKGROUNDS)).all()


def test_one_image_token_per_grid_cell():
    """The shipped configuration: a 3 x 3 patch grid, each patch exactly one cell, in reading order."""
    grid = demo_recipe.VISION["image_size"] // demo_recipe.VISION["patch_size"]
    assert grid == 3
    scene = Scene.of(("green", "heart", "bottom right"), ("black", "cross", "top"))
    kind, color, cell, _ = demo_recipe.patch_labels(_as_dict(scene), grid)
    assert cell.tolist() == list(range(9))
    assert kind.tolist() == [0, SHAPES.index("cross") + 1, 0, 0, 0, 0, 0, 0, SHAPES.index("heart") + 1]
    assert color[8] == list(COLORS).index("green") + 1 and color[1] == list(COLORS).index("black") + 1


def test_patch_labels_agree_with_the_drawn_pixels():
    """The cell a label names really holds that shape's colour in the rendered image."""
    rng = np.random.default_rng(3)
    from llava_edge.demo_data import random_scene

    for _ in range(20):
        scene = random_scene(rng)
        pixels = np.asarray(render_scene(scene, 96), np.float64)
        labels = demo_recipe.patch_labels(_as_dict(scene), 12)
        for s in scene.shapes:
            row, col = POSITIONS[s.position]
            block = pixels[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32].reshape(-1, 3)
            nearest = np.linalg.norm(block - np.array(COLORS[s.color]), axis=1).min()
            assert nearest < 30, (s, nearest)
            patch = (row * 4) * 12 + col * 4
            assert labels[0, patch] == SHAPES.index(s.kind) + 1
            assert labels[1, patch] == list(COLORS).index(s.color) + 1


def _as_dict(scene: Scene) -> dict:
    from dataclasses import asdict

    return asdict(scene)


def test_recipe_runs_a_few_steps_and_ships_an_int8_bundle(tmp_path):
    out = tmp_path / "run"
    args = [str(out), "--images", "96", "--heldout", "14", "--tower-steps", "3", "--tower-batch", "8"]
    args += ["--steps", "3", "--batch", "4", "--eval-every", "2", "--workers", "0"]
    assert demo_recipe.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["heldout_questions"] == 14
    for key in ("torch_fp32", "runtime_fp32_tower", "runtime_shipped"):
        scores = report[key]
        assert set(scores) >= {"all", "color", "shape", "count", "position", "exists"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    cos = report["tower_cosine_int8_vs_fp32"]
    assert 0.9 < cos["min"] <= cos["mean"] <= 1.0 + 1e-9

    ship = out / "demo_model"
    assert sorted(p.name for p in ship.iterdir()) == ["model.gguf", "vision-int8.onnx"]
    with GGUFFile.open(ship / "model.gguf") as g:
        meta = LlavaMeta.from_gguf_metadata(dict(g.metadata))
        assert g.metadata["llama.attention.sliding_window"] == demo_recipe.TEXT["sliding_window"]
        assert g.metadata["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert meta.vision_onnx == "vision-int8.onnx"
    assert meta.vision_onnx_sha256 == file_sha256(ship / "vision-int8.onnx")

    import llava_edge

    chat = llava_edge.load(ship).chat()
    responses = list(
        chat.ask(
            "What color is the star?",
            images=[str(out / "data" / "images" / "heldout_000000.png")],
            max_tokens=4,
        )
    )
    # the shipped bundle runs end to end: its int8 tower, projector and decoder produce an answer that ends
    assert 1 <= len(responses) <= 4
    assert responses[-1].finish_reason in ("stop", "length")

    # the training conversations: up to --max-turns turns, and some longer than the decoder's window
    from llava_edge.convert.data import ConversationEncoder, load_samples
    from llava_edge.convert.train_model import (
        chat_template_name,
        image_token_count,
        load_llava,
        runtime_tokenizer,
    )

    model_dir = out / "finetune" / "model"
    cfg = load_llava(model_dir).config
    assert image_token_count(cfg) == 9
    encoder = ConversationEncoder(
        runtime_tokenizer(model_dir, cfg.text_config.vocab_size),
        chat_template_name(cfg),
        cfg.image_token_id,
        image_token_count(cfg),
    )
    samples = load_samples(out / "data" / "train.json")
    assert max(len(s.turns) for s in samples) == 8  # make_demo_data's own default is 4
    lengths = [len(encoder.encode(s)[0]) for s in samples]
    assert max(lengths) > cfg.text_config.sliding_window, max(lengths)

    # a second run finds every stage done and only re-measures
    log_before = (out / "finetune" / "log.jsonl").read_text()
    assert demo_recipe.main(args) == 0
    assert (out / "finetune" / "log.jsonl").read_text() == log_before
