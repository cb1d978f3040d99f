"""The text converter end to end: the tokenizer it carries, `info`, and its refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from test_tokenizer import make_corpus  # noqa: E402
from tiny_models import save_tiny_decoder  # noqa: E402

from llava_edge.convert.gguf_export import export_text_model  # noqa: E402
from llava_edge.errors import ConvertError  # noqa: E402
from llava_edge.gguf_file import GGUFFile  # noqa: E402
from llava_edge.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    hf = save_tiny_decoder(root / "hf", seed=5)
    return hf, export_text_model(hf, root / "m.gguf", "q8_0", progress=False)


def test_tokenizer_carried_into_gguf_matches_sentencepiece(converted, mistral_tokenizer_model):
    import sentencepiece

    _, path = converted
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_tokenizer_model))
    with GGUFFile.open(path) as f:
        tok = Tokenizer.from_gguf_metadata(f.metadata, path=str(path))
    corpus = make_corpus(2000, seed=99)
    bad = [s for s in corpus if tok.encode(s) != [sp.bos_id(), *sp.encode(s)]]
    assert not bad, f"{len(bad)} strings differ, first: {bad[0]!r}"
    assert tok.vocab_size == 32000 and (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)


def test_info_describes_the_file(converted):
    _, path = converted
    out = subprocess.run(
        [sys.executable, "-m", "llava_edge.cli", "info", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "architecture: llama" in out
    assert "llama.attention.sliding_window = 8" in out
    # 2 layers x 7 matrices + token_embd + output at Q8_0; 2 x 2 norms + output_norm at F32
    assert "Q8_0      16 tensors" in out and "F32        5 tensors" in out
    assert "tokenizer: llama, 32000 tokens, bos=1 eos=2" in out


def _save_as_pickle(hf_dir, gadget=None):
    from safetensors.torch import load_file

    (st,) = hf_dir.glob("*.safetensors")
    state = load_file(st)
    if gadget is not None:
        state["gadget"] = gadget
    torch.save(state, hf_dir / "pytorch_model.bin")
    st.unlink()


class _Gadget:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_checkpoints_need_opt_in_and_never_run_code(tmp_path):
    hf = save_tiny_decoder(tmp_path / "hf", seed=6)
    marker = tmp_path / "pwned"
    _save_as_pickle(hf, _Gadget(marker))
    with pytest.raises(ConvertError, match="pickle"):
        export_text_model(hf, tmp_path / "a.gguf", "f32", progress=False)
    with pytest.raises(ConvertError, match="weights_only"):
        export_text_model(hf, tmp_path / "b.gguf", "f32", trust_pickle=True, progress=False)
    assert not marker.exists()
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "b.gguf").exists()


def test_plain_pickle_checkpoint_converts_with_opt_in(tmp_path):
    hf = save_tiny_decoder(tmp_path / "hf", seed=7)
    _save_as_pickle(hf)
    out = export_text_model(hf, tmp_path / "c.gguf", "f16", trust_pickle=True, progress=False)
    with GGUFFile.open(out) as f:
        assert f.tensors["blk.1.ffn_down.weight"].shape == (192, 64)


def test_unsupported_architecture_is_refused(tmp_path):
    hf = save_tiny_decoder(tmp_path / "hf", seed=8)
    cfg = (hf / "config.json").read_text().replace("MistralForCausalLM", "GPT2LMHeadModel")
    (hf / "config.json").write_text(cfg)
    with pytest.raises(ConvertError, match="GPT2LMHeadModel"):
        export_text_model(hf, tmp_path / "x.gguf", "f32", progress=False)
