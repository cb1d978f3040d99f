"""Training data: LLaVA's JSON format + an image folder -> token ids, loss labels and pixels.

Conversations are formatted and tokenized exactly as the runtime does at inference, so that a model
trained here sees at inference the token sequences it was trained on:
- each user turn is `Template.turn(question, n_images, first)` (`llava_edge.chat.TEMPLATES`), tokenized by
  the runtime tokenizer built from the checkpoint's own tokenizer files (the one the exported bundle gets),
  with `parse_special` and BOS on the first turn, as `LlavaModel.tokenize` does;
- each answer is `Template.answer` (e.g. " {} </s>") tokenized as a continuation of the text before it (no
  dummy prefix), its `</s>` being the EOS id: the tokens the model must generate, then EOS, which is what
  `ChatSession` feeds back before the next turn;
- the `<image>` token (llava-hf style) is expanded to one id per image feature row, as transformers'
  LlavaProcessor does; images are decoded and preprocessed by the runtime's own code (`load_image`,
  `preprocess`).
Labels are -100 everywhere except on answer tokens and their EOS.

The "plain" format (LLaVA's projector pretraining) is BOS, the image, then the first answer (the
caption) and EOS; the question is ignored.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..chat import IMAGE, TEMPLATES, Template
from ..errors import ConvertError
from ..image import load_image
from ..preprocess import PreprocessConfig, preprocess
from ..tokenizer import Tokenizer

IGNORE = -100  # label of a position that carries no loss
PLAIN = "plain"
MAX_IMAGES_PER_SAMPLE = 16


@dataclass(frozen=True)
class Sample:
    """One conversation: image paths (resolved), (question, answer) turns, and the question's images."""

    id: str
    images: tuple[str, ...]
    turns: tuple[tuple[str, str], ...]
    images_per_turn: tuple[int, ...]


def _fail(where: str, problem: str) -> ConvertError:
    return ConvertError(f"{where}: {problem}")


def parse_sample(entry: Any, where: str, image_folder: Path) -> Sample:
    """Validate one LLaVA JSON entry. `<image>` placeholders are taken out of the human turns (the template
    puts images first in their turn); an entry with images but no placeholder gets them in its first turn."""
    if not isinstance(entry, dict):
        raise _fail(where, f"expected an object, found {type(entry).__name__}")
    conv = entry.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise _fail(where, "conversations: expected a non-empty list of {from, value} objects")
    image = entry.get("image")
    if image is None:
        images: list = []
    elif isinstance(image, str):
        images = [image]
    elif isinstance(image, list) and all(isinstance(x, str) for x in image):
        images = image
    else:
        raise _fail(where, f"image: expected a path or a list of paths, found {image!r:.80}")
    if len(images) > MAX_IMAGES_PER_SAMPLE:
        raise _fail(where, f"image: {len(images)} images, at most {MAX_IMAGES_PER_SAMPLE} per sample")
    for i, path in enumerate(images):
        if not path or Path(path).is_absolute() or ".." in Path(path).parts:
            raise _fail(where, f"image[{i}] {path!r}: expected a relative path inside the image folder")

    turns, per_turn, question = [], [], None
    for i, m in enumerate(conv):
        if not isinstance(m, dict) or not isinstance(m.get("value"), str):
            raise _fail(f"{where}.conversations[{i}]", "expected {from, value} with a string value")
        role = m.get("from")
        expected = "human" if i % 2 == 0 else "gpt"
        if role not in (("human", "user") if expected == "human" else ("gpt", "assistant")):
            raise _fail(
                f"{where}.conversations[{i}]",
                f"from: expected {expected!r} (turns alternate), found {role!r}",
            )
        if expected == "human":
            text = m["value"]
            per_turn.append(text.count(IMAGE))
            question = text.replace(IMAGE + "\n", "").replace("\n" + IMAGE, "").replace(IMAGE, "").strip()
        else:
            if IMAGE in m["value"]:
                raise _fail(f"{where}.conversations[{i}]", "an answer may not contain <image>")
            turns.append((question, m["value"].strip()))
    if len(conv) % 2:
        raise _fail(where, "conversations: the last message is a question with no answer")
    n_placeholders = sum(per_turn)
    if n_placeholders == 0 and images:
        per_turn[0] = len(images)
    elif n_placeholders != len(images):
        raise _fail(where, f"{n_placeholders} <image> placeholders but {len(images)} images")
    return Sample(
        id=str(entry.get("id", where)),
        images=tuple(str(image_folder / p) for p in images),
        turns=tuple(turns),
        images_per_turn=tuple(per_turn),
    )


def load_samples(path: str | os.PathLike, image_folder: str | os.PathLike | None = None) -> list[Sample]:
    """All samples of a LLaVA JSON file; image paths are relative to `image_folder` (default: the JSON
    file's folder)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConvertError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ConvertError(f"{path}: expected a JSON list of samples, found {type(data).__name__}")
    folder = Path(image_folder) if image_folder is not None else path.parent
    return [parse_sample(entry, f"{path}[{i}]", folder) for i, entry in enumerate(data)]


class ConversationEncoder:
    """Text of a conversation -> (input ids, labels), as the runtime tokenizes it (see the module doc)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str,
        image_token_id: int,
        image_tokens: int,
    ):
        if template != PLAIN and template not in TEMPLATES:
            raise ConvertError(
                f"unknown template {template!r}; expected {PLAIN} or one of {', '.join(TEMPLATES)}"
            )
        if tokenizer.eos_id is None or tokenizer.bos_id is None:
            raise ConvertError("the tokenizer has no BOS or EOS token")
        self.tokenizer = tokenizer
        self.template: Template | None = TEMPLATES.get(template)
        self.image_token_id = image_token_id
        self.image_tokens = image_tokens
        self._cache: dict[tuple[str, bool, bool], list[int]] = {}

    def _encode(self, text: str, bos: bool, continuation: bool) -> list[int]:
        key = (text, bos, continuation)
        ids = self._cache.get(key)
        if ids is None:
            if continuation and self.tokenizer.add_space_prefix:
                # A continuation has no dummy prefix: its own leading space plays that part (" A" -> "▁A").
                if not text.startswith(" "):
                    raise ConvertError(f"an answer must start with a space to continue the prompt: {text!r}")
                text = text[1:]
            ids = self.tokenizer.encode(text, add_bos=bos, add_eos=False, parse_special=True)
            if len(self._cache) < 100_000:
                self._cache[key] = ids
        return ids

    def _expand(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for i in ids:
            out.extend([i] * self.image_tokens if i == self.image_token_id else [i])
        return out

    def prompt(self, question: str, n_images: int = 1) -> list[int]:
        """Input ids of a first user turn, ready for the answer to be generated."""
        if self.template is None:
            return self._expand(self._encode(IMAGE * n_images, True, False))
        return self._expand(self._encode(self.template.turn(question, n_images, True), True, False))

    def encode(self, sample: Sample) -> tuple[list[int], list[int]]:
        """(input ids with every image expanded to `image_tokens` ids, labels)."""
        ids: list[int] = []
        labels: list[int] = []
        eos = self.tokenizer.eos_id
        if self.template is None:  # plain: BOS, the images, the first answer, EOS
            prompt = self.prompt("", len(sample.images))
            answer = self._encode(sample.turns[0][1], False, False) + [eos]
            return prompt + answer, [IGNORE] * len(prompt) + answer
        t = self.template
        turns = zip(sample.turns, sample.images_per_turn, strict=True)
        for k, ((question, answer), n_images) in enumerate(turns):
            # each user turn as ChatSession.ask tokenizes it: BOS on the first only
            prompt = self._expand(self._encode(t.turn(question, n_images, k == 0), k == 0, False))
            text = t.answer.format(answer)
            if not text.endswith("</s>"):
                raise ConvertError(f"template {t.name}: answers must end with </s>, got {t.answer!r}")
            reply = self._encode(text[: -len("</s>")], False, True) + [eos]
            ids += prompt + reply
            labels += [IGNORE] * len(prompt) + reply
        return ids, labels

    def trim(self, ids: list[int], labels: list[int], max_length: int) -> tuple[list[int], list[int]]:
        """Cut a sequence longer than max_length after its last whole answer that fits (never inside an
        image or an answer). Returns empty lists when not even the first answer fits."""
        if len(ids) <= max_length:
            return ids, labels
        eos = self.tokenizer.eos_id
        ends = [i + 1 for i in range(max_length) if labels[i] == eos]
        if not ends:
            return [], []
        return ids[: ends[-1]], labels[: ends[-1]]


class LlavaDataset:
    """Indexable samples -> dicts of input_ids, labels (int64 numpy) and pixel_values (float32 [n, 3, S, S]).
    Works as a torch Dataset (it needs only __len__ and __getitem__)."""

    def __init__(
        self,
        samples: list[Sample],
        encoder: ConversationEncoder,
        preprocess_config: PreprocessConfig,
        max_length: int,
    ):
        self.encoder = encoder
        self.preprocess_config = preprocess_config
        self.max_length = max_length
        self.samples = []
        self.dropped = 0
        for s in samples:
            if encoder.template is None and not s.images:
                self.dropped += 1  # plain (caption) training needs an image
                continue
            ids, labels = encoder.trim(*encoder.encode(s), max_length)
            if not ids:
                self.dropped += 1  # not even the first answer fits
                continue
            self.samples.append(s)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        ids, labels = self.encoder.trim(*self.encoder.encode(s), self.max_length)
        cfg = self.preprocess_config
        enc = self.encoder
        kept = ids.count(enc.image_token_id) // enc.image_tokens  # images of turns that trim() cut are gone
        if kept:
            pixels = np.concatenate([preprocess(load_image(p), cfg) for p in s.images[:kept]])
        else:
            pixels = np.zeros((0, 3, cfg.image_size, cfg.image_size), np.float32)
        return {
            "input_ids": np.asarray(ids, np.int64),
            "labels": np.asarray(labels, np.int64),
            "pixel_values": pixels,
        }


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-pad a list of samples into torch tensors; all images of the batch go in one stack, in order."""
    import torch

    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k] = torch.from_numpy(b["input_ids"])
        labels[i, :k] = torch.from_numpy(b["labels"])
        mask[i, :k] = 1
    pixels = [b["pixel_values"] for b in batch if len(b["pixel_values"])]
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": None}
    if pixels:
        out["pixel_values"] = torch.from_numpy(np.concatenate(pixels))
    return out


def collate_parts(batch: list[dict], pad_id: int, parts: int) -> list[dict]:
    """The samples of a micro-batch sorted by length and cut into `parts` groups, each right-padded only to
    its own longest sample. The summed loss and its gradient are those of the whole micro-batch (causal
    attention: padding on the right changes no real position); what goes away is the arithmetic on padding,
    about half of it for conversations of 1-8 turns. The number of groups depends only on the batch size, so
    every process runs the same number of forwards (FSDP needs it)."""
    order = sorted(range(len(batch)), key=lambda i: len(batch[i]["input_ids"]))
    parts = max(1, min(parts, len(batch)))
    cuts = [round(k * len(batch) / parts) for k in range(parts + 1)]
    return [collate([batch[i] for i in order[a:b]], pad_id) for a, b in itertools.pairwise(cuts)]
