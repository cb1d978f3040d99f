"""`export_llava`: every LLaVA layout becomes a bundle whose GGUF and ONNX mean what the transformers model
means: same weights, same vision features, the right llava.* facts; unsafe or incomplete input is refused."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

from tiny_llava import (  # noqa: E402
    CLIP_L_336,
    HF_VOCAB,
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    SPM_VOCAB,
    V16_PINPOINTS,
    load_reference_llava,
    save_tiny_llava,
)

from llava_edge.bundle import LlavaMeta  # noqa: E402
from llava_edge.convert.llava_export import export_llava, plan_llava, preprocess_config  # noqa: E402
from llava_edge.errors import ConvertError  # noqa: E402
from llava_edge.ggml_types import GGMLType  # noqa: E402
from llava_edge.gguf_file import GGUFFile, GGUFValueType  # noqa: E402
from llava_edge.preprocess import CLIP_MEAN, CLIP_STD, PreprocessConfig  # noqa: E402
from llava_edge.vision_tower import VisionTower, file_sha256  # noqa: E402

CASES = [
    ("v1.5", "hf"),
    ("v1.5", "hf_old"),
    ("v1.5", "original"),
    ("v1.6", "hf"),
    ("v1.6", "hf_old"),
    ("v1.6", "hf_state"),
    ("v1.6", "original"),
]
IDS = [f"{k}-{lay}" for k, lay in CASES]
N_HEADS, N_KV_HEADS = 4, 2
CONTROL = 3


@dataclass
class Converted:
    src: Path
    out: Path
    ref: object  # the transformers model
    meta: dict
    types: dict  # GGUF value types
    tensors: dict[str, np.ndarray]  # F32 / F16 tensors, copied out
    ggml: dict[str, GGMLType]


def read_gguf(path: Path) -> tuple[dict, dict, dict, dict]:
    with GGUFFile.open(path) as g:
        tensors = {}
        for name, info in g.tensors.items():
            if info.type in (GGMLType.F32, GGMLType.F16):
                tensors[name] = np.array(g.array(name), dtype=np.float32)
        return dict(g.metadata), dict(g.value_types), tensors, {n: i.type for n, i in g.tensors.items()}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llava")


@pytest.fixture(scope="module")
def converted(root):
    """(kind, layout, file_type) -> Converted, built on first use."""
    cache: dict = {}

    def get(kind: str, layout: str, file_type: str = "f32") -> Converted:
        key = (kind, layout, file_type)
        if key not in cache:
            src = root / f"{kind}-{layout}"
            if not src.is_dir():
                save_tiny_llava(src, kind, layout)
            out = export_llava(src, root / f"{kind}-{layout}-{file_type}", file_type, progress=False)
            cache[key] = Converted(src, out, load_reference_llava(src), *read_gguf(out / "model.gguf"))
        return cache[key]

    return get


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's interleaved Q/K rows back to the Hugging Face rotate-half order."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def hf_state(ref) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in ref.state_dict().items()}


@pytest.mark.parametrize(("kind", "layout"), CASES, ids=IDS)
def test_llava_metadata(converted, kind, layout):
    c = converted(kind, layout)
    m, hf = c.meta, layout != "original"
    size = 56 if kind == "v1.5" else 28
    assert m["general.architecture"] == "llama"
    assert m["llava.projector_type"] == "mlp2x_gelu"
    assert m["llava.vision_onnx"] == "vision.onnx"
    assert m["llava.vision_onnx_sha256"] == file_sha256(c.out / "vision.onnx")
    assert m["llava.vision_width"] == 32
    assert m["llava.vision_tokens"] == (size // 14) ** 2
    assert m["llava.select_layer"] == -2
    assert m["llava.image_token_id"] == (IMAGE_TOKEN_ID if hf else -1)
    assert m["llava.chat_template"] == "mistral_instruct"
    assert m["llava.image_size"] == size and m["llava.patch_size"] == 14
    np.testing.assert_allclose(m["llava.image_mean"], CLIP_MEAN, rtol=1e-6)
    np.testing.assert_allclose(m["llava.image_std"], CLIP_STD, rtol=1e-6)
    assert m["llava.aspect_mode"] == ("pad" if kind == "v1.5" else "anyres")
    if kind == "v1.6":
        # original LLaVA lists (width, height) pairs; the bundle stores (height, width)
        pairs = V16_PINPOINTS if hf else [[h, w] for w, h in V16_PINPOINTS]
        assert m["llava.grid_pinpoints"].tolist() == [x for p in pairs for x in p]
    else:
        assert "llava.grid_pinpoints" not in m
    assert c.types["llava.select_layer"] == (GGUFValueType.INT32,)
    assert c.types["llava.image_token_id"] == (GGUFValueType.INT32,)
    assert c.types["llava.vision_tokens"] == (GGUFValueType.UINT32,)
    assert m["llama.vocab_size"] == (HF_VOCAB if hf else SPM_VOCAB)
    assert m["llama.attention.sliding_window"] == 8
    assert m["llama.block_count"] == 2 and m["llama.embedding_length"] == 64
    # the runtime's own readers accept what was written
    LlavaMeta.from_gguf_metadata(m)
    cfg = PreprocessConfig.from_gguf_metadata(m)
    assert cfg.image_size == size and cfg.aspect_mode == m["llava.aspect_mode"]


@pytest.mark.parametrize(("kind", "layout"), CASES, ids=IDS)
def test_decoder_tensors_equal_transformers(converted, kind, layout):
    c = converted(kind, layout)
    hf = hf_state(c.ref)
    p = "model.language_model."
    expect = {
        "token_embd.weight": hf[f"{p}embed_tokens.weight"],
        "output_norm.weight": hf[f"{p}norm.weight"],
        "output.weight": hf["lm_head.weight"],
    }
    for i in range(2):
        q = f"{p}layers.{i}."
        expect |= {
            f"blk.{i}.attn_norm.weight": hf[f"{q}input_layernorm.weight"],
            f"blk.{i}.attn_v.weight": hf[f"{q}self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": hf[f"{q}self_attn.o_proj.weight"],
            f"blk.{i}.ffn_norm.weight": hf[f"{q}post_attention_layernorm.weight"],
            f"blk.{i}.ffn_gate.weight": hf[f"{q}mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": hf[f"{q}mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": hf[f"{q}mlp.down_proj.weight"],
        }
        np.testing.assert_array_equal(
            unpermute(c.tensors[f"blk.{i}.attn_q.weight"], N_HEADS), hf[f"{q}self_attn.q_proj.weight"]
        )
        np.testing.assert_array_equal(
            unpermute(c.tensors[f"blk.{i}.attn_k.weight"], N_KV_HEADS), hf[f"{q}self_attn.k_proj.weight"]
        )
        # the permutation really moved rows (a converter that skipped it would fail above, not pass here)
        assert not np.array_equal(c.tensors[f"blk.{i}.attn_q.weight"], hf[f"{q}self_attn.q_proj.weight"])
    for name, want in expect.items():
        np.testing.assert_array_equal(c.tensors[name], want, err_msg=name)
    decoder = {n for n in c.ggml if not n.startswith(("mm.", "v."))}
    assert decoder == set(expect) | {f"blk.{i}.attn_{x}.weight" for i in range(2) for x in "qk"}


@pytest.mark.parametrize(("kind", "layout"), CASES, ids=IDS)
def test_projector_and_newline_equal_transformers(converted, kind, layout):
    c = converted(kind, layout)
    hf = hf_state(c.ref)
    for gguf, name in {"mm.0": "linear_1", "mm.2": "linear_2"}.items():
        for part in ("weight", "bias"):
            want = hf[f"model.multi_modal_projector.{name}.{part}"]
            np.testing.assert_array_equal(c.tensors[f"{gguf}.{part}"], want, err_msg=f"{gguf}.{part}")
            assert c.ggml[f"{gguf}.{part}"] == GGMLType.F32
    assert c.tensors["mm.0.weight"].shape == (64, 32)
    if kind == "v1.6":
        np.testing.assert_array_equal(c.tensors["v.image_newline"], hf["model.image_newline"])
        assert c.ggml["v.image_newline"] == GGMLType.F32
    else:
        assert "v.image_newline" not in c.ggml


@pytest.mark.parametrize(("kind", "layout"), CASES, ids=IDS)
def test_vision_onnx_equals_transformers_features(converted, kind, layout):
    c = converted(kind, layout)
    tower = VisionTower(
        c.out / "vision.onnx",
        threads=1,
        expected_sha256=c.meta["llava.vision_onnx_sha256"],
        sha256_source=c.out / "model.gguf",
    )
    size = c.meta["llava.image_size"]
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        hidden = c.ref.model.vision_tower(x, output_hidden_states=True).hidden_states
    want = hidden[-2][:, 1:].numpy()
    got = tower.encode(x.numpy())
    assert got.shape == (3, c.meta["llava.vision_tokens"], c.meta["llava.vision_width"])
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-5 * scale
    # the layers are not near-identity, so exporting the wrong one could not pass the check above
    assert np.abs(hidden[-1][:, 1:].numpy() - want).max() > 0.1 * scale


@pytest.mark.parametrize(("kind", "layout"), CASES, ids=IDS)
def test_tokenizer_has_llava_tokens(converted, kind, layout):
    c = converted(kind, layout)
    tokens = c.meta["tokenizer.ggml.tokens"]
    types = c.meta["tokenizer.ggml.token_type"]
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[22557] == "▁Hello"
    if layout == "original":
        assert len(tokens) == SPM_VOCAB and "<image>" not in tokens
        return
    assert len(tokens) == HF_VOCAB
    assert tokens[IMAGE_TOKEN_ID] == "<image>" and tokens[PAD_TOKEN_ID] == "<pad>"
    assert types[IMAGE_TOKEN_ID] == CONTROL
    assert c.meta["tokenizer.ggml.padding_token_id"] == PAD_TOKEN_ID
    assert tokens[PAD_TOKEN_ID + 1].startswith("[PAD")


def test_quantized_file_keeps_projector_f16(converted):
    c = converted("v1.6", "hf", "q8_0")
    f32 = converted("v1.6", "hf")
    assert c.meta["general.file_type"] == 7
    assert c.ggml["blk.0.attn_q.weight"] == GGMLType.Q8_0 and c.ggml["blk.0.attn_norm.weight"] == GGMLType.F32
    for name in ("mm.0.weight", "mm.2.weight"):
        assert c.ggml[name] == GGMLType.F16
        np.testing.assert_allclose(c.tensors[name], f32.tensors[name], rtol=1e-3, atol=1e-6)
    for name in ("mm.0.bias", "mm.2.bias", "v.image_newline"):
        assert c.ggml[name] == GGMLType.F32
        np.testing.assert_array_equal(c.tensors[name], f32.tensors[name])
    assert c.meta["llava.vision_onnx_sha256"] == file_sha256(c.out / "vision.onnx")


def copy_checkpoint(src: Path, dst: Path, *, drop=(), config: dict | None = None) -> Path:
    """A copy of a tiny checkpoint without the tensors in `drop` and with config fields overridden."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if drop:
        state = load_file(dst / "model.safetensors")
        save_file({k: v for k, v in state.items() if k not in drop}, dst / "model.safetensors")
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        for key, value in config.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def sources(root):
    """Unconverted tiny checkpoints for the refusal tests, made on first use."""

    def get(kind: str, layout: str, **kwargs) -> Path:
        suffix = "-".join(f"{k}={Path(str(v)).name}" for k, v in kwargs.items())
        src = root / f"src-{kind}-{layout}-{suffix}"
        if not src.is_dir():
            save_tiny_llava(src, kind, layout, **kwargs)
        return src

    return get


def test_pickle_only_checkpoint_refused_without_opt_in(sources, tmp_path):
    from safetensors.torch import load_file

    src = copy_checkpoint(sources("v1.5", "hf"), tmp_path / "bin")
    torch.save(load_file(src / "model.safetensors"), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    with pytest.raises(ConvertError, match="pickle") as e:
        export_llava(src, tmp_path / "out", "f32", progress=False)
    assert "pytorch_model.bin" in str(e.value)
    assert not (tmp_path / "out").exists()
    plan = plan_llava(src, trust_pickle=True)  # opting in loads it (weights_only)
    assert (
        plan.layout == "llava-hf" and plan.projector["mm.2.weight"] == "multi_modal_projector.linear_2.weight"
    )


@pytest.mark.parametrize(
    ("layout", "missing"),
    [
        ("hf", "multi_modal_projector.linear_2.weight"),
        ("original", "model.mm_projector.0.bias"),
        ("hf", "language_model.model.layers.1.mlp.up_proj.weight"),
    ],
)
def test_missing_tensor_refused_before_anything_is_written(sources, tmp_path, layout, missing):
    src = copy_checkpoint(sources("v1.5", layout), tmp_path / "ckpt", drop=[missing])
    with pytest.raises(ConvertError, match=missing.replace(".", r"\.")):
        export_llava(src, tmp_path / "out", "f32", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_image_newline_refused(sources, tmp_path):
    src = copy_checkpoint(sources("v1.6", "hf"), tmp_path / "ckpt", drop=["image_newline"])
    with pytest.raises(ConvertError, match="image_newline"):
        plan_llava(src)


def test_original_without_tower_needs_a_tower_folder(sources, root, tmp_path):
    clip = root / "clip-tower"
    src = sources("v1.5", "original", tower_dir=clip)  # tower saved apart, named by a local path
    stock = copy_checkpoint(src, tmp_path / "stock", config={"mm_vision_tower": CLIP_L_336})
    with pytest.raises(ConvertError, match="vision_tower_dir") as e:
        export_llava(stock, tmp_path / "out", "f32", progress=False)
    assert "model.vision_tower.vision_tower.vision_model." in str(e.value)

    out = export_llava(stock, tmp_path / "out", "f32", vision_tower_dir=clip, progress=False)
    meta, _, tensors, _ = read_gguf(out / "model.gguf")
    ref = load_reference_llava(src, vision_tower_dir=clip)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref.model.vision_tower(x, output_hidden_states=True).hidden_states[-2][:, 1:].numpy()
    got = VisionTower(out / "vision.onnx", expected_sha256=meta["llava.vision_onnx_sha256"]).encode(x.numpy())
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    np.testing.assert_array_equal(
        tensors["mm.0.weight"], hf_state(ref)["model.multi_modal_projector.linear_1.weight"]
    )
    # the local folder named by mm_vision_tower is found without being told
    assert plan_llava(src).tower_ckpt.dir == clip


def test_original_config_naming_clip_l_uses_its_shape(sources, tmp_path):
    """With only `mm_vision_tower` = the stock CLIP-L/336 name, the tower is CLIP-L (width 1024): our tiny
    projector (input width 32) then cannot belong to it, and the error says so."""
    src = copy_checkpoint(
        sources("v1.6", "original"),
        tmp_path / "ckpt",
        config={"vision_config": None, "mm_vision_tower": CLIP_L_336},
    )
    with pytest.raises(ConvertError, match=r"expected \[64, 1024\]"):
        plan_llava(src)


def test_chat_template_follows_the_decoder(sources):
    assert plan_llava(sources("v1.5", "hf")).chat_template == "mistral_instruct"
    assert plan_llava(sources("v1.5", "hf", text_arch="llama")).chat_template == "llava_v1"
    assert plan_llava(sources("v1.5", "original", text_arch="llama")).chat_template == "llava_v1"


def test_select_strategy_and_layer(sources, tmp_path):
    full = copy_checkpoint(
        sources("v1.5", "hf"), tmp_path / "full", config={"vision_feature_select_strategy": "full"}
    )
    assert plan_llava(full).drop_cls is False
    assert plan_llava(sources("v1.5", "hf")).drop_cls is True
    v16 = copy_checkpoint(
        sources("v1.6", "hf"), tmp_path / "v16", config={"vision_feature_select_strategy": "full"}
    )
    with pytest.raises(ConvertError, match="vision_feature_select_strategy 'full'"):
        plan_llava(v16)
    deep = copy_checkpoint(sources("v1.5", "hf"), tmp_path / "deep", config={"vision_feature_layer": 4})
    with pytest.raises(ConvertError, match="vision_feature_layer 4 is out of range"):
        plan_llava(deep)
    orig = copy_checkpoint(
        sources("v1.5", "original"), tmp_path / "orig", config={"mm_vision_select_layer": -1}
    )
    plan = plan_llava(orig)
    assert (plan.select_layer, plan.n_tower_layers) == (-1, 3)


def test_preprocessor_config_is_read_and_checked(tmp_path):
    proc = {
        "crop_size": {"height": 56, "width": 56},
        "size": {"shortest_edge": 56},
        "image_mean": [0.5, 0.25, 0.125],
        "image_std": [0.2, 0.3, 0.4],
        "resample": 3,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(proc))
    cfg = preprocess_config([tmp_path], 56, 14, "pad", [])
    assert cfg.mean == (0.5, 0.25, 0.125) and cfg.std == (0.2, 0.3, 0.4) and cfg.aspect_mode == "pad"
    assert preprocess_config([tmp_path / "none"], 56, 14, "pad", []).mean == CLIP_MEAN
    # transformers 5 nests the image processor in processor_config.json
    v5 = tmp_path / "v5"
    v5.mkdir()
    (v5 / "processor_config.json").write_text(
        json.dumps({"image_processor": {**proc, "image_mean": [0.1] * 3}})
    )
    assert preprocess_config([tmp_path / "none", v5], 56, 14, "pad", []).mean == (0.1, 0.1, 0.1)

    with pytest.raises(ConvertError, match=r"preprocessor_config\.json: crop_size"):
        preprocess_config([tmp_path], 28, 14, "pad", [])
    proc["image_grid_pinpoints"] = [[56, 112], [112, 56]]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(proc))
    assert preprocess_config([tmp_path], 56, 14, "anyres", [(56, 112), (112, 56)]).grid_pinpoints == (
        (56, 112),
        (112, 56),
    )
    with pytest.raises(ConvertError, match="image_grid_pinpoints"):
        preprocess_config([tmp_path], 56, 14, "anyres", [(112, 56), (56, 112)])


def test_unknown_architecture_and_type_refused(sources, tmp_path):
    other = copy_checkpoint(sources("v1.5", "hf"), tmp_path / "x", config={"architectures": ["Qwen2VLModel"]})
    with pytest.raises(ConvertError, match=r"config\.json: architectures \['Qwen2VLModel'\]"):
        plan_llava(other)
    with pytest.raises(ConvertError, match="unknown --type"):
        export_llava(sources("v1.5", "hf"), tmp_path / "out", "q3_k", progress=False)


def test_int8_tower_via_the_cli_keeps_the_features(converted, root):
    """`convert --vision-precision int8`: the bundle names vision-int8.onnx (its hash recorded, the fp32
    file gone), and its features stay close to the fp32 tower's."""
    from click.testing import CliRunner

    from llava_edge.cli import main
    from llava_edge.vision_int8 import feature_cosine

    c = converted("v1.5", "hf")
    out = root / "v1.5-hf-int8"
    result = CliRunner().invoke(
        main, ["convert", str(c.src), str(out), "--type", "f32", "--vision-precision", "int8"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["model.gguf", "vision-int8.onnx"]
    meta, _, _, _ = read_gguf(out / "model.gguf")
    assert meta["llava.vision_onnx"] == "vision-int8.onnx"
    assert meta["llava.vision_onnx_sha256"] == file_sha256(out / "vision-int8.onnx")
    pixels = np.random.default_rng(1).standard_normal((2, 3, 56, 56)).astype(np.float32)
    cos = feature_cosine(
        VisionTower(c.out / "vision.onnx").encode(pixels),
        VisionTower(out / "vision-int8.onnx").encode(pixels),
    )
    assert cos["min"] > 0.99, cos
    assert (out / "vision-int8.onnx").stat().st_size < (c.out / "vision.onnx").stat().st_size


def test_unknown_vision_precision_is_refused(converted, root):
    c = converted("v1.5", "hf")
    with pytest.raises(ConvertError, match="vision precision"):
        export_llava(c.src, root / "never", "f32", vision_precision="fp8", progress=False)
    assert not (root / "never").exists()
