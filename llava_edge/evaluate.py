"""Model quality: perplexity, agreement between two models (e.g. a quantized file and its F16 source), and
exact-answer accuracy of a LLaVA bundle on a labelled question set (`llava-edge eval`).

Every function returns a plain dict (JSON-serialisable) with a "kind" key; `format_table` prints any of them.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import LlavaEdgeError

BLOCK_ROWS = 64  # positions per log-softmax block: bounds the float64 temporaries to a few MiB


class EvalError(LlavaEdgeError):
    """An evaluation cannot run: text too short, mismatched models, a malformed question set."""


# -- loading ------------------------------------------------------------------------------------------


def _set_threads(threads: int | None) -> None:
    if threads:
        from . import _kernels

        _kernels.set_num_threads(int(threads))


def _gguf_path(path: str | os.PathLike) -> Path:
    from .bundle import MODEL_FILE

    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def load_text(path: str | os.PathLike):
    """(decoder, tokenizer) of a GGUF or a bundle (its decoder only: the vision tower is not opened)."""
    from .loader import load_text_model

    return load_text_model(_gguf_path(path))


def load_llava(path: str | os.PathLike, threads: int | None = None):
    from .llava import LlavaModel

    return LlavaModel.load(path, threads=threads)


# -- numerics -----------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of float32 logits [n, vocab]."""
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    x -= np.log(np.exp(x).sum(-1, keepdims=True))
    return x


def position_stats(a: np.ndarray, b: np.ndarray, targets: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per position of logits a, b [n, vocab]: KL(a || b), whether the top-1 tokens agree, and (with the
    next tokens `targets` [n], -1 where there is none) the negative log-likelihood under each model."""
    n = len(a)
    kl, same = np.zeros(n), np.zeros(n, bool)
    nll_a, nll_b = np.full(n, np.nan), np.full(n, np.nan)
    for s in range(0, n, BLOCK_ROWS):
        la, lb = log_softmax(a[s : s + BLOCK_ROWS]), log_softmax(b[s : s + BLOCK_ROWS])
        kl[s : s + BLOCK_ROWS] = np.maximum((np.exp(la) * (la - lb)).sum(-1), 0.0)
        same[s : s + BLOCK_ROWS] = la.argmax(-1) == lb.argmax(-1)
        if targets is not None:
            t = targets[s : s + BLOCK_ROWS]
            ok = np.flatnonzero(t >= 0)
            nll_a[s + ok] = -la[ok, t[ok]]
            nll_b[s + ok] = -lb[ok, t[ok]]
    return {"kl": kl, "same_top1": same, "nll_a": nll_a, "nll_b": nll_b}


def _ppl(nll: np.ndarray) -> tuple[float, float]:
    """exp(mean NLL) and its standard error as llama.cpp's perplexity tool reports it."""
    count = len(nll)
    mean = float(nll.mean())
    ppl = math.exp(mean)
    var = float((nll * nll).mean()) - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if count > 1 and var > 0 else 0.0
    return ppl, err


# -- perplexity ---------------------------------------------------------------------------------------


def chunk_plan(n_tokens: int, ctx: int, stride: int | None) -> list[tuple[int, int]]:
    """(chunk start, first scored position in the chunk) for llama.cpp's two perplexity methods.

    stride None: chunks [i*ctx, (i+1)*ctx), each scoring the logits of positions ctx/2 .. ctx-2 (the second
    half, so every prediction has at least ctx/2 tokens of context). stride S (llama.cpp --ppl-stride):
    chunks start every S tokens and score positions ctx-S-1 .. ctx-2 (the last S predictions).
    """
    if stride is None:
        return [(i * ctx, ctx // 2) for i in range(n_tokens // ctx)]
    if not 0 < stride < ctx:
        raise EvalError(f"stride must be in 1..{ctx - 1} (ctx - 1), got {stride}")
    n_chunks = (n_tokens - ctx + stride - 1) // stride if n_tokens > ctx else 0
    return [(i * stride, ctx - stride - 1) for i in range(n_chunks)]


def perplexity(
    model_path: str | os.PathLike,
    text: str,
    *,
    ctx: int = 512,
    stride: int | None = None,
    threads: int | None = None,
    kv_type: str = "f16",
) -> dict:
    """Perplexity of `text` the way llama.cpp's `llama-perplexity` computes it (see `chunk_plan`): the text
    is tokenized once (with BOS when the model's tokenizer adds one), each chunk's first token is replaced by
    BOS (likewise), and each chunk runs from an empty cache.
    Returns {"ppl", "ppl_err", "n_tokens", "n_chunks", "n_scored", ...}."""
    _set_threads(threads)
    model, tokenizer = load_text(model_path)
    tokens = np.array(tokenizer.encode(text), np.int32)
    if ctx < 4:
        raise EvalError(f"ctx must be at least 4, got {ctx}")
    plan = chunk_plan(len(tokens), ctx, stride)
    if not plan:
        raise EvalError(
            f"the text is {len(tokens)} tokens; perplexity with ctx={ctx} needs more than {ctx} "
            "(use a longer text or a smaller --ctx)"
        )
    nll = []
    for start, first in plan:
        chunk = tokens[start : start + ctx].copy()
        if tokenizer.add_bos:
            chunk[0] = tokenizer.bos_id
        logits = model(chunk, model.make_cache(ctx, kv_type=kv_type), all_logits=True)
        for s in range(first, ctx - 1, BLOCK_ROWS):
            e = min(s + BLOCK_ROWS, ctx - 1)
            lp = log_softmax(logits[s:e])
            nll.append(-lp[np.arange(e - s), tokens[start + s + 1 : start + e + 1]])
    values = np.concatenate(nll)
    ppl, err = _ppl(values)
    return {
        "kind": "perplexity",
        "model": str(model_path),
        "ctx": ctx,
        "stride": stride,
        "n_tokens": int(len(tokens)),
        "n_chunks": len(plan),
        "n_scored": int(len(values)),
        "nll": float(values.mean()),
        "ppl": ppl,
        "ppl_err": err,
    }


# -- comparing two models -----------------------------------------------------------------------------


def _windows(ids: Sequence[int], ctx: int, bos: int | None) -> Iterable[tuple[int, np.ndarray]]:
    """A long prompt in pieces of ctx tokens, each from an empty cache; pieces after the first start at
    their own BOS (as perplexity chunks do)."""
    ids = np.asarray(ids, np.int32)
    for s in range(0, len(ids), ctx):
        piece = ids[s : s + ctx].copy()
        if s and bos is not None:
            piece[0] = bos
        yield s, piece


class _Tally:
    """Per-position statistics of one compared model, gathered over all prompts."""

    def __init__(self) -> None:
        self.kl: list[np.ndarray] = []
        self.same: list[np.ndarray] = []
        self.nll_a: list[np.ndarray] = []
        self.nll_b: list[np.ndarray] = []

    def add(self, stats: dict[str, np.ndarray]) -> None:
        self.kl.append(stats["kl"])
        self.same.append(stats["same_top1"])
        self.nll_a.append(stats["nll_a"])
        self.nll_b.append(stats["nll_b"])


def compare(
    model_a: str | os.PathLike,
    model_b: str | os.PathLike,
    prompts: Sequence[str | Sequence[int]] = (),
    **kwargs,
) -> dict:
    """How far model_b's next-token distributions are from model_a's (the reference) on the same inputs;
    see `compare_many` for the arguments and the result."""
    return compare_many(model_a, [model_b], prompts, **kwargs)[0]


def compare_many(
    model_a: str | os.PathLike,
    models_b: Sequence[str | os.PathLike],
    prompts: Sequence[str | Sequence[int]] = (),
    *,
    images: Sequence = (),
    image_prompt: str = "Describe the image in detail.",
    answer_tokens: int = 32,
    ctx: int = 512,
    threads: int | None = None,
    kv_type: str = "f16",
) -> list[dict]:
    """Compare each of `models_b` with the reference `model_a` (whose logits are computed once per input).

    `prompts`: texts (tokenized as the model says: with BOS for Mistral) or token id lists; prompts longer
    than ctx run in ctx pieces.
    `images`: for LLaVA bundles, each image becomes a prompt (`image_prompt` in the bundle's chat template)
    followed by model_a's greedy answer of up to `answer_tokens` tokens, scored at every position (teacher
    forcing: all models see the same answer). Per model_b: mean / median / p99 / max KL(a || b), the worst
    position (input kind, prompt index, position, the token id there, -1 inside an image), top-1
    agreement, and both models' perplexity over the text positions that have a next token.
    """
    _set_threads(threads)
    if not prompts and not images:
        raise EvalError("nothing to compare: give text prompts, token id lists, or images")
    if not models_b:
        raise EvalError("nothing to compare with: give at least one model_b")
    tallies = [_Tally() for _ in models_b]
    where: list[tuple[str, int, int, int]] = []
    if prompts:
        _compare_texts(model_a, models_b, prompts, ctx, kv_type, tallies, where)
    if images:
        _compare_images(model_a, models_b, images, image_prompt, answer_tokens, kv_type, tallies, where)
    return [
        _summarize(model_a, b, t, where, len(prompts), len(images))
        for b, t in zip(models_b, tallies, strict=True)
    ]


def _compare_texts(model_a, models_b, prompts, ctx, kv_type, tallies, where) -> None:
    a, tok = load_text(model_a)
    others = [load_text(b) for b in models_b]
    for path, (b, _) in zip(models_b, others, strict=True):
        if b.args.vocab_size != a.args.vocab_size:
            raise EvalError(
                f"{model_a} has {a.args.vocab_size} tokens and {path} {b.args.vocab_size}: "
                "different vocabularies"
            )
    for p, prompt in enumerate(prompts):
        ids = tok.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise EvalError(f"prompt #{p} is empty")
        for path, (_, tok_b) in zip(models_b, others, strict=True):
            if isinstance(prompt, str) and tok_b.encode(prompt) != ids:
                raise EvalError(f"{model_a} and {path} tokenize prompt #{p} differently")
        for s, piece in _windows(ids, ctx, tok.bos_id if tok.add_bos else None):
            targets = np.full(len(piece), -1, np.int64)
            nxt = np.asarray(ids[s + 1 : s + len(piece) + 1], np.int64)
            targets[: len(nxt)] = nxt
            ref = a(piece, a.make_cache(len(piece), kv_type=kv_type), all_logits=True)
            for (b, _), tally in zip(others, tallies, strict=True):
                logits = b(piece, b.make_cache(len(piece), kv_type=kv_type), all_logits=True)
                tally.add(position_stats(ref, logits, targets))
            where.extend(("text", p, s + i, int(piece[i])) for i in range(len(piece)))


def _compare_images(model_a, models_b, images, image_prompt, answer_tokens, kv_type, tallies, where) -> None:
    from .chat import TEMPLATES
    from .generate import generate_step

    a = load_llava(model_a)
    others = [load_llava(b) for b in models_b]
    for i, image in enumerate(images):
        text = TEMPLATES[a.template].turn(image_prompt, 1, first=True)
        pieces = a.tokenize(text, add_bos=True)
        for path, b in zip(models_b, others, strict=True):
            if b.tokenize(text, add_bos=True) != pieces:
                raise EvalError(f"{model_a} and {path} tokenize the image prompt differently")
        prompt = a.embed_prompt(pieces, [image])
        n_ctx = len(prompt) + answer_tokens + 1
        answer: list[int] = []
        steps = generate_step(
            a.decoder, a.decoder.make_cache(n_ctx, kv_type=kv_type), input_embeddings=prompt
        )
        for token in steps:
            if token == a.tokenizer.eos_id or len(answer) >= answer_tokens:
                break
            answer.append(token)
        steps.close()

        ref = _run_embedded(a, prompt, answer, n_ctx, kv_type)
        for b, tally in zip(others, tallies, strict=True):
            logits = _run_embedded(b, b.embed_prompt(pieces, [image]), answer, n_ctx, kv_type)
            tally.add(position_stats(ref, logits))
        flat = [p if isinstance(p, int) else -1 for p in pieces]
        tokens = _expand_image_positions(flat, len(prompt)) + answer
        where.extend(("image", i, pos, tokens[pos]) for pos in range(len(ref)))


def _run_embedded(m, prompt: np.ndarray, answer: list[int], n_ctx: int, kv_type: str) -> np.ndarray:
    """All logits of a LLaVA model for prompt embeddings followed by the answer's tokens."""
    x = np.concatenate([prompt, m.decoder.embed(answer)]) if answer else prompt
    return m.decoder(cache=m.decoder.make_cache(n_ctx, kv_type=kv_type), input_embeddings=x, all_logits=True)


def _summarize(model_a, model_b, t: _Tally, where, n_prompts: int, n_images: int) -> dict:
    kl, same = np.concatenate(t.kl), np.concatenate(t.same)
    worst = int(kl.argmax())
    kind, prompt_index, position, token = where[worst]
    result = {
        "kind": "compare",
        "model_a": str(model_a),
        "model_b": str(model_b),
        "n_prompts": n_prompts,
        "n_images": n_images,
        "n_positions": int(len(kl)),
        "mean_kl": float(kl.mean()),
        "median_kl": float(np.median(kl)),
        "p99_kl": float(np.quantile(kl, 0.99)),
        "max_kl": float(kl[worst]),
        "worst": {"input": kind, "prompt": prompt_index, "position": position, "token": token},
        "top1_agreement": float(same.mean()),
    }
    na, nb = np.concatenate(t.nll_a), np.concatenate(t.nll_b)
    ok = ~np.isnan(na)
    if ok.sum() > 1:
        result["ppl_a"], result["ppl_a_err"] = _ppl(na[ok])
        result["ppl_b"], result["ppl_b_err"] = _ppl(nb[ok])
    return result


def _expand_image_positions(pieces: list[int], n_positions: int) -> list[int]:
    """Token ids per prompt position, -1 over each image's span (all image spans have the same length)."""
    n_images = pieces.count(-1)
    span = (n_positions - (len(pieces) - n_images)) // max(n_images, 1)
    out: list[int] = []
    for p in pieces:
        out.extend([-1] * span if p == -1 else [p])
    return out


# -- labelled question sets ---------------------------------------------------------------------------

_NUMBERS = "zero one two three four five six seven eight nine ten".split()
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles dropped, number words as digits, single spaces: the
    comparison VQA-style benchmarks use for exact answers."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    words = [str(_NUMBERS.index(w)) if w in _NUMBERS else w for w in words if w not in _ARTICLES]
    return " ".join(words)


def load_question_set(path: str | os.PathLike) -> list[dict]:
    """A JSON list of {"image", "question", "answer"} and optionally "type" (a string, e.g. "color", that
    accuracy counts apart); image paths are relative to the JSON's folder."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: cannot read the question set: {e}") from None
    if not isinstance(items, list) or not items:
        raise EvalError(f"{path}: expected a non-empty JSON list of {{image, question, answer}}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("image", "question")):
            raise EvalError(f"{path}: item #{i} needs string fields image and question")
        answer = item.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise EvalError(f"{path}: item #{i} needs an answer (a string or a number)")
        qtype = item.get("type")
        if qtype is not None and not isinstance(qtype, str):
            raise EvalError(f"{path}: item #{i}: type must be a string, found {type(qtype).__name__}")
        image = (path.parent / item["image"]).resolve()
        if not image.is_file():
            raise EvalError(f"{path}: item #{i}: image {image} does not exist")
        out.append({"image": str(image), "question": item["question"], "answer": answer})
        if qtype is not None:
            out[-1]["type"] = qtype
    return out


def accuracy(
    bundle: str | os.PathLike,
    question_set: str | os.PathLike,
    *,
    max_tokens: int = 32,
    ctx: int = 4096,
    threads: int | None = None,
    kv_type: str = "f16",
    limit: int | None = None,
) -> dict:
    """Exact-answer accuracy: each question about its image, answered greedily in a fresh conversation of
    up to `ctx` positions, is right when its normalized text equals the normalized label (see
    `normalize_answer`). `limit`: only the first questions. Questions with a "type" are also counted per
    type ("by_type": {type: {"n", "correct", "accuracy"}})."""
    from .sampling import make_sampler

    if limit is not None and limit < 1:
        raise EvalError(f"limit must be at least 1, got {limit}")
    items = load_question_set(question_set)[:limit]
    _set_threads(threads)
    model = load_llava(bundle, threads)
    greedy = make_sampler(temp=0.0)
    rows = []
    for item in items:
        session = model.chat(n_ctx=min(ctx, model.decoder.args.context_length), kv_type=kv_type)
        answer = "".join(
            r.text
            for r in session.ask(
                item["question"], images=[item["image"]], max_tokens=max_tokens, sampler=greedy
            )
        )
        right = normalize_answer(answer) == normalize_answer(item["answer"])
        rows.append({**item, "predicted": answer.strip(), "correct": right})
    n_right = sum(r["correct"] for r in rows)
    by_type: dict[str, dict] = {}
    for r in rows:
        if "type" in r:
            t = by_type.setdefault(r["type"], {"n": 0, "correct": 0})
            t["n"] += 1
            t["correct"] += int(r["correct"])
    for t in by_type.values():
        t["accuracy"] = t["correct"] / t["n"]
    return {
        "kind": "accuracy",
        "model": str(bundle),
        "question_set": str(question_set),
        "n": len(rows),
        "correct": n_right,
        "accuracy": n_right / len(rows),
        "by_type": dict(sorted(by_type.items())),
        "items": rows,
    }


# -- output -------------------------------------------------------------------------------------------


def format_table(result: dict) -> str:
    """A result of perplexity / compare / accuracy (or a list of them) as an aligned text table."""
    if isinstance(result, list):
        if len(result) > 1 and all(r.get("kind") == "compare" for r in result):
            return _compare_rows(result)
        return "\n\n".join(format_table(r) for r in result)
    kind = result.get("kind")
    if kind == "perplexity":
        how = "second half of each chunk" if result["stride"] is None else f"stride {result['stride']}"
        rows = [
            ("model", result["model"]),
            ("tokens", f"{result['n_tokens']} ({result['n_chunks']} chunks of {result['ctx']}, {how})"),
            ("scored", str(result["n_scored"])),
            ("PPL", f"{result['ppl']:.4f} +/- {result['ppl_err']:.5f}"),
        ]
    elif kind == "compare":
        w = result["worst"]
        rows = [
            ("reference (a)", result["model_a"]),
            ("compared (b)", result["model_b"]),
            (
                "positions",
                f"{result['n_positions']} ({result['n_prompts']} prompts, {result['n_images']} images)",
            ),
            ("mean KL(a||b)", f"{result['mean_kl']:.6f}"),
            ("median KL", f"{result['median_kl']:.6f}"),
            ("99th pct KL", f"{result['p99_kl']:.6f}"),
            ("max KL", f"{result['max_kl']:.6f} ({w['input']} #{w['prompt']}, position {w['position']})"),
            ("top-1 agreement", f"{100 * result['top1_agreement']:.2f} %"),
        ]
        if "ppl_a" in result:
            rows.append(("PPL a", f"{result['ppl_a']:.4f} +/- {result['ppl_a_err']:.5f}"))
            rows.append(("PPL b", f"{result['ppl_b']:.4f} +/- {result['ppl_b_err']:.5f}"))
    elif kind == "accuracy":
        rows = [
            ("model", result["model"]),
            ("questions", result["question_set"]),
            ("accuracy", f"{100 * result['accuracy']:.1f} % ({result['correct']}/{result['n']})"),
        ]
        for name, t in result.get("by_type", {}).items():
            rows.append((f"  {name}", f"{100 * t['accuracy']:.1f} % ({t['correct']}/{t['n']})"))
        for r in result["items"]:
            mark = "ok " if r["correct"] else "ERR"
            rows.append((mark, f"{r['question']!r}: {r['predicted']!r} (expected {r['answer']!r})"))
    else:
        raise ValueError(f"not an evaluation result: kind {kind!r}")
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _compare_rows(results: list[dict]) -> str:
    """Several models compared with one reference: one row each."""
    head = ("model (b)", "mean KL", "p99 KL", "max KL", "top-1", "PPL")
    rows = [head]
    for r in results:
        ppl = f"{r['ppl_b']:.3f} +/- {r['ppl_b_err']:.3f}" if "ppl_b" in r else "-"
        rows.append(
            (
                r["model_b"],
                f"{r['mean_kl']:.6f}",
                f"{r['p99_kl']:.5f}",
                f"{r['max_kl']:.5f}",
                f"{100 * r['top1_agreement']:.2f} %",
                ppl,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    r0 = results[0]
    ref_ppl = f", PPL {r0['ppl_a']:.3f} +/- {r0['ppl_a_err']:.3f}" if "ppl_a" in r0 else ""
    lines = [f"reference (a): {r0['model_a']} ({r0['n_positions']} positions{ref_ppl})"]
    lines += [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(lines)
