"""llava-edge: LLaVA vision-language models on a laptop CPU.

model = llava_edge.load("bundle_dir")          # or load("llm.gguf", mmproj="mmproj.gguf")
chat = model.chat()
for r in chat.ask("What is in this picture?", images=["photo.jpg"]):
    print(r.text, end="", flush=True)
"""

__version__ = "0.1.0"


def load(path, *, mmproj=None, threads=None):
    """Open a LLaVA model bundle (or llama.cpp's decoder GGUF + `mmproj`); see llava_edge.llava.load."""
    from .llava import load as _load

    return _load(path, mmproj=mmproj, threads=threads)
