"""SentencePiece-BPE tokenizer (GGUF `tokenizer.ggml.model = "llama"`), built from GGUF metadata.

Encoding and decoding reproduce sentencepiece's BPE model bit for bit (identity normaliser, dummy prefix,
byte fallback, user-defined and unused pieces). Where llama.cpp differs from sentencepiece we follow
sentencepiece; the one place sentencepiece has no behaviour, `parse_special=True`, follows llama.cpp.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any

import numpy as np

from llava_edge.errors import TokenizerError

SPACE = "\u2581"  # "▁": how sentencepiece writes a space inside pieces
UNK_SURFACE = " \u2047 "  # " ⁇ ": sentencepiece's default text for an unknown piece
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")  # sentencepiece spells byte pieces with upper-case hex


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` codes (llama.cpp), the same numbers as sentencepiece's piece types."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Pieces BPE may merge into: sentencepiece keeps control, unknown and byte pieces out of its merge table.
_MERGEABLE = (TokenType.NORMAL, TokenType.USER_DEFINED, TokenType.UNUSED)


def _alternation(pieces: Iterable[str]) -> re.Pattern[str] | None:
    """A regex matching the longest of `pieces` at the leftmost position, or None if there are none."""
    pieces = sorted(set(pieces), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, pieces))) if pieces else None


class Tokenizer:
    """The vocabulary of a GGUF file and sentencepiece's BPE over it. Immutable, so safe to share between
    threads."""

    def __init__(
        self,
        tokens: list[str],
        scores: Sequence[float],
        token_types: Sequence[int],
        *,
        bos_id: int | None,
        eos_id: int | None,
        unk_id: int | None,
        pad_id: int | None = None,
        add_bos: bool = True,
        add_eos: bool = False,
        add_space_prefix: bool = True,
    ):
        n = len(tokens)
        if len(scores) != n:
            raise TokenizerError(
                f"tokenizer.ggml.scores: has {len(scores)} entries, expected {n} (one per token)"
            )
        if len(token_types) != n:
            raise TokenizerError(
                f"tokenizer.ggml.token_type: has {len(token_types)} entries, expected {n} (one per token)"
            )
        for key, value in (
            ("bos_token_id", bos_id),
            ("eos_token_id", eos_id),
            ("unknown_token_id", unk_id),
            ("padding_token_id", pad_id),
        ):
            if value is not None and not 0 <= value < n:
                raise TokenizerError(
                    f"tokenizer.ggml.{key}: id {value} is outside the vocabulary of {n} tokens"
                )

        self.tokens = list(tokens)
        self.vocab_size = n
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = bos_id, eos_id, unk_id, pad_id
        self.add_bos, self.add_eos, self.add_space_prefix = add_bos, add_eos, add_space_prefix
        # float32 values widened exactly, so comparisons and ties are those of sentencepiece's float scores
        self._scores: list[float] = np.asarray(scores, dtype=np.float32).astype(np.float64).tolist()
        self._types: list[TokenType] = []
        for i, t in enumerate(token_types):
            try:
                self._types.append(TokenType(int(t)))
            except ValueError:
                raise TokenizerError(f"tokenizer.ggml.token_type: token {i} has unknown type {t}") from None

        self._merge_ids: dict[str, int] = {}  # piece -> id, for pieces BPE may produce
        self._ids: dict[str, int] = {}  # piece -> first id with that text
        self._special_ids: dict[str, int] = {}  # what parse_special recognises in text
        self._byte_of: dict[int, int] = {}  # byte-piece id -> byte value
        byte_ids: dict[int, int] = {}  # byte value -> first byte-piece id
        user: list[str] = []
        for i, (piece, kind) in enumerate(zip(self.tokens, self._types, strict=True)):
            self._ids.setdefault(piece, i)
            if kind in _MERGEABLE:
                self._merge_ids.setdefault(piece, i)
            if kind in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED):
                self._special_ids.setdefault(piece, i)
            if kind == TokenType.USER_DEFINED:
                user.append(piece)
            elif kind == TokenType.BYTE:
                m = _BYTE_PIECE.fullmatch(piece)
                if m is None:
                    raise TokenizerError(
                        f"tokenizer.ggml.tokens: byte token {i} is {piece!r}, expected <0xXX>"
                    )
                self._byte_of[i] = int(m.group(1), 16)
                byte_ids.setdefault(self._byte_of[i], i)
        # sentencepiece refuses a byte-fallback model without all 256 byte pieces; so do we
        if byte_ids and len(byte_ids) != 256:
            missing = 256 - len(byte_ids)
            raise TokenizerError(
                f"tokenizer.ggml.tokens: byte fallback needs 256 byte tokens, {missing} are missing"
            )
        self._byte_fallback = bool(byte_ids)
        self._byte_ids = [byte_ids[b] for b in range(256)] if byte_ids else []
        # User-defined pieces are taken whole before BPE; special pieces only when parse_special asks.
        self._user_re = _alternation(user)
        self._special_re = _alternation(self._special_ids)

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any], path: str | None = None) -> Tokenizer:
        """Build from GGUF key/value metadata; a problem raises TokenizerError naming `path` and the key."""
        where = path or "<gguf>"

        def fail(key: str, problem: str) -> TokenizerError:
            return TokenizerError(f"{where}: {key}: {problem}")

        def required(key: str) -> Any:
            if key not in meta:
                raise fail(key, "missing")
            return meta[key]

        def optional_id(key: str) -> int | None:
            value = meta.get(key)
            if value is None:
                return None
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise fail(key, f"expected an integer token id, found {value!r}")
            return int(value)

        def flag(key: str, default: bool) -> bool:
            value = meta.get(key, default)
            if not isinstance(value, (bool, np.bool_)):
                raise fail(key, f"expected a bool, found {value!r}")
            return bool(value)

        model = required("tokenizer.ggml.model")
        if model != "llama":
            raise fail("tokenizer.ggml.model", f'expected "llama" (SentencePiece BPE), found {model!r}')
        tokens = []
        for i, t in enumerate(required("tokenizer.ggml.tokens")):
            if isinstance(t, (bytes, bytearray)):
                try:
                    t = bytes(t).decode("utf-8")
                except UnicodeDecodeError:
                    raise fail("tokenizer.ggml.tokens", f"token {i} is not valid UTF-8") from None
            if not isinstance(t, str) or not t:
                raise fail("tokenizer.ggml.tokens", f"token {i} is {t!r}, expected a non-empty string")
            tokens.append(t)
        args = dict(
            bos_id=optional_id("tokenizer.ggml.bos_token_id"),
            eos_id=optional_id("tokenizer.ggml.eos_token_id"),
            unk_id=optional_id("tokenizer.ggml.unknown_token_id"),
            pad_id=optional_id("tokenizer.ggml.padding_token_id"),
            add_bos=flag("tokenizer.ggml.add_bos_token", True),
            add_eos=flag("tokenizer.ggml.add_eos_token", False),
            add_space_prefix=flag("tokenizer.ggml.add_space_prefix", True),
        )
        scores = list(required("tokenizer.ggml.scores"))
        token_types = list(required("tokenizer.ggml.token_type"))
        try:
            return cls(tokens, scores, token_types, **args)
        except TokenizerError as e:  # the constructor names the key; add the file
            raise TokenizerError(f"{where}: {e}") from None

    # -- encoding -------------------------------------------------------------------------------------

    def encode(
        self,
        text: str,
        *,
        add_bos: bool | None = None,
        add_eos: bool | None = None,
        parse_special: bool = False,
    ) -> list[int]:
        """Token ids of `text`, identical to sentencepiece's `encode`.

        With `parse_special`, control, unknown and user-defined pieces written in the text become their ids
        and every stretch of text between them is encoded on its own, with its own dummy prefix (llama.cpp's
        and the slow HF tokenizer's behaviour; sentencepiece itself has no such mode).
        """
        out: list[int] = []
        if self.add_bos if add_bos is None else add_bos:
            out.append(self._require(self.bos_id, "bos_token_id"))
        if parse_special and self._special_re is not None:
            start = 0
            for m in self._special_re.finditer(text):
                self._encode_text(text[start : m.start()], out)
                out.append(self._special_ids[m.group()])
                start = m.end()
            self._encode_text(text[start:], out)
        else:
            self._encode_text(text, out)
        if self.add_eos if add_eos is None else add_eos:
            out.append(self._require(self.eos_id, "eos_token_id"))
        return out

    def _require(self, token_id: int | None, key: str) -> int:
        if token_id is None:
            raise TokenizerError(f"tokenizer.ggml.{key}: not set, but the encoding asks for it")
        return token_id

    def _encode_text(self, text: str, out: list[int]) -> None:
        """Append sentencepiece's BPE encoding of one stretch of text to `out` (all state is local)."""
        if not text:  # sentencepiece adds no dummy prefix to empty input
            return
        normalized = (SPACE + text if self.add_space_prefix else text).replace(" ", SPACE)
        sym, frozen = self._initial_symbols(normalized)
        n = len(sym)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        merge_ids, scores, types = self._merge_ids, self._scores, self._types
        heap: list[tuple[float, int, int, int]] = []  # (-score, left, right, merged length)
        unused_split: dict[str, tuple[str, str]] = {}  # how an unused piece was built, to undo it at the end

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0 or frozen[left] or frozen[right]:
                return
            merged = sym[left] + sym[right]
            i = merge_ids.get(merged)
            if i is None:
                return
            heapq.heappush(heap, (-scores[i], left, right, len(merged)))
            if types[i] == TokenType.UNUSED:  # the last pair pushed wins, as in sentencepiece
                unused_split[merged] = (sym[left], sym[right])

        for i in range(n - 1):
            push(i, i + 1)
        # Best score first, leftmost on ties; an entry is stale once either side has changed.
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if not sym[left] or not sym[right] or len(sym[left]) + len(sym[right]) != size:
                continue
            sym[left] += sym[right]
            sym[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])

        pieces: list[str] = []

        def resegment(piece: str) -> None:
            # An unused piece may be formed while merging but never emitted: split it back into its parts.
            i = merge_ids.get(piece)
            if i is not None and types[i] == TokenType.UNUSED and piece in unused_split:
                for part in unused_split[piece]:
                    resegment(part)
            else:
                pieces.append(piece)

        i = 0
        while i >= 0:
            resegment(sym[i])
            i = nxt[i]

        prev_unk = False
        for piece in pieces:
            token_id = merge_ids.get(piece)
            # an unused piece left whole was never built by a merge (a single character): it is unknown
            if token_id is not None and types[token_id] != TokenType.UNUSED:
                out.append(token_id)
                prev_unk = False
            elif self._byte_fallback:
                out.extend(self._byte_ids[b] for b in piece.encode("utf-8"))
            elif not prev_unk:  # sentencepiece folds a run of unknown pieces into one <unk>
                out.append(self._require(self.unk_id, "unknown_token_id"))
                prev_unk = True

    def _initial_symbols(self, normalized: str) -> tuple[list[str], list[bool]]:
        """One symbol per character, except that user-defined pieces are taken whole and never merged."""
        if self._user_re is None:
            return list(normalized), [False] * len(normalized)
        sym: list[str] = []
        frozen: list[bool] = []
        start = 0
        for m in self._user_re.finditer(normalized):
            sym.extend(normalized[start : m.start()])
            frozen.extend([False] * (m.start() - start))
            sym.append(m.group())
            frozen.append(True)
            start = m.end()
        sym.extend(normalized[start:])
        frozen.extend([False] * (len(normalized) - start))
        return sym, frozen

    # -- decoding -------------------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of `ids`, identical to sentencepiece's `decode` (control pieces shown if not skip_special)."""
        stream = self.stream(skip_special=skip_special)
        return "".join(stream.push(i) for i in ids) + stream.flush()

    def stream(self, *, skip_special: bool = True, continuation: bool = False) -> StreamDecoder:
        """A decoder for ids that arrive one at a time (generation); see StreamDecoder. With
        `continuation`, the ids continue earlier text, so a leading "▁" is a real space and is kept."""
        return StreamDecoder(self, skip_special=skip_special, continuation=continuation)

    def id_to_piece(self, token_id: int) -> str:
        self._check_id(token_id)
        return self.tokens[token_id]

    def piece_to_id(self, piece: str) -> int | None:
        return self._ids.get(piece)

    def token_type(self, token_id: int) -> TokenType:
        self._check_id(token_id)
        return self._types[token_id]

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary of {self.vocab_size} tokens")


class StreamDecoder:
    """Incremental `Tokenizer.decode`: text is returned as soon as it is final, never half a character.

    `"".join(push(i) for i in ids) + flush() == decode(ids)` for every id sequence.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = True, continuation: bool = False):
        self._tok = tokenizer
        self._skip_special = skip_special
        self._bytes = bytearray()  # byte pieces not yet turned into text
        # The dummy prefix of the first piece is not text; only until some text has come out.
        self._strip_space = tokenizer.add_space_prefix and not continuation

    def push(self, token_id: int) -> str:
        tok = self._tok
        kind = tok.token_type(token_id)
        if kind == TokenType.BYTE:
            self._bytes.append(tok._byte_of[token_id])
            return self._emit(self._drain(final=False))
        text = self._emit(self._drain(final=True))  # a byte run ends here, before the piece is judged
        piece = tok.tokens[token_id]
        if kind == TokenType.CONTROL:
            out = "" if self._skip_special else piece
        elif kind == TokenType.UNKNOWN:
            out = UNK_SURFACE
        else:
            # Only the first visible piece can carry the dummy prefix; control pieces before it don't count.
            if self._strip_space and piece.startswith(SPACE):
                piece = piece[1:]
                self._strip_space = False
            out = piece.replace(SPACE, " ")
        return text + self._emit(out)

    def flush(self) -> str:
        return self._emit(self._drain(final=True))

    def _emit(self, text: str) -> str:
        if text:
            self._strip_space = False
        return text

    def _drain(self, final: bool) -> str:
        """Decode pending bytes as sentencepiece does: each byte that does not start a valid UTF-8
        character becomes U+FFFD on its own. A character still missing bytes waits unless `final`."""
        buf, out, i = self._bytes, [], 0
        while i < len(buf):
            lead = buf[i]
            # UTF-8 length announced by the lead byte; 1 for bytes that cannot start a character
            need = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF8 else 1
            if i + need > len(buf) and not final:
                break
            try:
                out.append(bytes(buf[i : i + need]).decode("utf-8"))
                i += need
            except UnicodeDecodeError:
                out.append("\ufffd")
                i += 1
        del buf[:i]
        return "".join(out)
