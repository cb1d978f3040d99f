"""Training: the loss falls exactly on the answers, the data order and loss weighting make N processes equal
one, a resumed run equals an uninterrupted one, and a merged LoRA finetune runs the same in our runtime."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402
from tiny_models import MISTRAL_SPM  # noqa: E402

import llava_edge  # noqa: E402
from llava_edge.convert.data import (  # noqa: E402
    IGNORE,
    PLAIN,
    ConversationEncoder,
    Sample,
    collate_parts,
    load_samples,
)
from llava_edge.convert.train import DataPlan, _checkpoint_dirs, answer_questions, lr_at, main  # noqa: E402
from llava_edge.convert.train_model import runtime_tokenizer  # noqa: E402
from llava_edge.demo_data import make_demo_data  # noqa: E402
from llava_edge.errors import ConvertError  # noqa: E402

REPO = Path(llava_edge.__file__).resolve().parent.parent
IMAGE_ID, N_IMAGE = 32000, 5
VICUNA = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# a tiny LLaVA: 28 px images in 14 px patches (4 image tokens), 2 + 2 layers, a 320-piece tokenizer
TINY_CONFIG = {
    "vision_config": {
        "image_size": 28,
        "patch_size": 14,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    },
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": 16,
    },
    "vision_feature_layer": -1,
    "tokenizer_vocab_size": 320,
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def data(root) -> Path:
    out = root / "data"
    make_demo_data(out, 24, seed=5, image_size=32, n_heldout=4, questions_per_image=2, max_turns=3)
    return out


@pytest.fixture(scope="module")
def tiny_config(root) -> Path:
    path = root / "tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture
def one_thread():
    """In-process runs use one torch thread (--threads 1), like each torchrun process; put it back after."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run(*args: str) -> None:
    assert main([*map(str, args), "--workers", "0", "--threads", "1"]) == 0


def steps_logged(out: Path) -> list[dict]:
    return [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in e]


def assert_same_weights(a: Path, b: Path, rel: float) -> None:
    """Each tensor within rel of its largest value, measured against at least 0.01. CLIP's key bias is
    measured against 0.1: its gradient is zero in exact arithmetic (a constant added to every key of a
    query cancels in the softmax), so what moves it is float noise, which differs with the order of sums."""
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        floor = 0.1 if k.startswith("vision_tower.") and k.endswith("k_proj.bias") else 1e-2
        scale = max(float(wb[k].abs().max()), floor)
        assert float((wa[k] - wb[k]).abs().max()) <= rel * scale, k


# -- loss masking --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mistral_tok(root):
    """The runtime tokenizer of a llava-hf style folder: Mistral's pieces + <image> 32000, <pad> 32001."""
    folder = root / "tok"
    folder.mkdir()
    shutil.copy(MISTRAL_SPM, folder / "tokenizer.model")
    (folder / "added_tokens.json").write_text(json.dumps({"<image>": IMAGE_ID, "<pad>": IMAGE_ID + 1}))
    return runtime_tokenizer(folder, 32064)


TWO_TURNS = Sample(
    id="x",
    images=("a.png",),
    turns=(("What color is the star?", "There is no star."), ("How many shapes are there?", "3")),
    images_per_turn=(1, 0),
)


def expected(pieces: list[tuple[list[int], bool]]) -> tuple[list[int], list[int]]:
    ids = [i for p, _ in pieces for i in p]
    labels = [i if loss else IGNORE for p, loss in pieces for i in p]
    return ids, labels


@pytest.mark.parametrize("template", ["mistral_instruct", "llava_v1"])
def test_loss_falls_on_the_answers_and_their_eos_only(mistral_tok, template):
    """Built independently with sentencepiece itself: the prompt split at <image> like the runtime does
    (each side its own dummy prefix), each answer tokenized as the text that follows the prompt, then
    </s>; loss exactly on the answers and their </s>."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_SPM))
    img = [IMAGE_ID] * N_IMAGE
    if template == "mistral_instruct":
        want = expected(
            [
                ([1, *sp.encode("[INST] "), *img, *sp.encode("\nWhat color is the star? [/INST]")], False),
                ([*sp.encode("There is no star. "), 2], True),  # " There is no star. </s>"
                (sp.encode("[INST] How many shapes are there? [/INST]"), False),
                ([*sp.encode("3 "), 2], True),
            ]
        )
    else:
        want = expected(
            [
                (
                    [
                        1,
                        *sp.encode(VICUNA + " USER: "),
                        *img,
                        *sp.encode("\nWhat color is the star? ASSISTANT:"),
                    ],
                    False,
                ),
                ([*sp.encode("There is no star."), 2], True),  # " There is no star.</s>"
                (sp.encode("USER: How many shapes are there? ASSISTANT:"), False),
                ([*sp.encode("3"), 2], True),
            ]
        )
    enc = ConversationEncoder(mistral_tok, template, IMAGE_ID, N_IMAGE)
    ids, labels = enc.encode(TWO_TURNS)
    assert ids == want[0]
    assert labels == want[1]
    answers = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert sum(label == 2 for label in labels) == 2
    assert mistral_tok.decode(answers[: answers.index(2)]).strip() == "There is no star."


def test_plain_format_is_image_then_caption(mistral_tok):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_SPM))
    sample = Sample("c", ("a.png",), (("Describe the image briefly.", "A red circle in the center."),), (1,))
    ids, labels = ConversationEncoder(mistral_tok, PLAIN, IMAGE_ID, N_IMAGE).encode(sample)
    caption = [*sp.encode("A red circle in the center."), 2]
    assert ids == [1, *[IMAGE_ID] * N_IMAGE, *caption]
    assert labels == [IGNORE] * (1 + N_IMAGE) + caption


def test_long_conversations_lose_whole_turns(mistral_tok):
    enc = ConversationEncoder(mistral_tok, "mistral_instruct", IMAGE_ID, N_IMAGE)
    ids, labels = enc.encode(TWO_TURNS)
    first_end = labels.index(2) + 1
    assert enc.trim(ids, labels, len(ids) - 1) == (ids[:first_end], labels[:first_end])
    assert enc.trim(ids, labels, first_end - 1) == ([], [])


def test_trimmed_turns_take_their_images_with_them(mistral_tok, data):
    from llava_edge.convert.data import LlavaDataset
    from llava_edge.preprocess import PreprocessConfig

    a, b = (str(data / "images" / f"train_00000{i}.png") for i in (0, 1))
    sample = Sample("two", (a, b), (("What is this?", "a circle"), ("And this?", "a star")), (1, 1))
    enc = ConversationEncoder(mistral_tok, "mistral_instruct", IMAGE_ID, N_IMAGE)
    full = len(enc.encode(sample)[0])
    cfg = PreprocessConfig(image_size=28, patch_size=14)
    whole = LlavaDataset([sample], enc, cfg, full)[0]
    assert whole["pixel_values"].shape == (2, 3, 28, 28)
    cut = LlavaDataset([sample], enc, cfg, full - 1)[0]
    assert (cut["input_ids"] == IMAGE_ID).sum() == N_IMAGE and cut["pixel_values"].shape == (1, 3, 28, 28)
    assert cut["labels"][-1] == 2 and len(cut["input_ids"]) < full
    assert len(LlavaDataset([sample], enc, cfg, 2 * N_IMAGE)) == 0  # not even one answer fits: dropped


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"image": "a.png"}, "conversations"),
        (
            {"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
            "from: expected 'human'",
        ),
        (
            {
                "image": "a.png",
                "conversations": [
                    {"from": "human", "value": "<image>\n<image>\nq"},
                    {"from": "gpt", "value": "a"},
                ],
            },
            "2 <image> placeholders but 1",
        ),
        (
            {
                "image": "/etc/passwd",
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            },
            "relative path",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image>"}]},
            "may not contain",
        ),
        ({"conversations": [{"from": "human", "value": "q"}]}, "no answer"),
    ],
)
def test_bad_training_json_is_refused_with_its_place(tmp_path, entry, problem):
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps([good, entry]))
    with pytest.raises(ConvertError, match=rf"d\.json\[1\].*{problem}"):
        load_samples(path)
    path.write_text("{not json")
    with pytest.raises(ConvertError, match="not valid JSON"):
        load_samples(path)


# -- schedule and data order ---------------------------------------------------------------------------


def test_cli_train_exits_with_the_trainers_status(root, tiny_config):
    """`llava-edge train` passes on the trainer's refusal as exit status 1 (not 0 after an error line)."""
    from click.testing import CliRunner

    from llava_edge.cli import main as cli_main

    missing = root / "no-such-data.json"
    args = ["train", "--config", str(tiny_config), "--data", str(missing), "--out", str(root / "refused")]
    result = CliRunner().invoke(cli_main, args)
    assert result.exit_code == 1, result.output
    assert "error:" in result.stderr and "no-such-data.json" in result.stderr


def test_learning_rate_warms_up_then_follows_a_cosine():
    lrs = [lr_at(s, 1.0, 100, 10, 0.1) for s in range(100)]
    assert lrs[:3] == [0.1, 0.2, 0.3] and lrs[9] == 1.0
    assert lrs[10] == 1.0 and all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert math.isclose(lr_at(55, 1.0, 100, 10, 0.1), 0.55)  # half way: the middle of the range
    assert math.isclose(lr_at(100, 1.0, 100, 10, 0.1), 0.1)


def test_processes_split_each_global_batch_of_a_seeded_stream():
    one = DataPlan(n=10, seed=3, micro=2, accum=4, world=1)
    two = DataPlan(n=10, seed=3, micro=2, accum=2, world=2)
    for step in range(4):
        # the same micro-batches: one process's a-th is (a // 2)-th accumulation of process a % 2
        assert [one.indices(step, a, 0) for a in range(4)] == [
            two.indices(step, a // 2, a % 2) for a in range(4)
        ]
    stream = [i for step in range(5) for a in range(4) for i in one.indices(step, a, 0)]
    assert [sorted(stream[e * 10 : (e + 1) * 10]) for e in range(4)] == [
        list(range(10))
    ] * 4  # each epoch once
    assert stream[:10] != stream[10:20]  # reshuffled per epoch
    assert stream == [i for step in range(5) for a in range(4) for i in one.indices(step, a, 0)]


# -- runs ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_data(data) -> Path:
    """The training set with half of it text-only: some micro-batches then carry no image at all."""
    samples = json.loads((data / "train.json").read_text())
    text = [s for s in samples if "image" not in s]
    path = data / "mixed.json"
    path.write_text(json.dumps(samples + text * 23))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "parallel, options",
    [
        ("ddp", []),  # full finetune
        (
            "fsdp",
            ["--lora", "--lora-r", "4", "--lora-dropout", "0", "--train-vision", "--length-groups", "2"],
        ),  # mixed frozen/trained; 2 forwards per micro-batch, the same number on every process
    ],
)
def test_two_processes_equal_one_with_the_same_global_batch(
    root, mixed_data, tiny_config, one_thread, parallel, options
):
    """torchrun with 2 gloo processes (micro-batch 2, no accumulation) vs 1 process accumulating 2
    micro-batches: the same losses step by step and the same final weights."""
    plan = DataPlan(len(load_samples(mixed_data)), seed=0, micro=2, accum=2, world=1)
    samples = load_samples(mixed_data)
    assert any(
        not any(samples[i].images for i in plan.indices(step, a, 0)) for step in range(5) for a in range(2)
    ), "no micro-batch without images: the test would not cover them"
    common = ["--config", tiny_config, "--data", mixed_data, "--steps", 5, "--micro-batch", 2, *options]
    common += ["--lr", 3e-3, "--export-type", "none", "--workers", 0, "--threads", 1]
    common = [str(x) for x in common]
    two, one = root / f"{parallel}-2", root / f"{parallel}-1"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "llava_edge.convert.train", *common, "--out", str(two), "--grad-accum", "1"]
    cmd += ["--parallel", parallel]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([*common, "--out", str(one), "--grad-accum", "2"]) == 0

    log2, log1 = steps_logged(two), steps_logged(one)
    assert [e["step"] for e in log2] == [e["step"] for e in log1] == [1, 2, 3, 4, 5]
    for a, b in zip(log2, log1, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(b["loss"])
    assert log2[-1]["loss"] < log2[0]["loss"]
    assert_same_weights(two, one, 1e-5)
    init = load_file(one / "init" / "model.safetensors")
    final = load_file(one / "model" / "model.safetensors")
    changed = {k.split(".")[0] for k in init if not torch.equal(init[k], final[k])}
    assert changed == {"multi_modal_projector", "language_model", "vision_tower"} - (
        set() if options else {"vision_tower"}
    )


def test_length_groups_pad_each_group_to_its_own_longest():
    lengths = [7, 3, 12, 5, 9]
    batch = [
        {"input_ids": np.arange(1, n + 1), "labels": np.arange(1, n + 1), "pixel_values": np.zeros((0, 3))}
        for n in lengths
    ]
    parts = collate_parts(batch, pad_id=0, parts=3)
    assert [p["attention_mask"].sum(1).tolist() for p in parts] == [[3, 5], [7], [9, 12]]
    assert [p["input_ids"].shape[1] for p in parts] == [5, 7, 12]
    # right padding: the longest of each group ends with its own last token, the shorter ones with padding
    assert [p["input_ids"][-1, -1].item() for p in parts] == [5, 7, 12]
    assert parts[0]["input_ids"][0].tolist() == [1, 2, 3, 0, 0]
    assert [len(p) for p in collate_parts(batch, 0, 9)] == [4] * 5  # never more groups than samples


@pytest.mark.slow
def test_length_groups_give_the_same_run(root, mixed_data, tiny_config, one_thread):
    """--length-groups 3: each micro-batch of 5 runs as 3 forwards of length-sorted samples padded only to
    their own longest (some of them text-only); the losses and weights are those of one forward each."""
    samples = load_samples(mixed_data)
    plan = DataPlan(len(samples), seed=0, micro=5, accum=1, world=1)
    lengths = [sum(len(q) + len(a) for q, a in samples[i].turns) for i in plan.indices(0, 0, 0)]
    assert len(set(lengths)) > 1, "one length in the first batch: the sorting would not be tested"
    common = ["--config", tiny_config, "--data", mixed_data, "--steps", 4, "--micro-batch", 5]
    common += ["--lr", 3e-3, "--export-type", "none"]
    run(*common, "--out", root / "groups-1")
    run(*common, "--out", root / "groups-3", "--length-groups", 3)
    one, three = steps_logged(root / "groups-1"), steps_logged(root / "groups-3")
    assert [e["step"] for e in three] == [1, 2, 3, 4]
    for a, b in zip(three, one, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(b["loss"])
    # other matrix shapes, other rounding, which Adam's 1/sqrt(v) amplifies where gradients are tiny:
    # 2e-5 of the largest weight seen; a lost or misaligned sample moves the losses above by percents
    assert_same_weights(root / "groups-3", root / "groups-1", 1e-4)


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(root, data, tiny_config, one_thread, capsys):
    """LoRA with dropout, so that the RNG state matters too; stopped after step 3 of 6, then resumed."""
    common = ["--config", tiny_config, "--data", data / "train.json", "--steps", 6, "--micro-batch", 2]
    common += ["--grad-accum", 2, "--lr", 3e-3, "--lora", "--lora-r", 4, "--lora-dropout", 0.2]
    common += ["--export-type", "none"]
    run(*common, "--out", root / "whole")
    run(*common, "--out", root / "parts", "--stop-after", 3)
    assert not (root / "parts" / "model").exists()
    capsys.readouterr()
    assert main([*map(str, common), "--out", str(root / "parts"), "--workers", "0"]) == 1
    assert "has checkpoints (step-00000003); pass --resume" in capsys.readouterr().err
    assert (
        main([*map(str, common), "--out", str(root / "parts"), "--resume", "--lr", "1e-3", "--workers", "0"])
        == 1
    )
    assert "cannot resume with different settings (lr: 0.003 -> 0.001)" in capsys.readouterr().err
    run(*common, "--out", root / "parts", "--resume")

    whole, parts = steps_logged(root / "whole"), steps_logged(root / "parts")
    assert [e["step"] for e in parts] == [1, 2, 3, 4, 5, 6]
    assert [e["loss"] for e in parts] == [e["loss"] for e in whole]
    assert_same_weights(root / "parts", root / "whole", 1e-6)


@pytest.mark.slow
def test_ctrl_c_saves_the_step_under_way_and_resumes_exactly(root, data, tiny_config, one_thread):
    """Ctrl-C (SIGINT to the whole process group, DataLoader worker included) in the middle of a run: it
    stops after the step under way with status 130 and a checkpoint of that step, and --resume finishes
    with the losses and weights of a run that was never interrupted."""
    common = ["--config", tiny_config, "--data", data / "train.json", "--steps", 300, "--micro-batch", 1]
    common += ["--lr", 1e-3, "--export-type", "none", "--threads", 1]
    common = [str(x) for x in common]
    out = root / "interrupted"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "llava_edge.convert.train", *common, "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not ((out / "log.jsonl").is_file() and len(steps_logged(out)) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    k = len(steps_logged(out))
    assert 3 <= k < 300
    assert f"interrupted after step {k} of 300" in err and "--resume" in err
    assert [p.name for p in _checkpoint_dirs(out)][-1] == f"step-{k:08d}"
    assert not (out / "model").exists()

    run(*common, "--out", root / "never-interrupted")
    run(*common, "--out", out, "--resume")
    whole, parts = steps_logged(root / "never-interrupted"), steps_logged(out)
    assert [e["step"] for e in parts] == list(range(1, 301))
    assert [e["loss"] for e in parts] == [e["loss"] for e in whole]
    assert_same_weights(out, root / "never-interrupted", 1e-6)


def test_pretraining_changes_only_the_projector(root, data, tiny_config, one_thread):
    run(
        "--config",
        tiny_config,
        "--data",
        data / "pretrain.json",
        "--out",
        root / "pre",
        "--stage",
        "pretrain",
        "--eval-data",
        data / "eval.json",
        "--questions",
        data / "questions.json",
        "--questions-limit",
        3,
        "--export-type",
        "none",
    )
    log = [json.loads(line) for line in (root / "pre" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3]  # 24 captions, 8 a step
    assert "eval_loss" in log[-2] and math.isfinite(log[-2]["eval_loss"])
    assert log[-1]["accuracy"]["all"] == 0.0  # three steps of projector pretraining answer nothing right
    init = load_file(root / "pre" / "init" / "model.safetensors")
    final = load_file(root / "pre" / "model" / "model.safetensors")
    changed = {k for k in init if not torch.equal(init[k], final[k])}
    assert changed == {f"multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert not (root / "pre" / "bundle").exists()


def test_new_model_tokenizes_prompts_like_its_transformers_processor(root, data, tiny_config, one_thread):
    """A model made from --config carries a LlavaProcessor whose input ids (the <image> run included) are
    the ones training feeds, for the first turn of each template's prompt."""
    from PIL import Image
    from transformers import AutoProcessor

    from llava_edge.chat import TEMPLATES
    from llava_edge.convert.train_model import create_model, image_token_count, load_llava

    init = create_model(TINY_CONFIG, root / "new", ["How many shapes are there?"] * 50, seed=0)
    config = load_llava(init).config
    tok = runtime_tokenizer(init, config.text_config.vocab_size)
    processor = AutoProcessor.from_pretrained(init)
    img = Image.open(data / "images" / "train_000003.png")
    for name, template in TEMPLATES.items():
        enc = ConversationEncoder(tok, name, config.image_token_id, image_token_count(config))
        text = template.turn("How many red shapes are there?", 1, True)
        want = processor(text=text, images=img, return_tensors="np")["input_ids"][0].tolist()
        assert enc.prompt("How many red shapes are there?") == want
        assert want.count(config.image_token_id) == 4


@pytest.mark.slow
def test_merged_lora_finetune_runs_the_same_in_the_runtime(root, data, one_thread):
    """A LoRA finetune of a tiny llava-hf checkpoint, merged and exported (f32): our runtime's logits for a
    question about a picture equal the merged torch model's at every position, and differ from the base
    model's (the adapters learned something)."""
    from tiny_llava import save_tiny_llava

    from llava_edge.chat import TEMPLATES
    from llava_edge.convert.train_model import image_token_count, load_llava, model_preprocess_config
    from llava_edge.image import load_image
    from llava_edge.llava import LlavaModel
    from llava_edge.preprocess import preprocess

    base_dir = save_tiny_llava(root / "tiny-hf", "v1.5", "hf", seed=3)
    out = root / "lora"
    run(
        "--model",
        base_dir,
        "--data",
        data / "train.json",
        "--out",
        out,
        "--steps",
        3,
        "--micro-batch",
        2,
        "--lr",
        1e-2,
        "--lora",
        "--lora-r",
        4,
        "--lora-alpha",
        8,
        "--lora-dropout",
        0,
        "--export-type",
        "f32",
    )
    question, image = "What shape is in the center?", data / "images" / "heldout_000001.png"

    ours = LlavaModel.load(out / "bundle")
    pieces = ours.tokenize(TEMPLATES[ours.template].turn(question, 1, True), add_bos=True)
    cache = ours.decoder.make_cache(kv_type="f32")
    got = ours.decoder(cache=cache, input_embeddings=ours.embed_prompt(pieces, [image]), all_logits=True)

    merged = load_llava(out / "model").eval()
    assert not any("lora" in k for k in merged.state_dict())
    tok = runtime_tokenizer(out / "model", merged.config.text_config.vocab_size)
    ids = ConversationEncoder(tok, ours.template, IMAGE_ID, image_token_count(merged.config)).prompt(question)
    pixels = torch.from_numpy(
        preprocess(load_image(image), model_preprocess_config(out / "model", merged.config))
    )
    with torch.no_grad():
        want = merged(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0].numpy()
        before = (
            load_llava(base_dir).eval()(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0].numpy()
        )
    scale = np.abs(want).max()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * scale
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert np.abs(before - want).max() > 0.05 * scale

    # the accuracy measured during training is that of the runtime: the same greedy answers
    questions = [
        {"image": "images/heldout_000001.png", "question": question},
        {"image": "images/heldout_000002.png", "question": "How many shapes are there?"},
    ]
    pp = model_preprocess_config(out / "model", merged.config)
    enc = ConversationEncoder(tok, ours.template, IMAGE_ID, image_token_count(merged.config))
    answers = answer_questions(merged, enc, pp, questions, data, "cpu", max_new_tokens=6)
    for q, answer in zip(questions, answers, strict=True):
        session = ours.chat(kv_type="f32")
        assert (
            "".join(r.text for r in session.ask(q["question"], images=[data / q["image"]], max_tokens=6))
            == answer
        )
