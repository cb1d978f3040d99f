"""Ctrl-C: a forward pass stops between layers and leaves the caches as they were; the answer so far stays in
the conversation and the next question works; in the terminal chat a second Ctrl-C exits with 130."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_llava import save_tiny_llava  # noqa: E402

from llava_edge.convert.llava_export import export_llava  # noqa: E402
from llava_edge.errors import Cancelled  # noqa: E402
from llava_edge.generate import prefill, stream_generate  # noqa: E402
from llava_edge.llava import IMAGE_SLOT, LlavaModel  # noqa: E402
from llava_edge.loader import load_text_model  # noqa: E402
from llava_edge.sampling import make_sampler  # noqa: E402
from llava_edge.tiny import write_tiny_model  # noqa: E402

GREEDY = make_sampler(temp=0)


def picture(seed: int, w: int = 40, h: int = 30):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def stop_after(n_polls: int):
    """A should_stop that says stop at its n-th call (1-based), and counts its calls."""
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) >= n_polls

    should_stop.calls = calls
    return should_stop


def cache_state(cache) -> list:
    return [(c.offset, c.keys.copy(), c.values.copy(), c.positions.copy()) for c in cache]


def assert_same_state(cache, state) -> None:
    for c, (offset, k, v, pos) in zip(cache, state, strict=True):
        assert c.offset == offset
        n = offset if not hasattr(c, "ring") else len(pos)  # a full cache's slots past the offset are free
        assert (c.positions[:n] == pos[:n]).all()
        np.testing.assert_array_equal(c.keys[:n], k[:n])
        np.testing.assert_array_equal(c.values[:n], v[:n])


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    kw = dict(file_type="f32", n_layers=3, context_length=256)
    return {
        "full": write_tiny_model(root / "full.gguf", sliding_window=None, **kw),
        "window": write_tiny_model(root / "window.gguf", sliding_window=8, **kw),
    }


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    hf = save_tiny_llava(root / "hf", "v1.5", "hf", seed=3, sliding_window=None)
    return export_llava(hf, root / "bundle", "f16", progress=False)


# -- the library ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["full", "window", "pinned"])
@pytest.mark.parametrize("stop_at", [1, 2, 3])
def test_cancel_between_layers_restores_every_cache(text_models, kind, stop_at):
    model, tok = load_text_model(text_models["window" if kind == "window" else "full"])
    rng = np.random.default_rng(0)
    ids = rng.integers(3, model.args.vocab_size, 60).astype(np.int32)
    cache = model.make_cache(40, kv_type="f32", rolling=kind == "pinned", n_pinned=5)
    model(ids[:30], cache)  # a cache with history, past the window
    before = cache_state(cache)
    for chunk in (ids[30:31], ids[30:50]):  # a decode step and a prefill chunk that wraps the ring
        if kind == "full" and len(chunk) > 10:
            chunk = chunk[:10]
        should_stop = stop_after(stop_at)
        with pytest.raises(Cancelled):
            model(chunk, cache, should_stop=should_stop)
        assert len(should_stop.calls) == stop_at  # polled once per layer, and stopped at once
        assert_same_state(cache, before)
        assert all(not getattr(c, "_undo", None) and not getattr(c, "_marks", None) for c in cache)
    # the same step again, uncancelled, equals a run that was never interrupted
    fresh = model.make_cache(40, kv_type="f32", rolling=kind == "pinned", n_pinned=5)
    model(ids[:30], fresh)
    np.testing.assert_array_equal(model(ids[30:31], cache), model(ids[30:31], fresh))


@pytest.mark.parametrize("kind", ["window", "pinned"])
def test_cancelled_prefill_of_many_chunks_is_undone_exactly(text_models, kind):
    model, _ = load_text_model(text_models["window" if kind == "window" else "full"])
    ids = np.random.default_rng(1).integers(3, model.args.vocab_size, 80).astype(np.int32)
    cache = model.make_cache(24, kv_type="f32", rolling=kind == "pinned", n_pinned=4)
    prefill(model, cache, ids[:20], chunk=7)
    before = cache_state(cache)
    n_layers = model.args.n_layers
    should_stop = stop_after(4 * n_layers + 2)  # inside the fifth chunk, long after the ring turned over
    with pytest.raises(Cancelled):
        prefill(model, cache, ids[20:], chunk=7, should_stop=should_stop)
    assert_same_state(cache, before)
    assert all(not c._undo and not c._marks for c in cache)
    # and the prompt read again, uncancelled, gives what a never-interrupted cache gives
    fresh = model.make_cache(24, kv_type="f32", rolling=kind == "pinned", n_pinned=4)
    prefill(model, fresh, ids[:20], chunk=7)
    np.testing.assert_array_equal(
        prefill(model, cache, ids[20:], chunk=7), prefill(model, fresh, ids[20:], chunk=7)
    )


def test_stream_generate_cancelled_inside_a_forward_pass(text_models):
    model, tok = load_text_model(text_models["full"])
    prompt = tok.encode("the red circle is on the left")
    cache = model.make_cache(kv_type="f32")
    n_layers = model.args.n_layers
    # polls: once per layer in the prefill, then per token: the loop's own poll and one per layer
    should_stop = stop_after(n_layers + 3 * (1 + n_layers) + 2)
    steps = list(
        stream_generate(model, tok, cache, prompt, max_tokens=50, sampler=GREEDY, should_stop=should_stop)
    )
    last = steps[-1]
    assert last.finish_reason == "cancelled" and last.token is None
    assert [s.token for s in steps[:-1]] == [s.token for s in steps if s.token is not None]
    n_tokens = len(steps) - 1
    assert n_tokens == 4 and cache[0].offset == len(prompt) + n_tokens - 1  # the last token is not fed


def test_cancelled_prompt_is_dropped_and_the_session_goes_on(bundle):
    model = LlavaModel.load(bundle)
    session = model.chat(kv_type="f32")
    list(session.ask("What is this?", images=[picture(1)], max_tokens=5, sampler=GREEDY))
    fed, unfed, offset = list(session.fed), list(session._unfed), session.cache[0].offset
    session.add_image(picture(2))
    steps = list(session.ask("And this one?", max_tokens=5, sampler=GREEDY, should_stop=stop_after(1)))
    assert [s.finish_reason for s in steps] == ["cancelled"] and steps[0].generation_tokens == 0
    assert (session.fed, session._unfed, session.cache[0].offset) == (fed, unfed, offset)
    assert len(session.turns) == 1 and len(session.pending_images) == 1  # the image waits for the next one
    answer = [s.token for s in session.ask("And this one?", max_tokens=5, sampler=GREEDY)]
    again = model.chat(kv_type="f32")
    list(again.ask("What is this?", images=[picture(1)], max_tokens=5, sampler=GREEDY))
    assert answer == [
        s.token for s in again.ask("And this one?", images=[picture(2)], max_tokens=5, sampler=GREEDY)
    ]


def test_answer_cancelled_mid_forward_stays_and_the_next_question_is_exact(bundle):
    model = LlavaModel.load(bundle)
    session = model.chat(kv_type="f32")
    n_layers = model.decoder.args.n_layers
    should_stop = stop_after(n_layers + 4 * (1 + n_layers) + 2)  # in the forward pass feeding the 5th token
    steps = list(session.ask("What is this?", images=[picture(1)], max_tokens=50, should_stop=should_stop))
    first = session.turns[0]
    assert first.finish_reason == "cancelled" and len(first.tokens) == 5
    assert first.answer == "".join(s.text for s in steps)
    answer = [s.token for s in session.ask("Go on.", max_tokens=6, sampler=GREEDY)]
    # a cold run over exactly what the session says it fed gives the same answer
    pieces = session.fed[: session.turns[1].prompt_end]
    assert pieces.count(IMAGE_SLOT) == 1
    cold = model.decoder.make_cache(kv_type="f32")
    emb = model.embed_prompt(pieces, [picture(1)])
    steps = stream_generate(
        model.decoder, model.tokenizer, cold, input_embeddings=emb, max_tokens=6, sampler=GREEDY
    )
    assert [s.token for s in steps] == answer


# -- the terminal --------------------------------------------------------------------------------------------


class Terminal:
    """A child process on a pseudo-terminal, its output collected by a thread."""

    def __init__(self, argv: list[str]):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.master, self.out, self.lock = master, b"", threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    return
                if not data:
                    return
                with self.lock:
                    self.out += data
            elif self.proc.poll() is not None:
                return

    def text(self, start: int = 0) -> str:
        with self.lock:
            return self.out[start:].decode(errors="replace")

    def mark(self) -> int:
        with self.lock:
            return len(self.out)

    def expect(self, pattern: str, start: int, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text(start))
            if m:
                return m
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} in the output after byte {start}:\n{self.text(start)[-3000:]}")

    def send(self, line: str) -> int:
        start = self.mark()
        os.write(self.master, line.encode() + b"\n")
        return start

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.thread.join(5)
        os.close(self.master)


def answer_started(term: Terminal, start: int, n_chars: int = 40) -> None:
    """Wait until the answer has streamed n_chars after the progress note was erased."""
    m = term.expect(r"\x1b\[K", start)  # the note is erased at the first token
    term.expect(rf"[\s\S]{{{n_chars}}}", start + m.end())


@pytest.fixture
def chat_terminal(bundle, tmp_path):
    img = tmp_path / "picture.png"
    picture(5, 64, 48).save(img)
    # long answers: sampling at temperature 1 runs on to the end of the context (512)
    argv = [sys.executable, "-m", "llava_edge.cli", "chat", str(img), "-m", str(bundle), "-n", "100000"]
    term = Terminal([*argv, "--temp", "1", "--top-k", "0", "--min-p", "0", "--seed", "1"])
    yield term
    term.close()


def test_ctrl_c_stops_the_answer_and_the_next_question_is_answered(chat_terminal):
    term = chat_terminal
    term.expect(r"> ", 0)
    start = term.send("Describe the picture.")
    answer_started(term, start)
    term.interrupt()
    m = term.expect(r"\[stopped\][\s\S]*?\[prompt: \d+ tokens[\s\S]*?> ", start)
    assert term.proc.poll() is None
    start = term.send("What colours are in it?")  # the same session: the image and the answer are in it
    m = term.expect(r"\[prompt: (\d+) tokens", start)
    assert int(m.group(1)) < 40  # only the new question was read: the image stayed in the cache
    term.expect(r"> ", start + m.end())
    start = term.mark()
    term.interrupt()  # Ctrl-C at the prompt: leave
    assert term.proc.wait(30) == 130
    assert "Traceback" not in term.text()


def test_second_ctrl_c_during_an_answer_exits_with_130(monkeypatch):
    """The first Ctrl-C only asks the answer to stop; one that comes before it has (the vision tower, which
    cannot be interrupted, is still running) leaves at once. Two signals sent together to a process arrive
    as one, so this runs in-process with the signals spaced by the session itself."""
    from llava_edge.generate import GenerationResponse
    from llava_edge.repl import stream_answer

    class SlowSession:
        pending_images: list = []

        def ask(self, question, *, should_stop, **gen):
            os.kill(os.getpid(), signal.SIGINT)
            yield GenerationResponse("a", 5, None, 3, 1, 0.1, 0.1)
            assert should_stop()  # the first Ctrl-C was seen, but this step does not look yet
            os.kill(os.getpid(), signal.SIGINT)
            yield GenerationResponse("b", 6, None, 3, 2, 0.1, 0.1)
            raise AssertionError("the second Ctrl-C did not end the program")

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        stream_answer(SlowSession(), "q?", verbose=False)
    assert exit_info.value.code == 130
    assert signal.getsignal(signal.SIGINT) is previous  # the answer's handler is gone again
