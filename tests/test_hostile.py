"""Hostile input across the whole load path: every error message names its file and leaks no address; files
that parse but contradict themselves (hyperparameters, tokenizer, ONNX tower vs the GGUF's llava.* facts)
are refused before anything is sized by them; every kernel refuses wrong dtypes, layouts and shapes."""

from __future__ import annotations

import io
import os
import random
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_gguf_file import BAD

from llava_edge import _kernels as K
from llava_edge.bundle import LlavaMeta
from llava_edge.errors import GGUFError, ImageError, LlavaEdgeError, ModelError, TokenizerError
from llava_edge.ggml_types import GGMLType
from llava_edge.gguf_file import GGUFFile
from llava_edge.gguf_writer import write_gguf
from llava_edge.image import load_image
from llava_edge.llava import LlavaModel
from llava_edge.loader import load_text_model
from llava_edge.preprocess import PreprocessConfig
from llava_edge.sampling import make_sampler
from llava_edge.tiny import write_tiny_model
from llava_edge.vision_tower import VisionTower, file_sha256

ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}|object at ")


def assert_clean(message: str, names: str | None = None) -> None:
    """One line, no memory address, and (when given) the file it is about."""
    assert "\n" not in message.strip(), message
    assert not ADDRESS.search(message), message
    if names is not None:
        assert names in message, (names, message)


# -- messages -----------------------------------------------------------------------------------------------


def test_bad_gguf_matrix_messages_through_the_model_loader(tmp_path):
    """The reader's 79-case matrix, through the loader a user runs: each a GGUFError that names the file."""
    for case, data, _ in BAD:
        path = tmp_path / f"{case}.gguf"
        path.write_bytes(data)
        with pytest.raises(LlavaEdgeError) as info:
            load_text_model(path)
        assert isinstance(info.value, GGUFError), (case, info.value)
        assert_clean(str(info.value), str(path))


def image_variants() -> dict[str, bytes]:
    """Good pictures of each format, then the same bytes damaged every way the loader must survive."""
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (24, 31, 3), dtype=np.uint8))
    good = {}
    for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        im.save(buf, fmt)
        good[fmt] = buf.getvalue()
    bad = {"empty": b"", "text": b"hello, I am not a picture\n", "heic": b"\0\0\0\x18ftypheic" + bytes(40)}
    r = random.Random(0)
    for fmt, data in good.items():
        for cut in (8, 30, len(data) // 2, len(data) - 3):
            bad[f"{fmt}-cut{cut}"] = data[:cut]
        for i in range(25):
            flipped = bytearray(data)
            for _ in range(1 + i % 4):
                flipped[r.randrange(len(flipped))] = r.randrange(256)
            bad[f"{fmt}-flip{i}"] = bytes(flipped)
        header = bytearray(data)  # an absurd size in the header, for the pixel cap
        if fmt == "PNG":
            header[16:24] = (60000).to_bytes(4, "big") * 2
            bad["PNG-huge"] = bytes(header)
    return bad


def test_image_error_messages(tmp_path):
    n_errors = 0
    for name, data in image_variants().items():
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        for source, label in ((path, str(path)), (data, "<image bytes>")):
            try:
                load_image(source)
            except ImageError as e:
                assert_clean(str(e), label)
                n_errors += 1
    assert n_errors > 100  # most damaged files are refused (some flips only change pixels)


def test_onnx_error_messages(tmp_path):
    from onnx import TensorProto, helper

    cases = {"garbage.onnx": b"\x00garbage" * 10, "empty.onnx": b"", "location.onnx": b"\x12location\x08" * 9}
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    cases["wrong-signature.onnx"] = model.SerializeToString()
    cases["truncated.onnx"] = model.SerializeToString()[:-7]
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelError) as info:
            VisionTower(path)
        assert_clean(str(info.value), str(path))


# -- semantic checks after parsing --------------------------------------------------------------------------

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, context_length=256, file_type="f32")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", sliding_window=None, **TINY)


def rewrite(src: Path, dst: Path, meta: dict | None = None, tensors: dict | None = None) -> Path:
    """src with metadata keys replaced (None deletes) and tensors replaced: name -> (type, shape, data)."""
    with GGUFFile.open(src) as f:
        metadata, value_types = dict(f.metadata), dict(f.value_types)
        all_tensors = {n: (t.type, t.shape, np.array(f.raw(n))) for n, t in f.tensors.items()}
    for key, value in (meta or {}).items():
        value_types.pop(key, None)
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    all_tensors.update(tensors or {})
    write_gguf(dst, metadata, all_tensors, value_types)
    return dst


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("llama.block_count", 513, "513 is outside 1..512"),
        ("llama.block_count", 2**40, "outside 1..512"),
        ("llama.block_count", 0, "outside"),
        ("llama.context_length", 2**40, "outside"),
        ("llama.embedding_length", "sixty-four", "expected an integer"),
        ("llama.embedding_length", 2.5, "expected an integer"),
        ("llama.embedding_length", [64, 64], "expected an integer, found an array of 2 elements"),
        ("llama.attention.head_count", 0, "outside"),
        ("llama.attention.head_count_kv", 3, "do not divide"),
        ("llama.attention.head_count", 64, "heads of an even size"),
        ("llama.attention.layer_norm_rms_epsilon", float("nan"), "outside"),
        ("llama.attention.layer_norm_rms_epsilon", "tiny", "expected a number"),
        ("llama.rope.freq_base", -1.0, "outside"),
        ("llama.feed_forward_length", None, "llama.feed_forward_length: missing"),
        ("llama.vocab_size", 2**30, "outside"),
        ("llama.vocab_size", 100, "token_embd.weight: expected shape"),
        ("llama.attention.sliding_window", -4, "outside"),
        ("general.architecture", "gpt2", "expected 'llama'"),
    ],
)
def test_inconsistent_hyperparameters_are_refused(tiny_gguf, tmp_path, key, value, problem):
    path = rewrite(tiny_gguf, tmp_path / "bad.gguf", {key: value})
    with pytest.raises(ModelError) as info:
        load_text_model(path)
    assert problem in str(info.value)
    assert_clean(str(info.value), str(path))
    if problem.startswith("expected") or "outside" in problem:
        assert key in str(info.value)


@pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="a sanitizer runtime reserves terabytes of shadow memory: no address-space cap fits it "
    "(the normal run of the suite checks this)",
)
def test_huge_block_count_is_refused_before_any_allocation(tiny_gguf, tmp_path):
    """Under a 1 GiB address-space limit a file claiming 2^40 blocks and context still gives its error."""
    path = rewrite(
        tiny_gguf, tmp_path / "bad.gguf", {"llama.block_count": 2**40, "llama.context_length": 2**40}
    )
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from llava_edge.loader import load_text_model\n"
        "from llava_edge.errors import ModelError\n"
        "try:\n"
        f"    load_text_model({str(path)!r})\n"
        "except ModelError as e:\n"
        "    print(e)\n"
    )
    if resource.getrlimit(resource.RLIMIT_AS)[1] != resource.RLIM_INFINITY:
        pytest.skip("the address space is already limited")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "llama.block_count: 1099511627776 is outside 1..512" in out.stdout


def test_tokenizer_ids_must_be_rows_of_the_embeddings(tiny_gguf, tmp_path):
    with GGUFFile.open(tiny_gguf) as f:
        n_tokens = len(f.get("tokenizer.ggml.tokens"))
        embd, out = f.array("token_embd.weight").copy(), f.array("output.weight").copy()
    rows = n_tokens - 10
    path = rewrite(
        tiny_gguf,
        tmp_path / "short.gguf",
        {"llama.vocab_size": rows},
        {
            "token_embd.weight": (GGMLType.F32, (TINY["dim"], rows), embd[:rows]),
            "output.weight": (GGMLType.F32, (TINY["dim"], rows), out[:rows]),
        },
    )
    with pytest.raises(
        ModelError,
        match=rf"tokenizer.ggml.tokens: {n_tokens} tokens, but token_embd.weight has only {rows} rows",
    ):
        load_text_model(path)


@pytest.mark.parametrize("key", ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"])
def test_special_token_ids_outside_the_vocabulary(tiny_gguf, tmp_path, key):
    path = rewrite(tiny_gguf, tmp_path / "bad.gguf", {key: 10**6})
    with pytest.raises(TokenizerError) as info:
        load_text_model(path)
    assert key.split(".")[-1] in str(info.value)
    assert_clean(str(info.value), str(path))


# -- the ONNX tower against the GGUF's llava.* facts ---------------------------------------------------------

VISION_WIDTH, IMAGE_SIZE, PATCH = 16, 28, 14


def tower_onnx(
    path: Path, *, image_size: int = IMAGE_SIZE, tokens: int = 4, width: int = VISION_WIDTH
) -> Path:
    """pixel_values [N,3,S,S] -> features [N, tokens, width]: mean over channels, pooled, then a fixed linear
    map; enough of a tower to check shapes and run a question end to end."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    pooled = image_size // int(np.sqrt(tokens))
    w = rng.normal(0, 0.5, (1, width)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["pixel_values", "axes"], ["grey"], keepdims=1),  # [N,1,S,S]
        helper.make_node(
            "AveragePool", ["grey"], ["pool"], kernel_shape=[pooled, pooled], strides=[pooled, pooled]
        ),
        helper.make_node("Reshape", ["pool", "shape"], ["flat"]),  # [N, tokens, 1]
        helper.make_node("MatMul", ["flat", "w"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tower",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, image_size, image_size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", tokens, width])],
        initializer=[
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array([0, tokens, 1], np.int64), "shape"),
            numpy_helper.from_array(w, "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def make_bundle(folder: Path, decoder: Path, *, meta: dict | None = None, **tower) -> Path:
    """A llava-edge bundle from the tiny decoder and a hand-made tower; `meta` overrides llava.* keys."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx = tower_onnx(folder / "vision.onnx", **tower)
    rng = np.random.default_rng(1)
    dim = TINY["dim"]
    facts = LlavaMeta("mlp2x_gelu", "vision.onnx", file_sha256(onnx), VISION_WIDTH, 4, -2, -1, "llava_v1")
    keys = {
        **facts.to_gguf_metadata(),
        **PreprocessConfig(image_size=IMAGE_SIZE, patch_size=PATCH).to_gguf_metadata(),
    }
    keys.update(meta or {})

    def f32(*shape):
        return rng.normal(0, 0.1, shape).astype(np.float32)

    tensors = {
        "mm.0.weight": (GGMLType.F32, (VISION_WIDTH, dim), f32(dim, VISION_WIDTH)),
        "mm.0.bias": (GGMLType.F32, (dim,), f32(dim)),
        "mm.2.weight": (GGMLType.F32, (dim, dim), f32(dim, dim)),
        "mm.2.bias": (GGMLType.F32, (dim,), f32(dim)),
    }
    rewrite(decoder, folder / "model.gguf", keys, tensors)
    return folder


def test_hand_made_bundle_loads_and_answers(tiny_gguf, tmp_path):
    """The baseline for the refusals below: the same construction, consistent, works end to end."""
    model = LlavaModel.load(make_bundle(tmp_path / "ok", tiny_gguf))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    steps = list(model.chat().ask("What is it?", images=[img], max_tokens=3, sampler=make_sampler(temp=0)))
    assert steps[-1].finish_reason in ("stop", "length") and steps[-1].prompt_tokens > 4


def test_a_bad_image_in_a_chat_leaves_the_conversation_intact(tiny_gguf, tmp_path):
    model = LlavaModel.load(make_bundle(tmp_path / "ok", tiny_gguf))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    greedy = make_sampler(temp=0)
    session = model.chat(kv_type="f32")
    list(session.ask("What is it?", images=[img], max_tokens=4, sampler=greedy))
    state = (list(session.fed), list(session._unfed), session.cache[0].offset)
    session.add_image(b"GIF89a not really")
    with pytest.raises(ImageError, match="<image bytes>"):
        list(session.ask("And this?", max_tokens=4, sampler=greedy))
    assert (session.fed, session._unfed, session.cache[0].offset) == state
    assert session.pending_images == [] and len(session.turns) == 1  # the bad image is not kept for later
    answer = [s.token for s in session.ask("Go on.", max_tokens=4, sampler=greedy)]
    fresh = model.chat(kv_type="f32")
    list(fresh.ask("What is it?", images=[img], max_tokens=4, sampler=greedy))
    assert answer == [s.token for s in fresh.ask("Go on.", max_tokens=4, sampler=greedy)]


@pytest.mark.parametrize(
    ("tower", "meta", "problem"),
    [
        (dict(image_size=56), {}, "input pixel_values is 56x56 pixels, but .* llava.image_size is 28"),
        (dict(tokens=9), {}, "9 feature tokens per image, but .* llava.vision_tokens is 4"),
        (dict(width=12), {}, "features are 12 wide, but .* llava.vision_width is 16"),
        ({}, {"llava.vision_tokens": 16}, "4 feature tokens per image, but .* llava.vision_tokens is 16"),
        ({}, {"llava.image_size": 56}, "28x28 pixels, but .* llava.image_size is 56"),
    ],
)
def test_tower_must_match_the_gguf(tiny_gguf, tmp_path, tower, meta, problem):
    bundle = make_bundle(tmp_path / "b", tiny_gguf, meta=meta, **tower)
    with pytest.raises(ModelError, match=problem) as info:
        LlavaModel.load(bundle)
    assert_clean(str(info.value), str(bundle / "vision.onnx"))


def test_projector_width_must_match_the_decoder(tiny_gguf, tmp_path):
    bundle = make_bundle(tmp_path / "b", tiny_gguf)
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.1, (48, VISION_WIDTH)).astype(np.float32)
    rewrite(
        bundle / "model.gguf",
        bundle / "model2.gguf",
        tensors={"mm.0.weight": (GGMLType.F32, (VISION_WIDTH, 48), w)},
    )
    (bundle / "model2.gguf").replace(bundle / "model.gguf")
    with pytest.raises(ModelError, match=r"mm.0.weight is 16 -> 48, expected 16 -> 64"):
        LlavaModel.load(bundle)


# -- kernels ------------------------------------------------------------------------------------------------


def kernel_calls() -> dict[str, tuple]:
    """Each public kernel with valid arguments: name -> (function, args). Arrays are the ones to damage."""
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.normal(size=shape).astype(np.float32)

    q8 = K.quantize(K.TYPE_Q8_0, f32(3, 64))
    return {
        "matmul": (K.matmul, [q8, K.TYPE_Q8_0, f32(2, 64)]),
        "matmul_f32": (K.matmul, [f32(3, 64), K.TYPE_F32, f32(2, 64)]),
        "get_rows": (K.get_rows, [q8, K.TYPE_Q8_0, 64, np.array([0, 2], np.int32)]),
        "rms_norm": (K.rms_norm, [f32(2, 8), f32(8), 1e-5]),
        "rope": (K.rope, [f32(3, 2, 8), np.arange(3, dtype=np.int32), 10000.0]),
        "attention": (
            K.attention,
            [
                f32(2, 4, 32),
                np.array([3, 4], np.int32),
                f32(5, 2, 32),
                f32(5, 2, 32),
                np.arange(5, dtype=np.int32),
            ],
        ),
        "attention_f16": (
            K.attention,
            [
                f32(2, 4, 32),
                np.array([3, 4], np.int32),
                f32(5, 2, 32).astype(np.float16),
                f32(5, 2, 32).astype(np.float16),
                np.arange(5, dtype=np.int32),
            ],
        ),
        "silu_mul": (K.silu_mul, [f32(2, 8), f32(2, 8)]),
        "gelu": (K.gelu, [f32(3, 5)]),
        "gelu_quick": (K.gelu_quick, [f32(3, 5)]),
        "softmax": (K.softmax, [f32(3, 5)]),
        "add_inplace": (K.add_inplace, [f32(3, 8), f32(3, 8)]),
        "quantize": (K.quantize, [K.TYPE_Q4_K, f32(2, 256)]),
        "quantize_act": (K.quantize_act, [K.TYPE_Q8_0, f32(2, 64)]),
        "dequantize": (K.dequantize, [K.TYPE_Q8_0, q8, 64]),
        "vec_dot": (K.vec_dot, [K.TYPE_Q8_0, q8[0], f32(64)]),
        "_quantize_into": (K._quantize_into, [K.TYPE_Q8_0, f32(64), np.zeros(80, np.uint8), 4]),
        "_dequantize_into": (K._dequantize_into, [K.TYPE_Q8_0, q8, 64, np.zeros(200, np.float32), 8]),
    }


def damaged(a: np.ndarray) -> dict[str, np.ndarray]:
    """The same values in every wrong form: dtype, layout, alignment, rank, size."""
    out = {
        "float64": a.astype(np.float64),
        "int64": a.astype(np.int64),
        "big-endian": a.astype(a.dtype.newbyteorder(">")),
        "added-axis": a[None, None, None, None, None],
        "one-short": a.reshape(-1)[:-1] if a.size > 1 else a.reshape(-1)[:0],
        "empty": a.reshape(-1)[:0],
        "list": a.tolist(),
    }
    if a.ndim >= 1 and a.shape[-1] > 1:
        out["strided"] = np.repeat(a, 2, axis=-1)[..., ::2]
    if a.itemsize > 1:
        raw = np.zeros(a.nbytes + a.itemsize, np.uint8)
        raw[1 : 1 + a.nbytes] = np.frombuffer(a.tobytes(), np.uint8)
        out["misaligned"] = np.frombuffer(raw.data, a.dtype, a.size, offset=1).reshape(a.shape)
    if a.ndim >= 1 and a.size:
        ro = a.copy()
        ro.setflags(write=False)
        out["read-only"] = ro
    return out


# What a kernel may accept of damaged(): read-only inputs; byte-buffer arguments (weights, quantized data,
# the test hooks' `out`), which take any C-contiguous buffer of whole rows whatever its dtype, rank or byte
# order; rank-free element-wise inputs; empty and shorter inputs where any length is valid; misaligned
# inputs the quantizer copies. Everything else must raise.
RO = [(i, "read-only") for i in range(5)]
ELEMENTWISE = [(0, "added-axis"), (0, "one-short"), (0, "empty"), (0, "read-only")]
ACCEPTED = {
    "matmul": [(0, "big-endian"), (0, "empty"), (0, "read-only"), (2, "read-only")],
    "matmul_f32": [(0, "big-endian"), (0, "empty"), (0, "read-only"), (2, "read-only")],
    "get_rows": [(0, "big-endian"), (0, "read-only"), (3, "one-short"), (3, "empty"), (3, "read-only")],
    "rms_norm": [(0, "added-axis"), (0, "read-only"), (1, "read-only")],
    "rope": [(1, "read-only")],
    "attention": RO,
    "attention_f16": RO,
    "silu_mul": RO[:2],
    "gelu": ELEMENTWISE,
    "gelu_quick": ELEMENTWISE,
    "softmax": [(0, "added-axis"), (0, "one-short"), (0, "read-only")],
    "add_inplace": [(1, "read-only")],
    "quantize": [(1, "empty"), (1, "misaligned"), (1, "read-only")],
    "quantize_act": [(1, "empty"), (1, "misaligned"), (1, "read-only")],
    "dequantize": [(1, h) for h in ("float64", "int64", "big-endian", "added-axis", "empty", "read-only")],
    "vec_dot": [(1, "big-endian"), (1, "added-axis"), (1, "read-only"), (2, "misaligned"), (2, "read-only")],
    "_quantize_into": [(1, "empty"), (1, "misaligned"), (1, "read-only")]
    + [(2, h) for h in ("float64", "int64", "big-endian", "added-axis", "one-short")],
    "_dequantize_into": [(1, h) for h in ("big-endian", "added-axis", "empty", "read-only")]
    + [(3, "added-axis")],
}


@pytest.mark.parametrize("name", list(kernel_calls()))
def test_every_kernel_refuses_or_handles_damaged_arrays(name):
    fn, args = kernel_calls()[name]
    want = fn(*[a.copy() if isinstance(a, np.ndarray) else a for a in args])  # the clean call works
    n_checked, accepted = 0, []
    for i, arg in enumerate(args):
        if not isinstance(arg, np.ndarray):
            continue
        for how, bad in damaged(arg).items():
            call = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            call[i] = bad
            try:
                got = fn(*call)
            except (TypeError, ValueError, IndexError) as e:
                assert_clean(str(e))
                n_checked += 1
                continue
            accepted.append((i, how))
            if how in ("read-only", "misaligned") and want is not None:
                np.testing.assert_array_equal(
                    np.asarray(got), np.asarray(want), err_msg=f"{name} arg {i} {how}"
                )
    assert n_checked > 0
    assert sorted(accepted) == sorted(ACCEPTED.get(name, [])), accepted


@pytest.mark.parametrize("fn", [K.block_size, K.type_size, K.act_type, K.type_name])
@pytest.mark.parametrize("bad_type", [-1, 3, 99, 2**40])
def test_type_queries_refuse_unknown_types(fn, bad_type):
    with pytest.raises((ValueError, TypeError, OverflowError)):
        fn(bad_type)


def test_matmul_refuses_a_weight_buffer_that_does_not_match_its_type():
    x = np.ones((1, 64), np.float32)
    with pytest.raises(ValueError):
        K.matmul(np.zeros((3, 33), np.uint8), K.TYPE_Q8_0, x)  # 33 bytes: not a whole Q8_0 row of 64
    with pytest.raises(ValueError):
        K.get_rows(np.zeros((3, 34), np.uint8), K.TYPE_Q8_0, 64, np.array([3], np.int32))
    with pytest.raises(IndexError):
        K.get_rows(np.zeros((3, 68), np.uint8), K.TYPE_Q8_0, 64, np.array([-1], np.int32))
