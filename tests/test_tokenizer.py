"""The tokenizer against sentencepiece (the real Mistral model) and llama.cpp's vocab test vectors.

Every expected id comes from sentencepiece, llama.cpp or a constant published with the model, never from
our own code.
"""

from __future__ import annotations

import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llava_edge.errors import TokenizerError
from llava_edge.tokenizer import Tokenizer, TokenType

# -- building our tokenizer from sentencepiece ---------------------------------------------------------


def tokenizer_from_sentencepiece(sp) -> Tokenizer:
    """Our Tokenizer with the pieces, scores and types of a loaded `sentencepiece.SentencePieceProcessor`,
    types mapped to the GGUF codes the way a converter writes them."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    # The processor API cannot tell user-defined from normal pieces; the model proto can.
    proto = pb.ModelProto.FromString(sp.serialized_model_proto())
    user_defined = {
        i for i, p in enumerate(proto.pieces) if p.type == pb.ModelProto.SentencePiece.USER_DEFINED
    }

    def kind(i: int) -> int:
        if sp.is_control(i):
            return 3
        if sp.is_unknown(i):
            return 2
        if sp.is_byte(i):
            return 6
        if sp.is_unused(i):
            return 5
        return 4 if i in user_defined else 1

    n = sp.get_piece_size()
    return Tokenizer(
        [sp.id_to_piece(i) for i in range(n)],
        [sp.get_score(i) for i in range(n)],
        [kind(i) for i in range(n)],
        bos_id=sp.bos_id() if sp.bos_id() >= 0 else None,
        eos_id=sp.eos_id() if sp.eos_id() >= 0 else None,
        unk_id=sp.unk_id() if sp.unk_id() >= 0 else None,
        pad_id=sp.pad_id() if sp.pad_id() >= 0 else None,
    )


def _edited_sentencepiece(path: Path, edit):
    """A sentencepiece processor for the Mistral model after `edit(model_proto)`."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto.FromString(path.read_bytes())
    edit(proto)
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


@pytest.fixture(scope="module")
def sp(mistral_tokenizer_model):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(mistral_tokenizer_model))


@pytest.fixture(scope="module")
def tok(sp) -> Tokenizer:
    return tokenizer_from_sentencepiece(sp)


# "▁worl" and "mage" join a neighbour into a vocabulary piece ("▁world", "▁image") unless kept whole
USER_PIECES = ["<image>", "<im", "<|im_start|>", "▁▁<tool>", "ello▁w", "▁worl", "mage"]


@pytest.fixture(scope="module")
def sp_user_unused(mistral_tokenizer_model):
    """Mistral with user-defined pieces added, a few hundred pieces unused and three made control."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    def edit(proto):
        kind = pb.ModelProto.SentencePiece
        for piece in USER_PIECES:
            proto.pieces.add(piece=piece, score=0.0, type=kind.USER_DEFINED)
        normal = [i for i, p in enumerate(proto.pieces) if p.type == kind.NORMAL]
        chosen = random.Random(7).sample(normal, 300)
        chosen += [
            i for i, p in enumerate(proto.pieces) if p.piece in ("▁Hello", "▁world", "ello", "▁the", "in")
        ]
        for i in chosen:
            proto.pieces[i].type = kind.UNUSED
        for p in proto.pieces:  # sentencepiece never merges into a control piece (llama.cpp does)
            if p.piece in ("▁model", "ing", "▁token"):
                p.type = kind.CONTROL

    return _edited_sentencepiece(mistral_tokenizer_model, edit)


@pytest.fixture(scope="module")
def sp_no_byte_fallback(mistral_tokenizer_model):
    """Mistral without byte fallback (its byte pieces turn normal), and a few unused pieces."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    def edit(proto):
        proto.trainer_spec.byte_fallback = False
        for p in proto.pieces:
            if p.type == pb.ModelProto.SentencePiece.BYTE:
                p.type = pb.ModelProto.SentencePiece.NORMAL
            if p.piece in ("љ", "ж", "ы", "▁▁"):  # unused single characters count as unknown
                p.type = pb.ModelProto.SentencePiece.UNUSED

    return _edited_sentencepiece(mistral_tokenizer_model, edit)


# -- the test strings ----------------------------------------------------------------------------------

FIXED = [
    "",
    " ",
    "  ",
    "   ",
    " " * 17,
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \t \n ",
    "\t\n",
    "\n \n",
    "Hello world",
    " Hello world",
    "Hello world ",
    "  Hello  world  ",
    "Hello\nworld",
    "Hello\tworld",
    "<s>",
    "</s>",
    "<unk>",
    "[INST]",
    "[/INST]",
    "<s>[INST] What is this? [/INST]",
    "</s><s>",
    "<0x41>",
    "▁",
    "▁▁x",
    "x▁",
    "\u2581 \u2581",
    "\ufffd",
    "\x00",
    "a\x00b",
    "\ue000",
    "\U0010fffd",
    "\U00020000",
    "€",
    "€€€",
    "a€b",
    "1234567890",
    "3.14159",
    "-42",
    "1,000,000",
    "0x1F",
    "2024-05-01T12:00:00Z",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "🇫🇷🇩🇪",
    "👍🏽",
    "e\u0301",
    "Z\u0351\u0352\u0353a\u0354\u0355",
    "\u200b",
    "a\u200db",
    "\ufeffBOM",
    "\u00a0nbsp\u00a0",
    "\u3000",
    "ﬁ ﬀ",
    "Ａ１",
    "µ",
    "ß",
    "İ",
    "ǅ",
    "Ω",
    "\u0000\u0001\u001f\u007f",
]

WORDS = (
    "the of and to in is was for on that with as by at from it be this are have an which or not but his "
    "Hello world model token image vision language quantized kernel cache llama mistral LLaVA GGUF "
    "don't I'm it's we'll e.g. i.e. etc. U.S.A. Dr. Mr. O'Neil naïve café résumé coöperate façade"
).split()
PUNCT = list(".,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`") + [
    "...",
    "--",
    "—",
    "–",
    "«",
    "»",
    "“",
    "”",
    "’",
    "¿",
    "¡",
]
CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    '#include <stdio.h>\nint main(void) {\n\tprintf("hi\\n");\n}\n',
    "SELECT name, COUNT(*) FROM t WHERE x > 10 GROUP BY name;",
    "  if x:\n      pass\n  else:\n\t\tbreak",
    '<div class="a">&nbsp;</div>',
    "$ ls -la | grep '.py' && echo done",
    "x = [i for i in range(10) if i % 2 == 0]",
]
EMOJI = ["😀", "🚀", "❤️", "👍🏽", "👨‍💻", "👨‍👩‍👧", "🏳️‍🌈", "🇯🇵", "🇺🇸", "🫠", "✅", "🧑🏾‍🚀", "☃", "⌚"]
RANGES = {
    "cyrillic": [(0x400, 0x45F)],
    "greek": [(0x391, 0x3C9)],
    "cjk": [(0x4E00, 0x9FFF)],
    "rare_cjk": [(0x20000, 0x2A6DF), (0x3400, 0x4DBF)],
    "kana_hangul": [(0x3041, 0x30FF), (0xAC00, 0xD7A3)],
    "arabic_hebrew": [(0x600, 0x6FF), (0x5D0, 0x5EA)],
    "indic_thai": [(0x900, 0x97F), (0xE01, 0xE5B)],
    "combining": [(0x300, 0x36F)],
    "zero_width": [(0x200B, 0x200F), (0x2060, 0x2064), (0xFEFF, 0xFEFF)],
    "private_use": [(0xE000, 0xF8FF), (0xF0000, 0xFFFFD)],
    "spaces": [(0x2000, 0x200A), (0xA0, 0xA0), (0x3000, 0x3000), (0x9, 0xD), (0x20, 0x20)],
    "any": [(0x1, 0xD7FF), (0xE000, 0x10FFFF)],  # no surrogates: they cannot be UTF-8 encoded
}


def _chars(rnd: random.Random, script: str, n: int) -> str:
    ranges = RANGES[script]
    out = []
    for _ in range(n):
        lo, hi = rnd.choice(ranges)
        out.append(chr(rnd.randint(lo, hi)))
    return "".join(out)


def _fragment(rnd: random.Random) -> str:
    pick = rnd.randrange(10)
    if pick < 3:
        return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 8)))
    if pick == 3:
        return rnd.choice(PUNCT) * rnd.randint(1, 3)
    if pick == 4:
        return str(rnd.choice([rnd.randint(0, 99), rnd.randint(0, 10**12), rnd.random() * 1e4]))
    if pick == 5:
        return rnd.choice(CODE)
    if pick == 6:
        return "".join(rnd.choice(EMOJI) for _ in range(rnd.randint(1, 4)))
    if pick == 7:
        return rnd.choice(FIXED)
    script = rnd.choice(list(RANGES))
    return _chars(rnd, script, rnd.randint(1, 12))


def _separator(rnd: random.Random) -> str:
    return rnd.choice(["", " ", " ", " ", "  ", "\n", "\t", " \n", "\n\n", " " * rnd.randint(3, 9)])


def make_corpus(n: int = 2400, seed: int = 1234) -> list[str]:
    rnd = random.Random(seed)
    corpus = list(FIXED)
    for script in RANGES:  # every class on its own, too
        corpus += [_chars(rnd, script, rnd.randint(1, 20)) for _ in range(20)]
    while len(corpus) < n:
        parts = [_fragment(rnd) for _ in range(rnd.randint(1, 6))]
        text = _separator(rnd).join(parts)
        if rnd.random() < 0.3:
            text = _separator(rnd) + text + _separator(rnd)  # leading / trailing whitespace
        corpus.append(text)
    return corpus


CORPUS = make_corpus()


def _mismatches(cases):
    bad = [(c, ours, ref) for c, ours, ref in cases if ours != ref]
    return f"{len(bad)} mismatches, first: {bad[:3]}"


# -- 1. sentencepiece ----------------------------------------------------------------------------------


def test_published_ids(tok):
    assert tok.encode("Hello world", add_bos=False) == [22557, 1526]
    assert tok.encode("Hello world") == [1, 22557, 1526]
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (32000, 1, 2, 0, None)


def test_corpus_is_varied():
    assert len(CORPUS) >= 2000 and len(set(CORPUS)) > 1900
    assert any(ord(c) >= 0x20000 for s in CORPUS for c in s)  # byte fallback is exercised


def test_encode_matches_sentencepiece(sp, tok):
    cases = []
    for s in CORPUS:
        cases.append((s, tok.encode(s, add_bos=False), sp.encode(s)))
        cases.append((s, tok.encode(s), sp.encode(s, add_bos=True)))
        cases.append((s, tok.encode(s, add_bos=False, add_eos=True), sp.encode(s, add_eos=True)))
    assert all(ours == ref for _, ours, ref in cases), _mismatches(cases)


def test_decode_matches_sentencepiece_and_round_trips(sp, tok):
    cases = []
    for s in CORPUS:
        ids = sp.encode(s, add_bos=True, add_eos=True)
        # "▁" (U+2581) is how pieces spell a space, so it comes back as " ": no round trip there
        expected = s.replace("▁", " ")
        assert sp.decode(ids) == expected, "sentencepiece round-trips every other corpus string"
        cases.append((s, tok.decode(ids), expected))
        cases.append((s, tok.decode(tok.encode(s, add_eos=True)), expected))
    assert all(ours == ref for _, ours, ref in cases), _mismatches(cases)


def _random_ids(rnd: random.Random, tok: Tokenizer, n: int) -> list[int]:
    """Id sequences that stress decoding: byte pieces (often invalid UTF-8), control, unknown, "▁"."""
    space_pieces = [i for i in range(tok.vocab_size) if tok.id_to_piece(i).startswith("▁")]
    seqs = []
    for _ in range(n):
        seq = []
        for _ in range(rnd.randint(0, 12)):
            r = rnd.random()
            if r < 0.4:
                seq.append(
                    3 + rnd.choice([0x41, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0xC3, 0xED, 0xA0, 0xFF])
                )
            elif r < 0.55:
                seq.append(rnd.choice([0, 1, 2]))
            elif r < 0.8:
                seq.append(rnd.choice(space_pieces))
            else:
                seq.append(rnd.randrange(tok.vocab_size))
        seqs.append(seq)
    return seqs


def test_decode_random_ids_matches_sentencepiece(sp, tok):
    seqs = _random_ids(random.Random(5), tok, 1500)
    cases = [(ids, tok.decode(ids), sp.decode(ids)) for ids in seqs]
    assert all(ours == ref for _, ours, ref in cases), _mismatches(cases)
    assert tok.decode([1, 22557], skip_special=False) == "<s> Hello"


def test_stream_matches_sentencepiece(sp, tok):
    seqs = [sp.encode(s, add_bos=True) for s in CORPUS[::3]] + _random_ids(random.Random(6), tok, 500)
    for ids in seqs:
        full = sp.decode(ids)
        stream = tok.stream()
        text = ""
        for k, token_id in enumerate(ids, 1):
            text += stream.push(token_id)
            assert full.startswith(text), (ids, k, text, full)  # nothing emitted is ever taken back
            if not sp.is_byte(token_id):  # every byte run is closed: all text is out
                assert text == sp.decode(ids[:k]), (ids, k)
        assert text + stream.flush() == full, ids


def test_stream_holds_incomplete_utf8(tok):
    euro = [tok.piece_to_id(f"<0x{b:02X}>") for b in "€".encode()]
    stream = tok.stream()
    assert [stream.push(i) for i in [1, *euro, 22557]] == ["", "", "", "€", " Hello"]
    stream = tok.stream()
    assert [stream.push(i) for i in euro[:2]] == ["", ""]
    assert stream.flush() == "\ufffd\ufffd"  # sentencepiece replaces each stray byte on its own


def test_user_defined_and_unused_pieces_match_sentencepiece(sp_user_unused):
    sp = sp_user_unused
    tok = tokenizer_from_sentencepiece(sp)
    rnd = random.Random(3)
    extra = []
    for _ in range(400):
        parts = [rnd.choice([*USER_PIECES, "<ima", "image>", " <image> ", "Hello world"]), _fragment(rnd)]
        rnd.shuffle(parts)
        extra.append(_separator(rnd).join(parts))
    cases = [(s, tok.encode(s, add_bos=False), sp.encode(s)) for s in CORPUS + extra]
    assert all(ours == ref for _, ours, ref in cases), _mismatches(cases)
    cases = [(s, tok.decode(sp.encode(s)), sp.decode(sp.encode(s))) for s in CORPUS + extra]
    assert all(ours == ref for _, ours, ref in cases), _mismatches(cases)
    # the edit must have changed tokenization, or this test proves nothing beyond the plain one
    assert sp.encode("Hello world") != [22557, 1526] and 32000 in sp.encode("a <image> b")
    assert sp.encode("world") == [sp.piece_to_id("▁worl"), sp.piece_to_id("d")]
    assert sp.piece_to_id("▁model") not in sp.encode("model")


def test_no_byte_fallback_matches_sentencepiece(sp_no_byte_fallback):
    """Without byte pieces an unknown character (a run of them, even) becomes one <unk>, which decodes
    to " ⁇ ": these strings do not round-trip, in sentencepiece or here."""
    sp = sp_no_byte_fallback
    tok = tokenizer_from_sentencepiece(sp)
    cases = [(s, tok.encode(s, add_bos=False), sp.encode(s)) for s in CORPUS]
    assert all(ours == ref for _, ours, ref in cases), _mismatches(cases)
    cases = [(s, tok.decode(ref), sp.decode(ref)) for s, _, ref in cases]
    assert all(ours == ref for _, ours, ref in cases), _mismatches(cases)
    assert sp.encode("\U00020000\U00020001") == [28705, 0]
    assert sp.encode("aжы") == [264, 0]  # unused single characters are unknown, and folded


def test_parse_special(sp, tok):
    text = "[INST] Describe it. [/INST] A cat.</s>[INST] And? [/INST]"
    # plain text by default, exactly like sentencepiece
    assert tok.encode(text, add_bos=False) == sp.encode(text)
    fragments = text.split("</s>")
    expected = sp.encode(fragments[0]) + [sp.eos_id()] + sp.encode(fragments[1])
    assert tok.encode(text, add_bos=False, parse_special=True) == expected
    assert tok.encode("<s></s><unk>", add_bos=False, parse_special=True) == [1, 2, 0]


def test_encode_is_fast(tok):
    text = " ".join(CORPUS)[:10_000]
    best = min(_timed(lambda: tok.encode(text)) for _ in range(3))
    assert best < 0.5, f"encoding 10k characters took {best:.3f} s"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- 2. llama.cpp's vocab test vectors -----------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_vocab(llama_cpp_src) -> Tokenizer:
    """Our tokenizer from llama.cpp's Llama-2 vocab GGUF."""
    path = llama_cpp_src / "models" / "ggml-vocab-llama-spm.gguf"
    return Tokenizer.from_gguf_metadata(_gguf_metadata(path), str(path))


@pytest.fixture(scope="module")
def llama_cpp_vocab(llama_cpp_src):
    """llama.cpp itself with the same vocab GGUF."""
    import llama_cpp

    path = llama_cpp_src / "models" / "ggml-vocab-llama-spm.gguf"
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def _gguf_metadata(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items()}


def _vocab_cases(gguf_path: Path) -> list[tuple[str, list[int]]]:
    """test-tokenizer-0's format: inputs split on a marker line, one line of ids (no BOS) per input."""
    raw = Path(f"{gguf_path}.inp").read_text(encoding="utf-8")
    inputs = raw.split("\n__ggml_vocab_test__\n")
    if inputs and inputs[-1] == "":  # the file ends with a marker
        inputs.pop()
    outputs = Path(f"{gguf_path}.out").read_text(encoding="utf-8").splitlines()
    assert len(inputs) == len(outputs), "test vectors: inputs and outputs differ in count"
    return [(text, [int(t) for t in line.split()]) for text, line in zip(inputs, outputs, strict=True)]


def test_llama_cpp_vocab_vectors(llama_cpp_src, llama_vocab):
    tok = llama_vocab
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id, tok.add_bos) == (32000, 1, 2, 0, True)
    cases = _vocab_cases(llama_cpp_src / "models" / "ggml-vocab-llama-spm.gguf")
    assert len(cases) > 40 and ("", []) in cases
    # test-tokenizer-0 tokenizes with add_special = false: no BOS
    results = [(text, tok.encode(text, add_bos=False), ids) for text, ids in cases]
    assert all(ours == ref for _, ours, ref in results), _mismatches(results)
    results = [(text, tok.decode(ids), text) for text, ids in cases]
    assert all(ours == ref for _, ours, ref in results), _mismatches(results)


def test_encode_matches_llama_cpp_on_corpus(llama_vocab, llama_cpp_vocab):
    tok, ref = llama_vocab, llama_cpp_vocab
    cases = [(s, tok.encode(s, add_bos=False), ref.tokenize(s.encode(), add_bos=False)) for s in CORPUS]
    assert all(ours == ref for _, ours, ref in cases), _mismatches(cases)


def test_parse_special_matches_llama_cpp(llama_vocab, llama_cpp_vocab):
    tok, ref = llama_vocab, llama_cpp_vocab
    texts = ["<s>[INST] hi</s>x", "</s> a <unk>b", "a<s><s> b", "</s>", "x </s>\n<s>\ty"]
    for text in texts:
        ours = tok.encode(text, add_bos=False, parse_special=True)
        assert ours == ref.tokenize(text.encode(), add_bos=False, special=True), text


# -- 3. thread safety ----------------------------------------------------------------------------------


def test_encode_from_threads(tok):
    serial = [tok.encode(s) for s in CORPUS]
    n = len(CORPUS)

    def run(start: int) -> list[list[int]]:  # each thread starts elsewhere, so different strings overlap
        ids = {i % n: tok.encode(CORPUS[i % n]) for i in range(start, start + n)}
        return [ids[i] for i in range(n)]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to expose shared state
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run, [0, n // 4, n // 2, 3 * n // 4]))
    finally:
        sys.setswitchinterval(interval)
    for result in results:
        assert result == serial


# -- 4. metadata errors --------------------------------------------------------------------------------


def _tiny_metadata() -> dict:
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "▁", "a", "▁a"],
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0, -2.0, -0.5],
        "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }


def test_tiny_metadata_builds():
    tok = Tokenizer.from_gguf_metadata(_tiny_metadata(), "tiny.gguf")
    assert tok.encode("aa a") == [1, 5, 4, 5]  # "▁a" "a" "▁a": "aa" and "a▁" are not pieces
    assert tok.encode("ab") == [1, 5, 0]  # "b" is unknown and there is no byte fallback


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda m: m.pop("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens"),
        (lambda m: m.pop("tokenizer.ggml.model"), "tokenizer.ggml.model"),
        (lambda m: m.update({"tokenizer.ggml.model": "gpt2"}), "tokenizer.ggml.model"),
        (lambda m: m["tokenizer.ggml.scores"].pop(), "tokenizer.ggml.scores"),
        (lambda m: m["tokenizer.ggml.token_type"].append(1), "tokenizer.ggml.token_type"),
        (lambda m: m.update({"tokenizer.ggml.bos_token_id": 6}), "tokenizer.ggml.bos_token_id"),
        (lambda m: m.update({"tokenizer.ggml.eos_token_id": -1}), "tokenizer.ggml.eos_token_id"),
        (lambda m: m.update({"tokenizer.ggml.padding_token_id": 99}), "tokenizer.ggml.padding_token_id"),
        (lambda m: m["tokenizer.ggml.token_type"].__setitem__(4, 9), "tokenizer.ggml.token_type"),
        (lambda m: m.update({"tokenizer.ggml.add_bos_token": "yes"}), "tokenizer.ggml.add_bos_token"),
    ],
)
def test_metadata_errors(edit, key):
    meta = _tiny_metadata()
    edit(meta)
    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_gguf_metadata(meta, "models/tiny.gguf")
    assert "models/tiny.gguf" in str(err.value) and key in str(err.value)


def test_partial_byte_pieces_are_refused():
    meta = _tiny_metadata()
    meta["tokenizer.ggml.tokens"][3] = "<0x41>"
    meta["tokenizer.ggml.token_type"][3] = TokenType.BYTE
    with pytest.raises(TokenizerError, match="tiny.gguf: tokenizer.ggml.tokens: byte fallback needs 256"):
        Tokenizer.from_gguf_metadata(meta, "tiny.gguf")
