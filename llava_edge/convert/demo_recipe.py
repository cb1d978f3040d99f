"""The demo model's recipe, one command from nothing to a shipped bundle:

    python -m llava_edge.convert.demo_recipe OUT [--threads N]

1. data     `make_demo_data`: shape scenes at 96 x 96 pixels, LLaVA-format conversations of 1-8 turns, 500
            held-out questions (the seven question types in turn, images never seen in training).
2. model    a new LLaVA: its own CLIP ViT (96 px, patch 32: 9 image tokens, one per grid cell; 6 layers x
            192), the mlp2x_gelu projector, a Mistral decoder (4 layers x 256, GQA 4/2 heads, sliding window
            160: about one training conversation in seven is longer) and the real Mistral tokenizer
            (mistral-common's tokenizer.model.v1).
3. tower    the ViT learns to see first: every output patch predicts what its 3 x 3 grid cell holds (shape
            kind or nothing, colour or nothing), which cell it is in, and the background. These are the
            features the projector receives, so each image token ends up saying "a red star, top left".
4. finetune projector + decoder on the conversations (answer-only loss, mistral_instruct template), the tower
            frozen as in LLaVA's instruction tuning; bf16 autocast; cosine schedule; exported as a bundle.
5. measure  exact-answer accuracy on the held-out questions, in torch and in our runtime on the bundle;
            written to OUT/report.json.

Why one token per cell: with patch 8 (144 tokens) the decoder had to pick 16 redundant tokens out of 144
for every question; at one token per cell the tower stage still names 99+% of cells right, a finetune
sample costs half as much, and the decoder chooses among 9.

Why the separate tower stage: trained jointly from scratch, the decoder and the tower each waited for the
other; the tower learned which shapes were present and then lost it, and shape / "is there" questions stayed
near chance (see issue 6's notes). A tower that already names every cell leaves the decoder only the job of
reading the right tokens. Everything is seeded; the numbers in report.json come from this command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..demo_data import BACKGROUNDS, COLORS, POSITIONS, SHAPES, make_demo_data, score_answers
from ..errors import Interrupted, LlavaEdgeError

VISION = dict(
    image_size=96,
    patch_size=32,
    hidden_size=192,
    intermediate_size=768,
    num_hidden_layers=6,
    num_attention_heads=3,
)
TEXT = dict(
    model_type="mistral",
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    sliding_window=160,
    max_position_embeddings=1024,
)
# label heads of the tower stage: what each output patch predicts
N_KIND, N_COLOR, N_CELL, N_BACKGROUND = len(SHAPES) + 1, len(COLORS) + 1, len(POSITIONS), len(BACKGROUNDS) + 1


def mistral_tokenizer() -> Path:
    """The real Mistral SentencePiece model that mistral-common ships."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise LlavaEdgeError(
            f"{path}: mistral-common's tokenizer.model.v1 is missing (pip install mistral-common)"
        )
    return path


def patch_labels(scene: dict, grid: int) -> np.ndarray:
    """[4, grid * grid] int64 targets of every patch (row-major): kind of the shape in its cell (0: none),
    its colour (0: none), the cell index (reading order), the background (last class: a gradient)."""
    kinds, colors = np.zeros(9, np.int64), np.zeros(9, np.int64)
    cells = list(POSITIONS)
    for s in scene["shapes"]:
        c = cells.index(s["position"])
        kinds[c] = SHAPES.index(s["kind"]) + 1
        colors[c] = list(COLORS).index(s["color"]) + 1
    rc = (np.arange(grid) * 3) // grid  # the grid row (column) of each patch row (column)
    cell = (rc[:, None] * 3 + rc[None, :]).reshape(-1)
    bg = len(BACKGROUNDS) if scene.get("gradient_to") else list(BACKGROUNDS).index(scene["background"])
    return np.stack([kinds[cell], colors[cell], cell, np.full_like(cell, bg)])


class TowerSet:
    """(pixels [3, S, S] float32, labels [4, patches]) for every training image of a demo data folder."""

    def __init__(self, folder: Path, preprocess_config, grid: int):
        scenes = json.loads((folder / "scenes.json").read_text())
        self.items = [(folder / name, scene) for name, scene in scenes.items() if "/train_" in name]
        self.cfg, self.grid = preprocess_config, grid

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from ..image import load_image
        from ..preprocess import preprocess

        path, scene = self.items[i]
        return preprocess(load_image(path), self.cfg)[0], patch_labels(scene, self.grid)


def pretrain_tower(llava, data: Path, pp, *, steps: int, batch: int, lr: float, seed: int, log) -> dict:
    """Train `llava`'s vision tower in place on per-patch labels; returns the last held-in accuracies."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, RandomSampler

    v = llava.config.vision_config
    grid = v.image_size // v.patch_size
    tower = llava.model.vision_tower
    layer = llava.config.vision_feature_layer
    sizes = (N_KIND, N_COLOR, N_CELL, N_BACKGROUND)
    torch.manual_seed(seed)
    heads = torch.nn.Linear(v.hidden_size, sum(sizes))
    for p in tower.parameters():
        p.requires_grad_(True)
    params = [*tower.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    dataset = TowerSet(data, pp, grid)
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=steps * batch, generator=torch.Generator().manual_seed(seed)
    )
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=1)
    warmup = max(1, steps // 20)
    tower.train()
    t0, seen, acc = time.perf_counter(), 0, {}
    for step, (pixels, labels) in enumerate(loader):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.02)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[layer][:, 1:]
            logits = heads(feats).float()
        losses, hits = [], []
        for k, part in enumerate(torch.split(logits, sizes, dim=-1)):
            losses.append(F.cross_entropy(part.flatten(0, 1), labels[:, k].flatten()))
            hits.append((part.argmax(-1) == labels[:, k]).float().mean().item())
        loss = sum(losses)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += len(pixels)
        acc = dict(zip(("kind", "color", "cell", "background"), hits, strict=True))
        if (step + 1) % 50 == 0 or step + 1 == steps:
            rate = seen / (time.perf_counter() - t0)
            log(
                f"tower step {step + 1}/{steps}: loss {loss.item():.4f}, patch accuracy "
                + " ".join(f"{k} {a:.4f}" for k, a in acc.items())
                + f", {rate:.0f} images/s"
            )
    for p in tower.parameters():
        p.requires_grad_(False)
    return acc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llava_edge.convert.demo_recipe",
        description="Make the demo data, train the demo LLaVA model (tower stage, then projector + decoder), "
        "export it as a bundle and measure its exact-answer accuracy in torch and in the runtime.",
    )
    p.add_argument("out", help="run folder (data/, init/, tower/, finetune/, report.json)")
    p.add_argument("--images", type=int, default=100_000, help="training images")
    p.add_argument("--heldout", type=int, default=500, help="held-out questions (one per fresh image)")
    p.add_argument("--max-turns", type=int, default=8, help="most question/answer turns per conversation")
    p.add_argument("--tower-steps", type=int, default=1500)
    p.add_argument("--tower-batch", type=int, default=64)
    p.add_argument("--tower-lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=12_000, help="projector + decoder optimizer steps")
    p.add_argument("--batch", type=int, default=32, help="samples per optimizer step")
    p.add_argument(
        "--length-groups",
        type=int,
        default=4,
        help="forwards per step, samples grouped by length (the same gradient, ~1.5x faster on a CPU)",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=5e-5)
    p.add_argument("--export-type", default="q6_k")
    p.add_argument(
        "--eval-every", type=int, default=1000, help="torch accuracy on 100 questions every N steps"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=1, help="data loader processes")
    return p


def run(args: argparse.Namespace) -> dict:
    """Every stage in order; a stage whose result is already in OUT is skipped (an interrupted finetune
    resumes from its last checkpoint), so rerunning the command finishes an interrupted run."""
    import torch

    from .llava_export import export_llava
    from .train import _checkpoint_dirs, train
    from .train import build_parser as train_parser
    from .train_model import copy_side_files, create_model, load_llava, model_preprocess_config

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "recipe.log").open("a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, file=sys.stderr, flush=True)
        print(line, file=log_file, flush=True)

    log("python -m llava_edge.convert.demo_recipe " + " ".join(sys.argv[1:]))
    data = out / "data"
    if not (data / "questions.json").is_file():
        log(f"data: {args.images} training images, {args.heldout} held-out questions -> {data}")
        make_demo_data(
            data,
            args.images,
            args.seed,
            VISION["image_size"],
            n_heldout=args.heldout,
            questions_per_image=1,
            max_turns=args.max_turns,
            workers=max(1, args.workers + 1),
        )

    stage0 = out / "tower"
    if not (stage0 / "config.json").is_file():
        cfg = {
            "vision_config": VISION,
            "text_config": TEXT,
            "vision_feature_layer": -1,
            "tokenizer": str(mistral_tokenizer()),
        }
        init = create_model(cfg, out / "init", [], args.seed)
        llava = load_llava(init)
        pp = model_preprocess_config(init, llava.config)
        log(f"tower: {args.tower_steps} steps x {args.tower_batch} images")
        t0 = time.perf_counter()
        acc = pretrain_tower(
            llava,
            data,
            pp,
            steps=args.tower_steps,
            batch=args.tower_batch,
            lr=args.tower_lr,
            seed=args.seed,
            log=log,
        )
        llava.save_pretrained(stage0)
        copy_side_files(init, stage0)
        (stage0 / "tower_stage.json").write_text(
            json.dumps({"patch_accuracy_last_batch": acc, "minutes": (time.perf_counter() - t0) / 60})
        )
        del llava

    finetune = out / "finetune"
    if not (finetune / "model" / "config.json").is_file():
        t0 = time.perf_counter()
        resume = ["--resume"] if _checkpoint_dirs(finetune) else []
        save_every = max(1, min(500, args.steps // 8))  # an interrupted run loses at most ~10 minutes
        train(
            train_parser().parse_args(
                [
                    *("--model", str(stage0), "--data", str(data / "train.json"), "--out", str(finetune)),
                    *("--questions", str(data / "questions.json"), "--questions-limit", "100"),
                    *("--steps", str(args.steps), "--micro-batch", str(args.batch), "--lr", str(args.lr)),
                    *("--min-lr", str(args.min_lr), "--warmup-steps", str(max(1, args.steps // 30))),
                    *("--dtype", "bf16", "--workers", str(args.workers), "--seed", str(args.seed)),
                    *("--length-groups", str(args.length_groups)),
                    *("--eval-every", str(args.eval_every), "--save-every", str(save_every)),
                    *("--export-type", args.export_type, "--max-length", "512", "--log-every", "50"),
                    *resume,
                ]
            )
        )
        (finetune / "finetune_stage.json").write_text(
            json.dumps({"minutes": (time.perf_counter() - t0) / 60})
        )
    if not (finetune / "bundle" / "model.gguf").is_file():
        export_llava(finetune / "model", finetune / "bundle", args.export_type, progress=True)

    ship = out / "demo_model"
    log(f"ship: {args.export_type} decoder + int8 tower -> {ship}")
    export_llava(finetune / "model", ship, args.export_type, vision_precision="int8", progress=True)
    report = measure(finetune, ship, data, log)
    report = {
        "command": "python -m llava_edge.convert.demo_recipe " + " ".join(sys.argv[1:]),
        "settings": vars(args),
        **{
            f"{k}_stage": json.loads((d / f"{k}_stage.json").read_text())
            for k, d in (("tower", stage0), ("finetune", finetune))
            if (d / f"{k}_stage.json").is_file()  # absent when a stage ran under an older recipe
        },
        **report,
        "ship_bytes": {p.name: p.stat().st_size for p in sorted(ship.iterdir())},
        "torch_threads": torch.get_num_threads(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log(
        "report: "
        + json.dumps({k: v for k, v in report.items() if k.startswith(("torch", "runtime", "tower_cos"))})
    )
    return report


def measure(finetune: Path, ship: Path, data: Path, log) -> dict:
    """Exact-answer accuracy on every held-out question: the trained torch model (fp32), our runtime on the
    bundle with the fp32 tower and on the shipped one (int8 tower); and how close the int8 tower's features
    are to the fp32 tower's on the held-out images."""
    from ..bundle import VISION_FILE
    from ..evaluate import accuracy
    from ..image import load_image
    from ..preprocess import preprocess
    from ..vision_int8 import feature_cosine
    from ..vision_tower import VisionTower
    from .data import ConversationEncoder
    from .llava_export import INT8_VISION_FILE
    from .train import answer_questions
    from .train_model import (
        chat_template_name,
        image_token_count,
        load_llava,
        model_preprocess_config,
        runtime_tokenizer,
    )

    questions = json.loads((data / "questions.json").read_text())
    log(f"measure: torch (fp32) on {len(questions)} held-out questions")
    model = load_llava(finetune / "model")
    cfg = model.config
    pp = model_preprocess_config(finetune / "model", cfg)
    tok = runtime_tokenizer(finetune / "model", cfg.text_config.vocab_size)
    encoder = ConversationEncoder(tok, chat_template_name(cfg), cfg.image_token_id, image_token_count(cfg))
    report = {"heldout_questions": len(questions)}
    report["torch_fp32"] = score_answers(
        questions, answer_questions(model, encoder, pp, questions, data, "cpu")
    )
    for name, bundle in (("runtime_fp32_tower", finetune / "bundle"), ("runtime_shipped", ship)):
        log(f"measure: our runtime on {bundle}")
        result = accuracy(bundle, data / "questions.json")
        report[name] = score_answers(questions, [r["predicted"] for r in result["items"]])
    pixels = np.concatenate([preprocess(load_image(data / q["image"]), pp) for q in questions])
    report["tower_cosine_int8_vs_fp32"] = feature_cosine(
        VisionTower(finetune / "bundle" / VISION_FILE).encode(pixels),
        VisionTower(ship / INT8_VISION_FILE).encode(pixels),
    )
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 130
    except LlavaEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
