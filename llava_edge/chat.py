"""Chat templates (LLaVA's conversation formats) and `ChatSession`, which keeps the KV cache across turns
so that an image is encoded and prefilled once per conversation."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from .generate import GenerationResponse, stream_generate
from .sampling import LogitsProcessor, Sampler

IMAGE = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class Template:
    """A LLaVA conversation format. `turn()` is the text of one user turn as fed to the model; `render()`
    the whole transcript (LLaVA's `conversation.py` get_prompt) with the answers in it."""

    name: str
    system: str  # text before the first turn ("" for none)
    user: str  # one user turn; {} is the question (images first, each followed by a newline)
    answer: str  # how an answer is appended to the transcript; {} is the answer text

    def turn(self, question: str, n_images: int = 0, first: bool = False) -> str:
        text = self.user.format((IMAGE + "\n") * n_images + question)
        return self.system + text if first else text

    def render(self, messages: Sequence[dict]) -> str:
        out, first = [], True
        for m in messages:
            if m["role"] == "user":
                out.append(self.turn(m["content"], m.get("images", 0), first))
                first = False
            else:
                out.append(self.answer.format(m["content"]))
        return "".join(out)


TEMPLATES = {
    # llava-v1.6-mistral-7b (`conv_mistral_instruct`): no system text, `[INST] q [/INST]`, answers ` a </s>`.
    "mistral_instruct": Template("mistral_instruct", "", "[INST] {} [/INST]", " {} </s>"),
    # llava-v1.5 (`conv_vicuna_v1`): the system sentence, ` USER: q ASSISTANT:`, answers ` a</s>`.
    "llava_v1": Template("llava_v1", VICUNA_SYSTEM + " ", "USER: {} ASSISTANT:", " {}</s>"),
}


@dataclass
class Turn:
    question: str
    n_images: int
    answer: str = ""
    tokens: list[int] = field(default_factory=list)  # the answer's generated tokens
    finish_reason: str | None = None
    prompt_end: int = 0  # len(ChatSession.fed) when this answer started: its prompt is fed[:prompt_end]


class ChatSession:
    """A conversation with a LLaVA model: images and questions in, streamed answers out.

    Everything fed to the model stays in the KV cache: each turn prefills only its own new tokens (and the
    embeddings of images added in that turn), never the earlier turns again.
    """

    def __init__(
        self,
        model,
        *,
        n_ctx: int | None = None,
        kv_type: str = "f16",
        template: str | None = None,
        rolling: bool = False,
    ):
        """`rolling`: a conversation longer than the context keeps going: the first turn up to the end of
        its last image (or BOS alone, without an image) stays, the rest rolls (see PinnedRollingKVCache).
        Without it an answer stops at the context's end with finish_reason "length". Models with a sliding
        window always roll, exactly."""
        self.model = model
        self.template = TEMPLATES[template or model.template]
        self.n_ctx = n_ctx
        self.kv_type = kv_type
        self.rolling = rolling
        self.reset()

    def reset(self) -> None:
        """Start a new conversation (the model and its image cache stay)."""
        self.cache = self.model.decoder.make_cache(self.n_ctx, kv_type=self.kv_type, rolling=self.rolling)
        self.turns: list[Turn] = []
        self.pending_images: list = []
        self.fed: list = []  # every token id / image embedding block given to the model, in order
        self._unfed: list[int] = []  # tokens owed to the cache before the next turn

    def add_image(self, image) -> None:
        """Queue an image (path, bytes or PIL image) for the next question."""
        self.pending_images.append(image)

    def ask(
        self,
        question: str,
        *,
        images: Sequence = (),
        max_tokens: int = 512,
        sampler: Sampler | None = None,
        logits_processors: Sequence[LogitsProcessor] = (),
        stop: Sequence[str] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[GenerationResponse]:
        """Stream the answer to `question` (about the queued images and `images`). An answer cut short
        (`should_stop`, max_tokens) stays in the conversation as far as it went; a question stopped before
        its first answer token is undone (see _undo_turn)."""
        new_images = [*self.pending_images, *images]
        pending, self.pending_images = self.pending_images, []  # an image that fails to load is dropped
        first = not self.turns
        text = self.template.turn(question, len(new_images), first)
        pieces = self._unfed + self.model.tokenize(text, add_bos=first)
        embeds = self.model.embed_prompt(pieces, new_images)
        if first and hasattr(self.cache[0], "pin"):
            for c in self.cache:
                c.pin(_pinned_length(pieces, len(embeds), self.model.tokenizer.bos_id))
        before = (len(self.fed), self._unfed, pending)
        self._unfed = []
        self.fed.extend(pieces)
        turn = Turn(question, len(new_images), prompt_end=len(self.fed))
        self.turns.append(turn)
        last = None
        try:
            for last in stream_generate(
                self.model.decoder,
                self.model.tokenizer,
                self.cache,
                input_embeddings=embeds,
                max_tokens=max_tokens,
                sampler=sampler,
                logits_processors=logits_processors,
                stop=stop,
                should_stop=should_stop,
            ):
                if last.token is not None:
                    turn.tokens.append(last.token)
                turn.answer += last.text
                yield last
        except BaseException:  # the prompt did not fit, or the caller stopped iterating (GeneratorExit)
            if turn.tokens:
                turn.finish_reason = "cancelled"
                self._close_answer(turn)
            else:
                self._undo_turn(before)
            raise
        if not turn.tokens:  # stopped while reading the prompt, which the cache no longer holds
            self._undo_turn(before)
            return
        turn.finish_reason = last.finish_reason
        self._close_answer(turn)

    def _undo_turn(self, before: tuple) -> None:
        """Forget a question whose prompt never reached the cache; images queued with add_image() wait for
        the next question (those passed to ask() are the caller's to pass again)."""
        n_fed, self._unfed, self.pending_images = before
        del self.fed[n_fed:]
        self.turns.pop()

    def _close_answer(self, turn: Turn) -> None:
        """Account for what the cache holds. The generation loop feeds every token it samples except the
        last one; an answer ends with </s> in the template. So an answer that ended on EOS owes only the
        EOS; one cut short (length, stop string, Ctrl-C) owes its last token and an EOS."""
        eos = self.model.tokenizer.eos_id
        last = turn.tokens[-1:]
        self.fed.extend(turn.tokens[:-1])
        self._unfed = ([] if last == [eos] else last) + [eos]

    def transcript(self) -> str:
        """The conversation so far in the template's text form."""
        messages = []
        for t in self.turns:
            messages.append({"role": "user", "content": t.question, "images": t.n_images})
            if t.finish_reason:
                messages.append({"role": "assistant", "content": t.answer})
        return self.template.render(messages)


def _pinned_length(pieces: Sequence, n_positions: int, bos_id: int) -> int:
    """Positions a rolling cache keeps for good: up to the end of the last image, else the BOS alone."""
    from .llava import IMAGE_SLOT

    if IMAGE_SLOT in pieces:
        after = len(pieces) - 1 - max(i for i, p in enumerate(pieces) if p is IMAGE_SLOT)
        return n_positions - after  # the tokens after the last image are one position each
    return 1 if pieces[:1] == [bos_id] else 0
