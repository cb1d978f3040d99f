"""A llama.cpp mmproj, written by llama.cpp's own converter from a tiny LLaVA, rebuilt as ONNX (no torch)
gives transformers' layer -2 features; the cache is keyed by the file's hash; bad files are refused."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
onnx = pytest.importorskip("onnx")

from test_vision_tower import IMAGE, LAYERS, PATCH, WIDTH, hidden_state, pixels, rel_err, tiny_llava  # noqa: E402

from llava_edge.errors import ModelError  # noqa: E402
from llava_edge.gguf_file import GGUFFile  # noqa: E402
from llava_edge.mmproj_onnx import BUILD_VERSION, build_clip_onnx, cached_clip_onnx  # noqa: E402
from llava_edge.vision_tower import VisionTower, file_sha256  # noqa: E402

# transformers 5 flattened CLIPVisionModel (no `.vision_model`), which the legacy converter expects: the
# runner hands it a wrapper with that attribute, so the state-dict names come out as they do for real models.
RUNNER = """
import runpy, sys
from torch import nn
from transformers import CLIPVisionModel

class Wrapped(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.vision_model = getattr(inner, "vision_model", inner)

_load = CLIPVisionModel.from_pretrained
CLIPVisionModel.from_pretrained = lambda path, **kwargs: Wrapped(_load(path, **kwargs))
script, *args = sys.argv[1:]
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""

VARIANTS = {"f16_quick_gelu": ("quick_gelu", []), "f32_gelu": ("gelu", ["--use-f32"])}


def converter_script(src: Path) -> Path:
    for rel in ("tools/mtmd/legacy-models", "examples/llava"):
        script = src / rel / "convert_image_encoder_to_gguf.py"
        if script.is_file():
            return script
    pytest.fail(f"no convert_image_encoder_to_gguf.py in {src}")


def as_converter_stores(tower, f16: bool):
    """The tower with each weight rounded as the converter writes it: conv always F16, 2-D weights F16
    unless --use-f32, the rest F32."""
    tower = copy.deepcopy(tower)
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if p.ndim == 4 or (f16 and p.ndim == 2 and name.endswith(".weight")):
                p.copy_(p.half().float())
    return tower


@pytest.fixture(scope="module")
def mmprojs(tmp_path_factory, llama_cpp_src):
    """variant -> (mmproj path, the transformers tower rounded as stored). Both converters run at once."""
    root = tmp_path_factory.mktemp("mmproj")
    (root / "runner.py").write_text(RUNNER)
    env = dict(os.environ, PYTHONPATH=str(llama_cpp_src / "gguf-py"))
    script = converter_script(llama_cpp_src)
    jobs, out = [], {}
    for seed, (variant, (act, flags)) in enumerate(VARIANTS.items()):
        model = tiny_llava(act, seed=seed)
        tower = model.model.vision_tower
        tower.save_pretrained(root / variant / "tower")
        projector = model.model.multi_modal_projector.state_dict()
        torch.save(
            {f"multi_modal_projector.{k}": v for k, v in projector.items()}, root / variant / "proj.pt"
        )
        cmd = [sys.executable, str(root / "runner.py"), str(script), "-m", str(root / variant / "tower")]
        cmd += ["--clip-model-is-vision", "--llava-projector", str(root / variant / "proj.pt")]
        cmd += ["--output-dir", str(root / variant / "out"), *flags]
        jobs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        out[variant] = (root / variant / "out" / f"mmproj-model-{'f32' if flags else 'f16'}.gguf", tower)
    for job in jobs:
        log = job.communicate()[0].decode(errors="replace")
        assert job.returncode == 0, log[-3000:]
    return {
        v: (path, as_converter_stores(tower, f16=v.startswith("f16"))) for v, (path, tower) in out.items()
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_mmproj_tower_matches_transformers(mmprojs, variant, tmp_path):
    path, tower = mmprojs[variant]
    meta = build_clip_onnx(path, tmp_path / "clip.onnx")
    vision = VisionTower(tmp_path / "clip.onnx", threads=1, expected_sha256=meta["sha256"])
    for n in (1, 3):
        x = pixels(n, seed=10 + n)
        assert rel_err(vision.encode(x), hidden_state(tower, x, -2)[:, 1:]) <= 1e-4
    assert meta["n_layers"] == LAYERS - 1 and meta["select_layer"] == -2
    assert (meta["image_size"], meta["patch_size"], meta["width"]) == (IMAGE, PATCH, WIDTH)
    assert meta["n_tokens"] == (IMAGE // PATCH) ** 2 and meta["drop_cls"] is True
    assert meta["activation"] == VARIANTS[variant][0]
    assert meta["layer_norm_eps"] == 1e-5
    assert meta["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073], abs=1e-7)
    assert meta["sha256"] == file_sha256(tmp_path / "clip.onnx")
    assert meta["mmproj_sha256"] == file_sha256(path)
    # the initializers are streamed in as separate `graph` chunks: a plain protobuf reader merges them
    model = onnx.load(tmp_path / "clip.onnx")
    onnx.checker.check_model(model, full_check=True)
    names = {t.name for t in model.graph.initializer}
    assert {"patch_embd.weight", "class_embd_pos", "v.blk.1.fc2.weight_t"} <= names
    assert not any(n.startswith(f"v.blk.{LAYERS - 1}.") for n in names)


def test_converter_layout_facts(mmprojs):
    """What llama.cpp's converter writes, as the builder assumes it (fails if a new version changes it)."""
    path, _ = mmprojs["f16_quick_gelu"]
    with GGUFFile.open(path) as f:
        assert f.get("clip.vision.block_count") == LAYERS - 1  # last layer dropped
        assert "v.post_ln.weight" not in f.tensors
        # numpy order [out, in]: "ffn_down" is CLIP's fc1 (D -> FF), "ffn_up" its fc2 (FF -> D)
        assert f.tensors["v.blk.0.ffn_down.weight"].shape[::-1] == (2 * WIDTH, WIDTH)
        assert f.tensors["v.blk.0.ffn_up.weight"].shape[::-1] == (WIDTH, 2 * WIDTH)
        assert f.tensors["v.patch_embd.weight"].shape[::-1] == (WIDTH, 3, PATCH, PATCH)
        assert f.tensors["v.position_embd.weight"].shape[::-1] == ((IMAGE // PATCH) ** 2 + 1, WIDTH)
        assert {"mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"} <= set(f.tensors)


# ---- variations written by rewriting the converter's file ------------------------------------------------


def rewrite(src: Path, dst: Path, *, kv: dict | None = None, drop: tuple = (), tensor=None) -> Path:
    """Copy an mmproj with keys set (name -> (value, type[, subtype])) or dropped, and each tensor passed
    through `tensor(name, array, type) -> [(name, array, raw_dtype or None)]`."""
    kv = dict(kv or {})
    reader = gguf.GGUFReader(src)
    arch = kv.pop("general.architecture", (reader.fields["general.architecture"].contents(),))[0]
    writer = gguf.GGUFWriter(dst, arch=arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop or name in kv:
            continue
        sub = field.types[1] if len(field.types) > 1 else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)
    for name, (value, *types) in kv.items():
        writer.add_key_value(name, value, *types)
    for t in reader.tensors:
        outs = [(t.name, np.array(t.data), None)] if tensor is None else tensor(t.name, np.array(t.data), t)
        for name, data, raw_dtype in outs:
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def features(path: Path, out: Path, x: np.ndarray) -> np.ndarray:
    build_clip_onnx(path, out)
    return VisionTower(out).encode(x)


def test_fc1_fc2_found_by_shape_not_name(mmprojs, tmp_path):
    """With llama.cpp's later, correct naming (fc1 = ffn_up) the tower is the same."""
    path, tower = mmprojs["f16_quick_gelu"]

    def swap(name, data, info):
        if ".ffn_" in name:
            name = (
                name.replace("ffn_down", "FFN_TMP").replace("ffn_up", "ffn_down").replace("FFN_TMP", "ffn_up")
            )
        return [(name, data, None)]

    swapped = rewrite(path, tmp_path / "swapped.gguf", tensor=swap)
    with GGUFFile.open(swapped) as f:
        assert f.tensors["v.blk.0.ffn_up.weight"].shape[::-1] == (2 * WIDTH, WIDTH)
    x = pixels(2)
    assert rel_err(features(swapped, tmp_path / "s.onnx", x), hidden_state(tower, x, -2)[:, 1:]) <= 1e-4


def test_quantized_weights_are_dequantized(mmprojs, tmp_path):
    path, tower = mmprojs["f16_quick_gelu"]
    q8 = gguf.GGMLQuantizationType.Q8_0

    def quantize(name, data, info):
        if name.startswith("v.blk.") and name.endswith(".weight") and data.ndim == 2:
            return [(name, gguf.quants.quantize(data.astype(np.float32), q8), q8)]
        return [(name, data, None)]

    quantized = rewrite(path, tmp_path / "q8.gguf", tensor=quantize)
    with GGUFFile.open(quantized) as f:
        assert f.tensors["v.blk.0.attn_q.weight"].type.name == "Q8_0"
    x = pixels(2)
    # Q8_0 keeps ~8 bits per weight: close to the model, and a wrong layout would be far off
    assert rel_err(features(quantized, tmp_path / "q.onnx", x), hidden_state(tower, x, -2)[:, 1:]) <= 3e-2


def test_feature_layer_key_selects_layers(mmprojs, tmp_path):
    path, tower = mmprojs["f16_quick_gelu"]
    i32, arr = gguf.GGUFValueType.INT32, gguf.GGUFValueType.ARRAY
    one = rewrite(path, tmp_path / "fl1.gguf", kv={"clip.vision.feature_layer": ([1], arr, i32)})
    meta = build_clip_onnx(one, tmp_path / "fl1.onnx")
    assert (meta["n_layers"], meta["select_layer"]) == (1, 1)
    x = pixels(1)
    assert rel_err(VisionTower(tmp_path / "fl1.onnx").encode(x), hidden_state(tower, x, 1)[:, 1:]) <= 1e-4
    stacked = rewrite(path, tmp_path / "fl2.gguf", kv={"clip.vision.feature_layer": ([1, 2], arr, i32)})
    with pytest.raises(ModelError, match="feature_layer"):
        build_clip_onnx(stacked, tmp_path / "fl2.onnx")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(kv={"general.architecture": ("llama",)}), "general.architecture is 'llama'"),
        (dict(kv={"clip.projector_type": ("ldp", gguf.GGUFValueType.STRING)}), "projector_type is 'ldp'"),
        (dict(drop=("clip.vision.patch_size",)), "'clip.vision.patch_size' is missing"),
        (dict(kv={"clip.vision.embedding_length": (33, gguf.GGUFValueType.UINT32)}), "not a multiple"),
        (
            dict(kv={"clip.vision.block_count": (3, gguf.GGUFValueType.UINT32)}),
            "'v.blk.2.ln1.weight' is missing",
        ),
        (dict(tensor="drop:v.blk.1.attn_v.weight"), "'v.blk.1.attn_v.weight' is missing"),
        (dict(tensor="add:v.post_ln.weight"), "post_ln"),
        (dict(tensor="shape:v.position_embd.weight"), r"'v.position_embd.weight' has shape \[16, 32\]"),
    ],
)
def test_bad_mmproj_refused(mmprojs, tmp_path, change, message):
    path, _ = mmprojs["f16_quick_gelu"]
    change = dict(change)
    action = change.pop("tensor", None)
    if action is not None:
        how, target = action.split(":")

        def edit(name, data, info):
            if name != target and not (how == "add" and name == "v.pre_ln.weight"):
                return [(name, data, None)]
            if how == "drop":
                return []
            if how == "add":
                return [(name, data, None), (target, data, None)]
            return [(name, data[1:], None)]

        change["tensor"] = edit
    bad = rewrite(path, tmp_path / "bad.gguf", **change)
    with pytest.raises(ModelError, match=message) as e:
        build_clip_onnx(bad, tmp_path / "bad.onnx")
    assert "bad.gguf" in str(e.value)
    assert not (tmp_path / "bad.onnx").exists()


def test_cache_keyed_by_mmproj_sha256(mmprojs, tmp_path, monkeypatch):
    path, _ = mmprojs["f16_quick_gelu"]
    sha = file_sha256(path)
    cached = cached_clip_onnx(path, cache_dir=tmp_path / "cache")
    assert cached == tmp_path / "cache" / f"clip-{sha}-v{BUILD_VERSION}.onnx"
    meta = json.loads(cached.with_suffix(".json").read_text())
    assert meta["mmproj_sha256"] == sha and meta["sha256"] == file_sha256(cached)
    VisionTower(cached, expected_sha256=meta["sha256"])

    import llava_edge.mmproj_onnx as mmproj_onnx

    def no_rebuild(*args):
        raise AssertionError("rebuilt a cached tower")

    monkeypatch.setattr(mmproj_onnx, "_build", no_rebuild)
    copy_path = tmp_path / "elsewhere.gguf"
    copy_path.write_bytes(path.read_bytes())
    assert cached_clip_onnx(copy_path, cache_dir=tmp_path / "cache") == cached  # same bytes, same entry
    monkeypatch.undo()

    other, _ = mmprojs["f32_gelu"]
    assert cached_clip_onnx(other, cache_dir=tmp_path / "cache") != cached
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".json", ".onnx", ".onnx"]


def test_default_cache_dir(monkeypatch, tmp_path):
    from llava_edge.mmproj_onnx import default_cache_dir

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "llava-edge" / "mmproj"


@pytest.mark.parametrize("variant", VARIANTS)
def test_llama_cpp_pair_gives_transformers_image_embeddings(mmprojs, variant, tmp_path, monkeypatch):
    """`-m decoder.gguf --mmproj mmproj.gguf`: tower rebuilt from the mmproj + its projector = transformers'
    image features (the projector weights rounded as the converter stores them)."""
    from PIL import Image

    from llava_edge.llava import LlavaModel
    from llava_edge.preprocess import preprocess
    from llava_edge.tiny import write_tiny_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path, tower = mmprojs[variant]
    seed = list(VARIANTS).index(variant)
    projector = tiny_llava(VARIANTS[variant][0], seed=seed).model.multi_modal_projector
    with GGUFFile.open(path) as f:
        if f.tensors["mm.0.weight"].type == 1:  # F16, as the converter wrote it
            with torch.no_grad():
                for p in projector.parameters():
                    if p.ndim == 2:
                        p.copy_(p.half().float())
    decoder = write_tiny_model(
        tmp_path / "llm.gguf", dim=48, n_heads=4, n_kv_heads=2, ffn_dim=96, file_type="f32"
    )
    model = LlavaModel.load_pair(decoder, path, template="mistral_instruct")
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (37, 70, 3), dtype=np.uint8))
    x = preprocess(img, model.preprocess_config)
    with torch.no_grad():
        want = projector(torch.from_numpy(hidden_state(tower, x, -2)[:, 1:])).numpy()[0]
    assert rel_err(model.image_embeddings(img), want) <= 1e-4
    steps = list(model.chat().ask("What is it?", images=[img], max_tokens=4))
    assert steps[-1].finish_reason in ("stop", "length") and steps[-1].prompt_tokens > len(want)
