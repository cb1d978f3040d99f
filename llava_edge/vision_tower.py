"""The CLIP vision tower as an ONNX graph in onnxruntime: pixels [N,3,H,W] -> features [N, tokens, width].

The graph is `vision.onnx` from `convert.vision_export` or one built from a llama.cpp mmproj by
`mmproj_onnx`. Before onnxruntime sees the file we check its SHA-256 (when the bundle states one) and that
every external-data file it names stays inside the model's folder, so a hostile graph cannot make the
runtime read arbitrary files.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from .errors import ModelError

INPUT_NAME = "pixel_values"
DEFAULT_MAX_BATCH = 4  # images per onnxruntime call, to bound activations (CLIP-L/336: ~0.13 GB per image)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _graph_tensors(graph) -> Iterator:
    """Every TensorProto of a graph that can carry data: initializers, sparse initializers and node
    attributes, subgraphs (If/Loop/Scan bodies) included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node) -> Iterator:
    from onnx import AttributeProto as A

    for attr in node.attribute:
        if attr.type == A.TENSOR:
            yield attr.t
        elif attr.type == A.TENSORS:
            yield from attr.tensors
        elif attr.type == A.SPARSE_TENSOR:
            yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
        elif attr.type == A.SPARSE_TENSORS:
            for sparse in attr.sparse_tensors:
                yield from (sparse.values, sparse.indices)
        elif attr.type == A.GRAPH:
            yield from _graph_tensors(attr.g)
        elif attr.type == A.GRAPHS:
            for g in attr.graphs:
                yield from _graph_tensors(g)


def may_use_external_data(path: Path) -> bool:
    """False when no tensor in the file can live in an external file: each names it under the key
    "location", a protobuf string stored verbatim. Scanning the mapped file is much cheaper than parsing a
    1.2 GB graph; a chance match in the weights only costs the full check."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return mapped.find(b"location") != -1


def check_external_data(model, model_path: Path) -> None:
    """Refuse external-data locations that are absolute, contain '..', or resolve (through symlinks)
    outside the folder of the model file. onnxruntime reads them relative to that folder."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    folder = model_path.parent.resolve()
    tensors = list(_graph_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors.extend(_node_tensors(node))
    for tensor in tensors:
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        where = f"{model_path}: tensor {tensor.name!r} keeps its data in external file {location!r}"
        if not location:
            raise ModelError(f"{where}: the location is empty")
        if PurePosixPath(location).is_absolute() or PureWindowsPath(location).anchor:
            raise ModelError(f"{where}: absolute paths are refused (it must be inside {folder})")
        if ".." in re.split(r"[\\/]", location):
            raise ModelError(f"{where}: '..' is refused (it must be inside {folder})")
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise ModelError(f"{where}: it resolves to {target}, outside {folder}")


class VisionTower:
    """onnxruntime session over a vision ONNX graph: input `pixel_values` float32 [N,3,H,W] (N dynamic),
    one output float32 [N, tokens, width]."""

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        *,
        threads: int | None = None,
        expected_sha256: str | None = None,
        sha256_source: str | os.PathLike | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ):
        """`expected_sha256` comes from the model bundle (the GGUF named by `sha256_source`); a file that
        does not match is refused. `threads` None lets onnxruntime pick (one per physical core)."""
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        if not self.path.is_file():
            raise ModelError(f"{self.path}: vision ONNX file not found")
        if expected_sha256 is not None:
            actual = file_sha256(self.path)
            if actual != expected_sha256.lower():
                source = f"{sha256_source}" if sha256_source is not None else "the model bundle"
                raise ModelError(
                    f"{self.path}: SHA-256 is {actual}, but {source} expects {expected_sha256}: "
                    "this vision ONNX does not belong to that model"
                )
        if may_use_external_data(self.path):
            import onnx

            try:
                model = onnx.load(self.path, load_external_data=False)  # external files are not opened
            except Exception as e:
                raise ModelError(
                    f"{self.path}: not a readable ONNX model ({type(e).__name__}: {e})"
                ) from None
            check_external_data(model, self.path)
            del model

        options = ort.SessionOptions()
        options.intra_op_num_threads = 0 if threads is None else int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise ModelError(f"{self.path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from None
        self._check_signature()

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            names = [i.name for i in inputs]
            raise ModelError(f"{self.path}: expected one input named {INPUT_NAME!r}, found {names}")
        if inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
            raise ModelError(
                f"{self.path}: input {INPUT_NAME!r} must be float32 [N,3,H,W], "
                f"found {inputs[0].type} {inputs[0].shape}"
            )
        if len(outputs) != 1 or outputs[0].type != "tensor(float)" or len(outputs[0].shape) != 3:
            found = [(o.name, o.type, o.shape) for o in outputs]
            raise ModelError(f"{self.path}: expected one float32 output [N, tokens, width], found {found}")
        _, channels, height, width = inputs[0].shape
        if not all(isinstance(d, int) and d > 0 for d in (channels, height, width)):
            raise ModelError(
                f"{self.path}: input {INPUT_NAME!r} must have fixed channels, height and width, "
                f"found {inputs[0].shape}"
            )
        self.input_shape: tuple[int, int, int] = (channels, height, width)
        self.output_name = outputs[0].name
        tokens, dim = outputs[0].shape[1:]
        self.n_tokens = tokens if isinstance(tokens, int) else None
        self.width = dim if isinstance(dim, int) else None

    @property
    def image_size(self) -> int:
        return self.input_shape[1]

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [N,3,H,W] -> features float32 [N, tokens, width], at most `max_batch`
        images per onnxruntime call."""
        x = np.asarray(pixel_values)
        if x.ndim == 3:
            raise ValueError(f"pixel_values must be [N,3,H,W]; got {x.shape} (add a batch axis)")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            want = "[N," + ",".join(map(str, self.input_shape)) + "]"
            raise ValueError(f"pixel_values must be {want} for {self.path.name}, got {list(x.shape)}")
        if x.dtype != np.float32:
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"pixel_values must be float32, got {x.dtype}")
            x = x.astype(np.float32)
        x = np.ascontiguousarray(x)
        n = x.shape[0]
        if n == 0:
            if self.n_tokens is None or self.width is None:
                raise ValueError(f"{self.path.name}: cannot size an empty batch (dynamic output shape)")
            return np.zeros((0, self.n_tokens, self.width), np.float32)
        out = None
        for start in range(0, n, self.max_batch):
            (y,) = self.session.run([self.output_name], {INPUT_NAME: x[start : start + self.max_batch]})
            if out is None:
                out = np.empty((n, *y.shape[1:]), np.float32)
            out[start : start + len(y)] = y
        return out
