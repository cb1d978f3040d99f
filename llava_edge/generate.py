"""The one generation loop. Chat, the CLI and the Python API all iterate `stream_generate`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import Cancelled, ContextLengthError
from .sampling import LogitsProcessor, Sampler, make_sampler


@dataclass
class GenerationResponse:
    text: str  # text completed by this step (may be empty while a UTF-8 sequence or stop string is open)
    token: int | None
    finish_reason: str | None  # None while generating, then "stop" (EOS, stop string), "length", "cancelled"
    prompt_tokens: int
    generation_tokens: int
    prompt_seconds: float
    generation_seconds: float

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        return self.generation_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0


def prefill(
    model,
    cache,
    tokens=None,
    *,
    input_embeddings=None,
    chunk: int = 512,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Run the prompt through the model in chunks; returns the logits of its last position. `should_stop`
    is polled between layers; when it returns True the caches are restored to their state before the
    prompt and Cancelled is raised."""
    x = input_embeddings if input_embeddings is not None else np.asarray(tokens, dtype=np.int32)
    n = len(x)
    if n == 0:
        raise ValueError("empty prompt: nothing to condition on")
    room = cache[0].room
    if room is not None and n > room:
        raise ContextLengthError(f"prompt of {n} tokens does not fit: {room} of the context left")
    chunk = min(chunk, cache[0].max_chunk or chunk)
    stop = {} if should_stop is None else {"should_stop": should_stop}  # plain model callables take none
    marks = [c.checkpoint() for c in cache] if should_stop is not None else None
    try:
        logits = None
        for start in range(0, n, chunk):
            part = x[start : start + chunk]
            if input_embeddings is not None:
                logits = model(cache=cache, input_embeddings=part, **stop)
            else:
                logits = model(part, cache, **stop)
    except BaseException:
        if marks is not None:
            for c, mark in zip(cache, marks, strict=True):
                c.rollback(mark)
        raise
    if marks is not None:
        for c, mark in zip(cache, marks, strict=True):
            c.release(mark)
    return logits


def generate_step(
    model,
    cache,
    prompt: Sequence[int] | None = None,
    *,
    input_embeddings: np.ndarray | None = None,
    sampler: Sampler | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
    history: list[int] | None = None,
    prefill_chunk: int = 512,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[int]:
    """Prefill, then yield sampled tokens forever (the caller stops). `history` (the tokens so far, for
    repetition penalties) is extended in place. With `should_stop`, a forward pass it interrupts raises
    Cancelled with the caches as they were before that pass (before the prompt, during the prefill)."""
    sampler = sampler or make_sampler(temp=0.0)
    stop = {} if should_stop is None else {"should_stop": should_stop}
    history = history if history is not None else list(prompt or [])
    logits = prefill(
        model, cache, prompt, input_embeddings=input_embeddings, chunk=prefill_chunk, should_stop=should_stop
    )
    while True:
        for process in logits_processors:
            logits = process(history, logits)
        token = sampler(logits)
        history.append(token)
        yield token
        logits = model(np.array([token], np.int32), cache, **stop)


def stream_generate(
    model,
    tokenizer,
    cache,
    prompt: Sequence[int] | None = None,
    *,
    input_embeddings: np.ndarray | None = None,
    max_tokens: int = 256,
    sampler: Sampler | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
    stop: Sequence[str] = (),
    prefill_chunk: int = 512,
    continuation: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[GenerationResponse]:
    """Generate and stream text. The last response has finish_reason set and carries the totals.
    `continuation`: the text continues the prompt's text (keep a leading space), as in plain completion;
    otherwise it starts a new message (an answer), as in chat. `should_stop` is polled after every token
    and between layers (Ctrl-C): when it returns True the answer ends with finish_reason "cancelled"; a
    response with token None then says the stop came inside a forward pass, which was undone."""
    n_prompt = len(input_embeddings) if input_embeddings is not None else len(prompt or ())
    decoder = tokenizer.stream(continuation=continuation)
    held = ""  # decoded text not yet emitted: it might be the start of a stop string
    longest_stop = max((len(s) for s in stop), default=0)
    t0 = time.perf_counter()
    t_first = None

    def response(text, token, n_gen, reason=None):
        now = time.perf_counter()
        prompt_s = (t_first or now) - t0
        return GenerationResponse(text, token, reason, n_prompt, n_gen, prompt_s, now - (t_first or now))

    steps = generate_step(
        model,
        cache,
        prompt,
        input_embeddings=input_embeddings,
        sampler=sampler,
        logits_processors=logits_processors,
        prefill_chunk=prefill_chunk,
        should_stop=should_stop,
    )
    n_gen = 0
    try:
        # One response per sampled token; the last one carries the finish reason. Every token but the
        # last has been fed to the model (the cache holds it).
        for n_gen, token in enumerate(steps, start=1):
            if t_first is None:
                t_first = time.perf_counter()
            if token == tokenizer.eos_id:
                yield response(held + decoder.flush(), token, n_gen, "stop")
                return
            held += decoder.push(token)
            hit = min((i for i in (held.find(s) for s in stop) if i >= 0), default=-1)
            if hit >= 0:
                yield response(held[:hit], token, n_gen, "stop")
                return
            if should_stop is not None and should_stop():
                yield response(held + decoder.flush(), token, n_gen, "cancelled")
                return
            room = cache[0].room
            if n_gen >= max_tokens or (room is not None and room <= 0):
                yield response(held + decoder.flush(), token, n_gen, "length")
                return
            cut = len(held) - (longest_stop - 1) if longest_stop else len(held)
            yield response(held[: max(cut, 0)], token, n_gen)
            held = held[max(cut, 0) :]
    except Cancelled:
        # Stopped inside a forward pass (the prompt's, or the one feeding the last token), which left the
        # caches as they were: no new token, and the last one yielded is, as always, not in the cache.
        yield response(held + decoder.flush(), None, n_gen, "cancelled")
    finally:
        steps.close()
