"""The CLIP vision tower of a llama.cpp LLaVA mmproj GGUF, rebuilt as an ONNX graph (no torch).

What the mmproj holds (llama.cpp `convert_image_encoder_to_gguf.py`, checked on a file it wrote):
- `general.architecture` = clip, `clip.projector_type` = mlp, `clip.vision.*` hyperparameters;
- tensors `v.class_embd` [D], `v.patch_embd.weight` [D,3,p,p] (always F16), `v.position_embd.weight`
  [1+P, D], `v.pre_ln.*`, `v.blk.N.{attn_q,attn_k,attn_v,attn_out,ln1,ln2,ffn_down,ffn_up}.*`, then the
  projector `mm.0.*`, `mm.2.*` (and `model.image_newline` for v1.6) which our kernels run, not this graph.
  2-D weights are F16 unless converted with --use-f32; biases and norms F32.
- Its converter drops the last CLIP layer (or keeps `clip.vision.feature_layer` layers) and the
  post-layernorm, so the features are the output of the last stored layer: layer -2 of the original tower.
- It names CLIP `fc1` (D -> FF) `ffn_down` and `fc2` (FF -> D) `ffn_up`; we tell them apart by shape.

The graph follows CLIP (transformers `CLIPVisionModel`), not llama.cpp's clip.cpp, which appends the CLS
token after the patches and runs one layer fewer than it stores: CLS goes first, every stored layer runs.
`pixel_values` float32 [N,3,H,W] (N dynamic) -> `features` float32 [N, P, D], CLS removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ModelError
from .ggml_types import GGMLType
from .gguf_file import GGUFFile
from .vision_tower import INPUT_NAME, file_sha256

OPSET = 18
IR_VERSION = 8  # the lowest that carries opset 18: loadable by onnxruntime >= 1.14
BUILD_VERSION = 1  # bump whenever the graph built here changes: it is part of the cache key
OUTPUT_NAME = "features"
QUICK_GELU_ALPHA = 1.702  # CLIP's quick_gelu: x * sigmoid(1.702 x)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llava-edge" / "mmproj"


# ---- reading the mmproj ---------------------------------------------------------------------------------


def _key(f: GGUFFile, key: str, kind: type[int] | type[float]) -> int | float:
    """A required number: ints must be positive."""
    value = f.get(key)
    if value is None:
        raise ModelError(f"{f.path}: metadata key {key!r} is missing (is this a llama.cpp LLaVA mmproj?)")
    numbers = (int, np.integer) if kind is int else (int, float, np.integer, np.floating)
    if not isinstance(value, numbers) or isinstance(value, (bool, np.bool_)) or (kind is int and value <= 0):
        raise ModelError(
            f"{f.path}: metadata key {key!r} should be a positive {kind.__name__}, found {value!r}"
        )
    return kind(value)


def _ints(f: GGUFFile, key: str) -> list[int] | None:
    value = f.get(key)
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise ModelError(f"{f.path}: metadata key {key!r} should be an array of integers, found {value!r}")
    return [int(v) for v in array.reshape(-1)]


def _f32(value) -> float:
    """A float32 from the file as the shortest decimal that reads back as it (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _floats(f: GGUFFile, key: str) -> list[float] | None:
    value = f.get(key)
    if value is None:
        return None
    try:
        return [_f32(v) for v in np.asarray(value, dtype=np.float32).reshape(-1)]
    except (TypeError, ValueError):
        raise ModelError(f"{f.path}: metadata key {key!r} should be an array of numbers") from None


def read_clip_params(f: GGUFFile) -> dict:
    """The vision hyperparameters of an mmproj, checked: what the graph needs and what a bundle records."""
    arch = f.get("general.architecture")
    if arch != "clip":
        raise ModelError(f"{f.path}: general.architecture is {arch!r}, expected 'clip' (an mmproj file)")
    if f.get("clip.has_vision_encoder") is not True:
        raise ModelError(f"{f.path}: clip.has_vision_encoder is not true: the file has no vision tower")
    projector = f.get("clip.projector_type", f.get("clip.vision.projector_type"))
    if projector != "mlp":
        raise ModelError(
            f"{f.path}: clip.projector_type is {projector!r}; only LLaVA's 'mlp' projector is supported"
        )
    p = {
        "image_size": _key(f, "clip.vision.image_size", int),
        "patch_size": _key(f, "clip.vision.patch_size", int),
        "width": _key(f, "clip.vision.embedding_length", int),
        "ffn": _key(f, "clip.vision.feed_forward_length", int),
        "n_head": _key(f, "clip.vision.attention.head_count", int),
        "layer_norm_eps": _f32(_key(f, "clip.vision.attention.layer_norm_epsilon", float)),
        "block_count": _key(f, "clip.vision.block_count", int),
    }
    if p["width"] % p["n_head"]:
        raise ModelError(
            f"{f.path}: clip.vision.embedding_length {p['width']} is not a multiple of "
            f"clip.vision.attention.head_count {p['n_head']}"
        )
    if p["patch_size"] > p["image_size"]:
        raise ModelError(f"{f.path}: clip.vision.patch_size {p['patch_size']} exceeds image_size")
    if not 0 < p["layer_norm_eps"] < 1:
        raise ModelError(
            f"{f.path}: clip.vision.attention.layer_norm_epsilon {p['layer_norm_eps']} is not sane"
        )
    if f.get("clip.use_silu") is True:
        raise ModelError(f"{f.path}: clip.use_silu is set: CLIP LLaVA towers use (quick) GELU")
    p["activation"] = "gelu" if f.get("clip.use_gelu") is True else "quick_gelu"

    # Features: hidden_states[k] = output of the first k layers. Without `feature_layer` the converter
    # stored layers [0, n-1) of an n-layer tower: every stored layer runs and the result is layer -2.
    layers = _ints(f, "clip.vision.feature_layer")
    if layers is None:
        p["n_layers"], p["select_layer"] = p["block_count"], -2
    else:
        if len(layers) != 1 or not 0 < layers[0] <= p["block_count"]:
            raise ModelError(
                f"{f.path}: clip.vision.feature_layer is {layers}; only one layer in "
                f"1..{p['block_count']} is supported (LLaVA uses one hidden layer, not a stack)"
            )
        p["n_layers"] = p["select_layer"] = layers[0]
    p["grid"] = p["image_size"] // p["patch_size"]
    p["n_tokens"] = p["grid"] ** 2
    p["image_mean"] = _floats(f, "clip.vision.image_mean")
    p["image_std"] = _floats(f, "clip.vision.image_std")
    flat = _ints(f, "clip.vision.image_grid_pinpoints")
    if flat is not None:
        if len(flat) % 2:
            raise ModelError(f"{f.path}: clip.vision.image_grid_pinpoints has an odd number of values")
        p["image_grid_pinpoints"] = [flat[i : i + 2] for i in range(0, len(flat), 2)]
    merge = f.get("clip.vision.mm_patch_merge_type")
    if merge is not None:
        p["mm_patch_merge_type"] = str(merge)
    for name in ("model.image_newline", "v.image_newline"):  # the converter writes the first
        if name in f.tensors:
            p["image_newline_tensor"] = name
            break
    return p


Load = Callable[[], np.ndarray]  # a weight, read and widened to float32 only when the file is written


def _tensor(f: GGUFFile, name: str, shape: tuple[int, ...], *, required: bool = True) -> Load | None:
    """A tensor checked now (present, shape, type) and read later: float32 in numpy order."""
    info = f.tensors.get(name)
    if info is None:
        if required:
            raise ModelError(f"{f.path}: tensor {name!r} is missing")
        return None
    found = tuple(info.shape[::-1])
    if found != shape:
        raise ModelError(f"{f.path}: tensor {name!r} has shape {list(found)}, expected {list(shape)}")
    if info.type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        return lambda: _widen(f.array(name), info.type)
    if info.type in (GGMLType.I8, GGMLType.I16, GGMLType.I32, GGMLType.I64, GGMLType.F64):
        raise ModelError(f"{f.path}: tensor {name!r} has type {info.type.name}; expected a float type")
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(int(info.type))
    try:
        dequantize(f.raw(name)[:1], qtype)  # one row: is the type implemented?
    except NotImplementedError:
        raise ModelError(f"{f.path}: tensor {name!r}: cannot dequantize type {info.type.name}") from None
    return lambda: np.asarray(dequantize(f.raw(name), qtype), np.float32).reshape(shape)


def _widen(values: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    if ggml_type == GGMLType.BF16:
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32, copy=False)  # F32 stays a read-only view of the file


def _zeros(n: int) -> Load:
    return lambda: np.zeros(n, np.float32)


def _fc1_fc2(f: GGUFFile, il: int, width: int, ffn: int) -> tuple[Load, Load, Load, Load]:
    """CLIP's fc1 (D -> FF) and fc2 (FF -> D) with their biases, whatever they are named."""
    names = [f"v.blk.{il}.ffn_down", f"v.blk.{il}.ffn_up"]
    for n in names:
        if f"{n}.weight" not in f.tensors:
            raise ModelError(f"{f.path}: tensor '{n}.weight' is missing")
    # numpy shape [out, in]: fc1 is [FF, D]. When FF == D the shapes cannot tell, and the legacy converter
    # (the only writer of 'mlp' mmproj files) names fc1 ffn_down, which is what llama.cpp assumes too.
    down_shape = tuple(f.tensors[f"{names[0]}.weight"].shape[::-1])
    fc1, fc2 = names if down_shape == (ffn, width) else names[::-1]
    return (
        _tensor(f, f"{fc1}.weight", (ffn, width)),
        _tensor(f, f"{fc1}.bias", (ffn,), required=False) or _zeros(ffn),
        _tensor(f, f"{fc2}.weight", (width, ffn)),
        _tensor(f, f"{fc2}.bias", (width,), required=False) or _zeros(width),
    )


# ---- building the graph ---------------------------------------------------------------------------------


class _Graph:
    """Nodes, and initializers kept as loaders until the file is written."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list[tuple[str, Load]] = []

    def const(self, name: str, value) -> str:
        if not callable(value):
            array = np.asarray(value)
            array = np.ascontiguousarray(array, np.int64 if array.dtype.kind in "iu" else np.float32)
            value = lambda: array  # noqa: E731
        self.initializers.append((name, value))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | list[str], **attrs) -> str | list[str]:
        from onnx import helper

        outs = [out] if isinstance(out, str) else out
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return out

    def linear(self, x: str, weight: Load, bias: Load, name: str) -> str:
        """x [.., in] @ W^T + b: W stored transposed [in, out] so MatMul reads it as is."""
        y = self.op("MatMul", [x, self.const(f"{name}.weight_t", lambda: weight().T)], f"{name}.matmul")
        return self.op("Add", [y, self.const(f"{name}.bias", bias)], f"{name}.out")

    def layer_norm(self, x: str, weight: Load, bias: Load, eps: float, name: str) -> str:
        w, b = self.const(f"{name}.weight", weight), self.const(f"{name}.bias", bias)
        return self.op("LayerNormalization", [x, w, b], f"{name}.out", axis=-1, epsilon=eps)


def _activation(g: _Graph, x: str, kind: str, name: str) -> str:
    if kind == "quick_gelu":  # x * sigmoid(1.702 x)
        scaled = g.op("Mul", [x, g.const(f"{name}.alpha", np.float32(QUICK_GELU_ALPHA))], f"{name}.ax")
        return g.op("Mul", [x, g.op("Sigmoid", [scaled], f"{name}.sig")], f"{name}.out")
    # exact GELU: 0.5 x (1 + erf(x / sqrt 2))
    x_s = g.op("Div", [x, g.const(f"{name}.sqrt2", np.float32(math.sqrt(2)))], f"{name}.xs")
    one_plus = g.op(
        "Add", [g.op("Erf", [x_s], f"{name}.erf"), g.const(f"{name}.one", np.float32(1))], f"{name}.1p"
    )
    half_x = g.op("Mul", [x, g.const(f"{name}.half", np.float32(0.5))], f"{name}.hx")
    return g.op("Mul", [half_x, one_plus], f"{name}.out")


def _encoder_layer(g: _Graph, f: GGUFFile, x: str, il: int, p: dict) -> str:
    """x [N,T,D] -> x + attn(ln1(x)) -> that + mlp(ln2(that))."""
    d, n_head, eps = p["width"], p["n_head"], p["layer_norm_eps"]
    pre = f"v.blk.{il}"
    ln1 = _tensor(f, f"{pre}.ln1.weight", (d,)), _tensor(f, f"{pre}.ln1.bias", (d,))
    ln2 = _tensor(f, f"{pre}.ln2.weight", (d,)), _tensor(f, f"{pre}.ln2.bias", (d,))
    w = {k: _tensor(f, f"{pre}.{k}.weight", (d, d)) for k in ("attn_q", "attn_k", "attn_v", "attn_out")}
    b = {k: _tensor(f, f"{pre}.{k}.bias", (d,), required=False) or _zeros(d) for k in w}
    fc1_w, fc1_b, fc2_w, fc2_b = _fc1_fc2(f, il, d, p["ffn"])

    h = g.layer_norm(x, *ln1, eps, f"{pre}.ln1")
    # One [D, 3D] matmul for q, k, v. The 1/sqrt(dh) scale is folded into q's weights (exact for the
    # power-of-two scales of CLIP: dh = 64 -> 1/8).
    scale = np.float32((d // n_head) ** -0.5)
    w_qkv = lambda: np.concatenate([w["attn_q"]() * scale, w["attn_k"](), w["attn_v"]()])  # noqa: E731
    b_qkv = lambda: np.concatenate([b["attn_q"]() * scale, b["attn_k"](), b["attn_v"]()])  # noqa: E731
    qkv = g.linear(h, w_qkv, b_qkv, f"{pre}.attn_qkv")  # [N, T, 3D]
    q, k, v = g.op("Split", [qkv, "split_d3"], [f"{pre}.q", f"{pre}.k", f"{pre}.v"], axis=-1)
    heads = "shape_heads"  # [N, T, H, dh]
    q = g.op("Transpose", [g.op("Reshape", [q, heads], f"{pre}.q4")], f"{pre}.qt", perm=[0, 2, 1, 3])
    k = g.op("Transpose", [g.op("Reshape", [k, heads], f"{pre}.k4")], f"{pre}.kt", perm=[0, 2, 3, 1])
    v = g.op("Transpose", [g.op("Reshape", [v, heads], f"{pre}.v4")], f"{pre}.vt", perm=[0, 2, 1, 3])
    scores = g.op("MatMul", [q, k], f"{pre}.scores")  # [N, H, T, T]
    probs = g.op("Softmax", [scores], f"{pre}.probs", axis=-1)
    ctx = g.op("MatMul", [probs, v], f"{pre}.ctx")  # [N, H, T, dh]
    ctx = g.op("Transpose", [ctx], f"{pre}.ctx_t", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, "shape_tokens"], f"{pre}.ctx3")  # [N, T, D]
    attn = g.linear(ctx, w["attn_out"], b["attn_out"], f"{pre}.attn_out")
    x = g.op("Add", [x, attn], f"{pre}.res1")

    h = g.layer_norm(x, *ln2, eps, f"{pre}.ln2")
    h = _activation(g, g.linear(h, fc1_w, fc1_b, f"{pre}.fc1"), p["activation"], f"{pre}.act")
    h = g.linear(h, fc2_w, fc2_b, f"{pre}.fc2")
    return g.op("Add", [x, h], f"{pre}.res2")


def _build_graph(f: GGUFFile, p: dict) -> _Graph:
    """The whole tower; every tensor it needs is checked here, before anything is written."""
    d, patch = p["width"], p["patch_size"]
    n_patches, t = p["n_tokens"], p["n_tokens"] + 1
    if "v.post_ln.weight" in f.tensors:
        raise ModelError(
            f"{f.path}: has v.post_ln: this tower applies a post-layernorm to its output, which LLaVA's "
            "layer -2 features never have (not a LLaVA mmproj from llama.cpp's converter)"
        )

    g = _Graph()
    g.const("split_d3", [d, d, d])
    g.const("shape_heads", [0, t, p["n_head"], d // p["n_head"]])  # 0: keep the batch dim
    g.const("shape_tokens", [0, t, d])

    # Patches: Conv with stride = kernel = patch, then [N, D, g, g] -> [N, P, D], row-major over the grid.
    conv_w = _tensor(f, "v.patch_embd.weight", (d, 3, patch, patch))
    conv_b = _tensor(f, "v.patch_embd.bias", (d,), required=False)
    conv_in = [INPUT_NAME, g.const("patch_embd.weight", conv_w)]
    if conv_b is not None:
        conv_in.append(g.const("patch_embd.bias", conv_b))
    x = g.op("Conv", conv_in, "patches", kernel_shape=[patch, patch], strides=[patch, patch])
    x = g.op("Reshape", [x, g.const("shape_patches", [0, d, n_patches])], "patches3")
    x = g.op("Transpose", [x], "patches_t", perm=[0, 2, 1])
    pos = _tensor(f, "v.position_embd.weight", (t, d))
    x = g.op("Add", [x, g.const("position_embd.patches", lambda: pos()[None, 1:])], "patches_pos")

    # CLS first, as CLIP does, with its position (0) added once here: [1, 1, D] broadcast to [N, 1, D].
    cls = _tensor(f, "v.class_embd", (d,))
    batch = g.op("Shape", [INPUT_NAME], "batch", start=0, end=1)
    cls_shape = g.op("Concat", [batch, g.const("one_d", [1, d])], "cls_shape", axis=0)
    cls_pos = g.const("class_embd_pos", lambda: (cls() + pos()[0])[None, None])
    x = g.op("Concat", [g.op("Expand", [cls_pos, cls_shape], "cls"), x], "embeddings", axis=1)  # [N, T, D]

    pre_w = _tensor(f, "v.pre_ln.weight", (d,), required=False)
    if pre_w is not None:
        x = g.layer_norm(x, pre_w, _tensor(f, "v.pre_ln.bias", (d,)), p["layer_norm_eps"], "pre_ln")
    for il in range(p["n_layers"]):
        x = _encoder_layer(g, f, x, il, p)
    starts, ends, axes = g.const("cls_start", [1]), g.const("cls_end", [t]), g.const("token_axis", [1])
    g.op("Slice", [x, starts, ends, axes], OUTPUT_NAME)
    return g


def _model_proto(g: _Graph, p: dict):
    """The ModelProto without initializers: those are streamed after it (see _write_onnx)."""
    from onnx import TensorProto, helper

    image = p["image_size"]
    graph = helper.make_graph(
        g.nodes,
        "clip_vision_from_mmproj",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, image, image])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", p["n_tokens"], p["width"]])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="llava-edge.mmproj_onnx"
    )
    model.ir_version = IR_VERSION
    return model


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(number: int, length: int) -> bytes:
    """Key and length of a length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(length)


def _write_onnx(out, model, initializers: list[tuple[str, Load]], source: Path) -> str:
    """The model, then one initializer at a time, so the tower is never in memory twice. Returns the
    SHA-256 of what was written.

    Protobuf merges repeated occurrences of an embedded message field, so each initializer goes out as its
    own `graph` field holding just that `initializer`: onnx and onnxruntime read one graph with all of them.
    """
    from onnx import GraphProto, ModelProto, TensorProto

    graph_field = ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    init_field = GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
    raw_field = TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
    dtypes = {"f": (np.dtype("<f4"), TensorProto.FLOAT), "i": (np.dtype("<i8"), TensorProto.INT64)}
    digest = hashlib.sha256()

    def write(data) -> None:
        out.write(data)
        digest.update(data)

    write(model.SerializeToString())
    total = 0
    for name, load in initializers:
        array = load()
        dtype, onnx_type = dtypes[array.dtype.kind]
        array = np.ascontiguousarray(array, dtype)  # raw_data is little-endian
        header = TensorProto(name=name, data_type=onnx_type, dims=array.shape).SerializeToString()
        tensor_len = len(header) + len(_len_field(raw_field, array.nbytes)) + array.nbytes
        init = _len_field(init_field, tensor_len)
        write(_len_field(graph_field, len(init) + tensor_len) + init + header)
        write(_len_field(raw_field, array.nbytes))
        write(array.reshape(-1).data)
        total += array.nbytes
        if total >= 2**31 - 2**24:  # protobuf's 2 GiB message limit, with room for the graph itself
            raise ModelError(f"{source}: the tower's weights exceed 2 GiB, too large for a single-file ONNX")
    return digest.hexdigest()


def _write_atomic(path: Path, write: Callable):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            result = write(out)
        os.replace(tmp, path)
        return result
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_clip_onnx(mmproj_path: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """Write the mmproj's CLIP tower as ONNX (float32 weights); return the facts a bundle records:
    image_size, patch_size, width, n_tokens, select_layer, n_layers, drop_cls, activation, layer_norm_eps,
    image_mean, image_std, [image_grid_pinpoints, mm_patch_merge_type, image_newline_tensor],
    onnx_file, sha256 (of the ONNX) and mmproj_sha256."""
    return _build(Path(mmproj_path), Path(out_path), file_sha256(mmproj_path))


def _build(mmproj_path: Path, out_path: Path, mmproj_sha256: str) -> dict:
    with GGUFFile.open(mmproj_path) as f:
        p = read_clip_params(f)
        g = _build_graph(f, p)
        model = _model_proto(g, p)
        sha256 = _write_atomic(out_path, lambda out: _write_onnx(out, model, g.initializers, mmproj_path))
    meta = {k: p[k] for k in ("image_size", "patch_size", "width", "n_tokens", "select_layer", "n_layers")}
    meta.update(drop_cls=True, activation=p["activation"], layer_norm_eps=p["layer_norm_eps"])
    meta.update(image_mean=p["image_mean"], image_std=p["image_std"])
    for key in ("image_grid_pinpoints", "mm_patch_merge_type", "image_newline_tensor"):
        if key in p:
            meta[key] = p[key]
    meta.update(onnx_file=out_path.name, sha256=sha256, mmproj_sha256=mmproj_sha256)
    return meta


def cached_clip_onnx(mmproj_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The mmproj's tower as ONNX, built once and cached under its SHA-256 (and the builder version).

    The metadata of `build_clip_onnx` sits beside it as JSON (same name, `.json`), its `sha256` usable as
    VisionTower's `expected_sha256`.
    """
    mmproj_path = Path(mmproj_path)
    sha = file_sha256(mmproj_path)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    onnx_path = folder / f"clip-{sha}-v{BUILD_VERSION}.onnx"
    meta_path = onnx_path.with_suffix(".json")
    if onnx_path.is_file() and meta_path.is_file():
        return onnx_path
    meta = _build(mmproj_path, onnx_path, sha)
    meta["source"] = mmproj_path.name
    _write_atomic(meta_path, lambda out: out.write(json.dumps(meta, indent=1).encode()))
    return onnx_path
