"""Typed errors. Every message names the file (when there is one) and the field at fault."""

from __future__ import annotations

import os


class LlavaEdgeError(Exception):
    """Base class of every error llava-edge raises on purpose."""


class GGUFError(LlavaEdgeError):
    """A GGUF file is malformed, unsupported or inconsistent."""

    def __init__(self, path: str | os.PathLike | None, field: str, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.problem = problem
        where = self.path or "<gguf>"
        super().__init__(f"{where}: {field}: {problem}")


class ModelError(LlavaEdgeError):
    """A model file parses but does not describe a model we can run."""


class TokenizerError(LlavaEdgeError):
    """Tokenizer metadata is missing or inconsistent."""


class ConvertError(LlavaEdgeError):
    """A checkpoint cannot be converted (missing files, unsupported layout, unsafe format)."""


class ContextLengthError(LlavaEdgeError):
    """A prompt does not fit in the model's context."""


class Interrupted(LlavaEdgeError):
    """A long job (training) stopped on SIGINT or SIGTERM after saving what it needs to resume."""


class Cancelled(Exception):
    """A forward pass stopped because its `should_stop` said so (Ctrl-C); the caches are as they were
    before it. Not an error: the generation loop turns it into finish_reason "cancelled"."""


class ImageError(LlavaEdgeError):
    """An image cannot be used: unreadable, not an image, an unsupported format, truncated, or too large."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")
