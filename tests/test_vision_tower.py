"""The exported vision ONNX, run by VisionTower, gives transformers' LLaVA image features; hostile files are
refused before onnxruntime reads them."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from llava_edge.convert.vision_export import export_vision_onnx, find_vision_tower  # noqa: E402
from llava_edge.errors import ModelError  # noqa: E402
from llava_edge.vision_tower import VisionTower, file_sha256  # noqa: E402

IMAGE, PATCH, WIDTH, LAYERS = 56, 14, 32, 3


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Weights large enough that attention and MLP move the residual stream (transformers' 0.02-std init
    leaves every layer close to identity, which would hide mistakes in them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim >= 2 and "embedding" not in name:
                p.copy_(noise * 1.5 / np.sqrt(p.shape[-1] if p.ndim == 2 else p[0].numel()))
            else:
                p.copy_(0.3 * noise)


def tiny_llava(hidden_act: str = "quick_gelu", seed: int = 0):
    """A random LlavaForConditionalGeneration: CLIP 56 px / 14 px patches, 3 layers, width 32, FFN 64."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, MistralConfig

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        image_size=IMAGE,
        patch_size=PATCH,
        projection_dim=WIDTH,
        hidden_act=hidden_act,
    )
    text = MistralConfig(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision, text_config=text, image_token_id=3)
    )
    randomize_(model.model.vision_tower, seed)
    randomize_(model.model.multi_modal_projector, seed + 1)
    return model.eval()


def pixels(n: int, seed: int = 1) -> np.ndarray:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed)).numpy()


def hidden_state(tower, x: np.ndarray, layer: int) -> np.ndarray:
    with torch.no_grad():
        return tower(torch.from_numpy(x), output_hidden_states=True).hidden_states[layer].numpy()


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_llava()
    path = tmp_path_factory.mktemp("vision") / "vision.onnx"
    meta = export_vision_onnx(find_vision_tower(model), path)
    return model, path, meta


@pytest.mark.parametrize("n", [1, 3])
def test_onnx_matches_transformers_layer_minus_2(exported, n):
    model, path, _ = exported
    x = pixels(n)
    ref = hidden_state(find_vision_tower(model), x, -2)[:, 1:]
    ours = VisionTower(path, threads=1, max_batch=2).encode(x)  # N=3: two onnxruntime calls
    assert ours.dtype == np.float32
    assert rel_err(ours, ref) <= 1e-5


def test_features_are_what_llava_projects(exported):
    """The projector applied to our features gives LLaVA's own image features (its select layer, no CLS)."""
    model, path, _ = exported
    x = pixels(2, seed=5)
    ours = VisionTower(path).encode(x)
    with torch.no_grad():
        projected = model.model.multi_modal_projector(torch.from_numpy(ours)).numpy()
        ref = model.model.get_image_features(pixel_values=torch.from_numpy(x)).pooler_output
    ref = np.stack([r.numpy() for r in ref])
    assert rel_err(projected, ref) <= 1e-5


def test_export_metadata_and_truncation(exported):
    model, path, meta = exported
    assert meta == {
        "image_size": IMAGE,
        "patch_size": PATCH,
        "width": WIDTH,
        "n_tokens": (IMAGE // PATCH) ** 2,
        "select_layer": -2,
        "n_layers": LAYERS - 1,
        "drop_cls": True,
        "onnx_file": "vision.onnx",
        "sha256": file_sha256(path),
    }
    graph = onnx.load(path).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("Softmax") == LAYERS - 1  # the unused last layer is not in the file
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, IMAGE, IMAGE] and isinstance(dims[0], str)  # N is dynamic
    assert len(find_vision_tower(model).encoder.layers) == LAYERS  # the model itself is untouched


def test_other_select_layer_keeps_cls(tmp_path):
    model = tiny_llava(seed=2)
    tower = find_vision_tower(model)
    meta = export_vision_onnx(tower, tmp_path / "v.onnx", select_layer=1, drop_cls=False)
    assert (meta["n_layers"], meta["n_tokens"]) == (1, (IMAGE // PATCH) ** 2 + 1)
    x = pixels(2)
    assert rel_err(VisionTower(tmp_path / "v.onnx").encode(x), hidden_state(tower, x, 1)) <= 1e-5
    with pytest.raises(ModelError, match="select_layer -5 is out of range"):
        export_vision_onnx(tower, tmp_path / "bad.onnx", select_layer=-5)


def test_find_vision_tower_in_llava_next():
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        MistralConfig,
    )

    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    text = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=[[28, 28]])
    model = LlavaNextForConditionalGeneration(config)
    assert find_vision_tower(model) is model.model.vision_tower
    with pytest.raises(ModelError, match="no vision_tower"):
        find_vision_tower(model.model.language_model)


def test_encode_checks_shapes(exported):
    _, path, _ = exported
    tower = VisionTower(path)
    with pytest.raises(ValueError, match=r"\[N,3,56,56\]"):
        tower.encode(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="batch axis"):
        tower.encode(np.zeros((3, IMAGE, IMAGE), np.float32))
    with pytest.raises(ValueError, match="float32"):
        tower.encode(np.zeros((1, 3, IMAGE, IMAGE), np.int64))
    assert tower.encode(np.zeros((0, 3, IMAGE, IMAGE), np.float32)).shape == (0, 16, WIDTH)
    f64 = pixels(1).astype(np.float64)
    assert rel_err(tower.encode(f64), tower.encode(f64.astype(np.float32))) == 0


def test_sha256_mismatch_refused(exported, tmp_path):
    _, path, meta = exported
    VisionTower(path, expected_sha256=meta["sha256"].upper())  # the right hash loads
    with pytest.raises(ModelError) as e:
        VisionTower(path, expected_sha256="0" * 64, sha256_source=tmp_path / "model.gguf")
    assert str(path) in str(e.value) and "model.gguf" in str(e.value) and meta["sha256"] in str(e.value)


# ---- external data --------------------------------------------------------------------------------------


def external_model(folder, location: str, data_file=None) -> os.PathLike:
    """features = reshape(pixel_values + W) with W stored in external file `location` (its bytes written
    to `data_file`, default folder/location), so onnxruntime would load it if we let it."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    weight = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    tensor = numpy_helper.from_array(weight, "W")
    folder.mkdir(parents=True, exist_ok=True)
    target = data_file if data_file is not None else folder / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(tensor.raw_data)
    set_external_data(tensor, location=location, offset=0, length=weight.nbytes)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["pixel_values", "W"], ["sum"]),
            helper.make_node("Reshape", ["sum", "shape"], ["features"]),
        ],
        "ext",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3, 16])],
        initializer=[tensor, numpy_helper.from_array(np.array([0, 3, 16], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = folder / "vision.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_folder_loads(tmp_path):
    path = external_model(tmp_path / "m", "sub/weights.bin")
    out = VisionTower(path).encode(np.ones((2, 3, 4, 4), np.float32))
    np.testing.assert_array_equal(
        out, np.broadcast_to(np.arange(1, 49, dtype=np.float32).reshape(3, 16), (2, 3, 16))
    )


def test_external_data_parent_dir_refused(tmp_path):
    path = external_model(tmp_path / "m", "../weights.bin")
    assert (tmp_path / "weights.bin").is_file()
    with pytest.raises(ModelError, match=r"'\.\.' is refused"):
        VisionTower(path)
    path = external_model(tmp_path / "m2", "sub/../../weights.bin", data_file=tmp_path / "weights.bin")
    with pytest.raises(ModelError, match=r"'\.\.' is refused"):
        VisionTower(path)


def test_external_data_absolute_path_refused(tmp_path):
    secret = tmp_path / "outside" / "weights.bin"
    path = external_model(tmp_path / "m", str(secret))
    assert secret.is_file()
    with pytest.raises(ModelError, match="absolute paths are refused") as e:
        VisionTower(path)
    assert str(path) in str(e.value)


def test_external_data_symlink_out_of_folder_refused(tmp_path):
    # onnxruntime >= 1.2x checks this too; ours runs first, on every version we accept
    secret = tmp_path / "secret.bin"
    path = external_model(tmp_path / "m", "weights.bin", data_file=secret)
    (tmp_path / "m" / "weights.bin").symlink_to(secret)
    with pytest.raises(ModelError, match="resolves to .*secret.bin, outside"):
        VisionTower(path)
    # the same file through a symlinked folder inside the model folder is just as far outside
    path = external_model(tmp_path / "m2", "linked/secret.bin", data_file=secret)
    (tmp_path / "m2" / "linked").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ModelError, match="resolves to .*secret.bin, outside"):
        VisionTower(path)


def test_not_an_onnx_file_refused(tmp_path):
    bad = tmp_path / "vision.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="vision.onnx"):
        VisionTower(bad)
    with pytest.raises(ModelError, match="not found"):
        VisionTower(tmp_path / "missing.onnx")
