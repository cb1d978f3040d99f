"""A LLaVA model: vision tower (ONNX) + projector + Mistral/Llama decoder, from a bundle or from
llama.cpp's pair of files (decoder GGUF + mmproj GGUF)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bundle import MODEL_FILE, LlavaMeta
from .errors import ModelError
from .ggml_types import GGMLType
from .gguf_file import GGUFFile
from .image import load_image
from .model import Mistral
from .preprocess import PreprocessConfig, anyres_arrange, preprocess, select_best_resolution
from .projector import Projector
from .tokenizer import Tokenizer
from .validate import check_tokenizer_fits, check_vision_matches
from .vision_tower import VisionTower


class ImageSlot:
    """Where an image's embeddings go in a tokenized prompt."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<image>"


IMAGE_SLOT = ImageSlot()


class LlavaModel:
    def __init__(
        self,
        decoder: Mistral,
        tokenizer: Tokenizer,
        vision: VisionTower,
        projector: Projector,
        preprocess_config: PreprocessConfig,
        *,
        image_newline: np.ndarray | None,
        image_token_id: int,
        template: str,
    ):
        self.decoder, self.tokenizer, self.vision, self.projector = decoder, tokenizer, vision, projector
        self.preprocess_config = preprocess_config
        self.image_newline = image_newline
        self.image_token_id = image_token_id
        self.template = template
        self.vision_calls = 0  # tower runs, for tests and stats
        self._image_cache: dict[str, np.ndarray] = {}
        if preprocess_config.aspect_mode == "anyres" and image_newline is None:
            raise ModelError("anyres model without an image_newline vector (v.image_newline)")

    # -- loading --------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, *, threads: int | None = None) -> LlavaModel:
        """A bundle directory (or its model.gguf); llama.cpp pairs go through `load_pair`."""
        path = Path(path)
        gguf_path = path / MODEL_FILE if path.is_dir() else path
        f = GGUFFile.open(gguf_path, huge_pages=True)
        meta = LlavaMeta.from_gguf_metadata(f.metadata, gguf_path)
        decoder = Mistral(f)
        onnx_path = gguf_path.parent / meta.vision_onnx
        vision = VisionTower(
            onnx_path, threads=threads, expected_sha256=meta.vision_onnx_sha256, sha256_source=gguf_path
        )
        config = PreprocessConfig.from_gguf_metadata(f.metadata, str(gguf_path))
        check_vision_matches(
            vision,
            image_size=config.image_size,
            width=meta.vision_width,
            tokens=meta.vision_tokens,
            onnx_path=onnx_path,
            gguf_path=gguf_path,
        )
        tokenizer = Tokenizer.from_gguf_metadata(f.metadata, path=str(gguf_path))
        check_tokenizer_fits(tokenizer, decoder.args, gguf_path)
        newline = _newline(f, "v.image_newline", decoder.args.dim) if "v.image_newline" in f.tensors else None
        return cls(
            decoder,
            tokenizer,
            vision,
            Projector(f, meta.vision_width, decoder.args.dim),
            config,
            image_newline=newline,
            image_token_id=meta.image_token_id,
            template=meta.chat_template,
        )

    @classmethod
    def load_pair(
        cls, model_path, mmproj_path, *, threads: int | None = None, template: str | None = None
    ) -> LlavaModel:
        """llama.cpp's LLaVA files: the decoder GGUF and the mmproj GGUF (CLIP tower + projector). The
        tower is rebuilt as ONNX from the mmproj's weights on first use and cached by the file's hash."""
        from .mmproj_onnx import cached_clip_onnx, read_clip_params

        f = GGUFFile.open(model_path, huge_pages=True)
        decoder = Mistral(f)
        mm = GGUFFile.open(mmproj_path)
        p = read_clip_params(mm)
        vision = VisionTower(cached_clip_onnx(mmproj_path), threads=threads)
        anyres = "image_grid_pinpoints" in p
        cfg = PreprocessConfig(
            image_size=p["image_size"],
            patch_size=p["patch_size"],
            mean=tuple(p["image_mean"] or PreprocessConfig.mean),
            std=tuple(p["image_std"] or PreprocessConfig.std),
            aspect_mode="anyres" if anyres else "pad",
            grid_pinpoints=tuple(tuple(x) for x in p.get("image_grid_pinpoints", ())),
        )
        check_vision_matches(
            vision,
            image_size=cfg.image_size,
            width=p["width"],
            tokens=None,
            onnx_path=vision.path,
            gguf_path=mmproj_path,
        )
        tokenizer = Tokenizer.from_gguf_metadata(f.metadata, path=str(model_path))
        check_tokenizer_fits(tokenizer, decoder.args, model_path)
        newline_name = p.get("image_newline_tensor")
        newline = _newline(mm, newline_name, decoder.args.dim) if newline_name else None
        if template is None:
            name = str(f.get("general.name", "")).lower()
            template = "mistral_instruct" if "mistral" in name else "llava_v1"
        return cls(
            decoder,
            tokenizer,
            vision,
            Projector(mm, p["width"], decoder.args.dim),
            cfg,
            image_newline=newline,
            image_token_id=-1,  # llama.cpp tokenizes the text on each side of an image separately
            template=template,
        )

    # -- images ---------------------------------------------------------------------------------------

    def image_embeddings(self, image) -> np.ndarray:
        """An image (path, bytes or PIL image) -> its decoder input embeddings [n_tokens, n_embd]. Results
        are cached by the decoded pixels' hash: asking about the same picture again skips the tower."""
        img = load_image(image)
        key = hashlib.sha256(img.tobytes() + repr(img.size).encode()).hexdigest()
        cached = self._image_cache.get(key)
        if cached is not None:
            return cached
        cfg = self.preprocess_config
        pixels = preprocess(img, cfg)  # [N, 3, S, S]
        self.vision_calls += 1
        features = self.vision.encode(pixels)  # [N, tokens, width]
        n, t, w = features.shape
        embeds = self.projector(features.reshape(n * t, w)).reshape(n, t, -1)
        if cfg.aspect_mode == "anyres":
            best = select_best_resolution(img.size, cfg.grid_pinpoints)
            embeds = anyres_arrange(
                embeds,
                img.size,
                best,
                self.image_newline,
                patch_grid=cfg.patch_grid,
                tile_size=cfg.image_size,
            )
        else:
            embeds = embeds[0]
        self._image_cache[key] = embeds = np.ascontiguousarray(embeds, np.float32)
        return embeds

    def chat(self, **kwargs):
        """A new conversation (see ChatSession for the options)."""
        from .chat import ChatSession

        return ChatSession(self, **kwargs)

    # -- prompts --------------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool) -> list:
        """Prompt text with "<image>" placeholders -> token ids and IMAGE_SLOTs, the way the checkpoint
        was trained: llava-hf models have an <image> token; original LLaVA tokenizes each side apart."""
        tok = self.tokenizer
        if self.image_token_id >= 0:
            ids = tok.encode(text, add_bos=add_bos, parse_special=True)
            return [IMAGE_SLOT if i == self.image_token_id else i for i in ids]
        out: list = []
        for i, chunk in enumerate(text.split("<image>")):
            if i:
                out.append(IMAGE_SLOT)
            out.extend(tok.encode(chunk, add_bos=add_bos and i == 0, parse_special=True))
        return out

    def embed_prompt(self, pieces: Sequence, images: Sequence) -> np.ndarray:
        """Token ids and IMAGE_SLOTs (one per image, in order) -> decoder input embeddings [n, n_embd]."""
        n_slots = sum(1 for p in pieces if p is IMAGE_SLOT)
        if n_slots != len(images):
            raise ValueError(f"the prompt has {n_slots} image places but {len(images)} images were given")
        blocks, run, images = [], [], iter(images)
        for p in pieces:
            if p is IMAGE_SLOT:
                if run:
                    blocks.append(self.decoder.embed(run))
                    run = []
                blocks.append(self.image_embeddings(next(images)))
            else:
                run.append(p)
        if run:
            blocks.append(self.decoder.embed(run))
        return np.concatenate(blocks) if blocks else np.zeros((0, self.decoder.args.dim), np.float32)


def _newline(f: GGUFFile, name: str, dim: int) -> np.ndarray:
    """The anyres row-end vector: one decoder embedding."""
    info = f.tensors[name]
    if tuple(info.shape) != (dim,) or info.type not in (GGMLType.F32, GGMLType.F16):
        raise ModelError(
            f"{f.path}: tensor {name}: expected F32/F16 of shape ({dim},), found {tuple(info.shape)}"
        )
    return f.array(name).astype(np.float32)


def load(path: str | os.PathLike, *, mmproj: str | os.PathLike | None = None, threads: int | None = None):
    """Open a LLaVA model: a bundle directory, or llama.cpp's decoder GGUF with `mmproj`. `threads` sets
    the compute threads of the decoder kernels and the vision tower."""
    if threads:
        from . import _kernels

        _kernels.set_num_threads(threads)
    if mmproj is not None:
        return LlavaModel.load_pair(path, mmproj, threads=threads)
    return LlavaModel.load(path, threads=threads)
