"""Our quantizer against llama.cpp's on the same F16 source: mean KL divergence of each quantized file from
the F16 model, over text and image prompts, side by side (issue 5: ours must be <= 1.05 x llama.cpp's).

    python benchmarks/quant_quality.py F16_BUNDLE WORKDIR [--types q4_0,q4_k_m,q6_k] [--data DEMO_DATA]

F16_BUNDLE is a bundle folder (model.gguf + its tower) with trained weights, e.g. the demo model exported at
F16 (`python -m llava_edge.convert.demo_recipe` leaves the checkpoint in OUT/finetune/model; export it with
`llava-edge convert OUT/finetune/model F16_BUNDLE --type f16`). DEMO_DATA is a `llava-edge make-demo-data`
folder: its held-out conversations are the text prompts and its held-out images the image prompts. Both
quantized files are scored by our runtime on the same inputs; llama.cpp's is made by `llama_model_quantize`
(llama-cpp-python) and given the same tower file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


def _render(conversation: list[dict]) -> str:
    """A held-out conversation as Mistral-instruct text, without the image."""
    text = ""
    for turn in conversation:
        value = turn["value"].replace("<image>\n", "")
        text += f"[INST] {value} [/INST]" if turn["from"] == "human" else f" {value}</s>"
    return text


def _projector_from(f16: Path, path: Path) -> None:
    """Rewrite `path` with the F16 source's projector tensors (mm.*, v.*): llama.cpp's quantizer treats them
    as decoder weights, ours keeps them F16, and this benchmark compares the decoders."""
    from llava_edge.gguf_file import GGUFFile
    from llava_edge.gguf_writer import GGUFWriter

    tmp = path.with_name(path.name + ".tmp")
    with GGUFFile.open(path) as q, GGUFFile.open(f16) as s, GGUFWriter(tmp) as w:
        for key, value in q.metadata.items():
            vt = q.value_types[key]
            w.add(key, value, vt[0], element_type=vt[1] if len(vt) > 1 else None)
        pick = {n: (s if n.startswith(("mm.", "v.")) else q) for n in q.tensors}
        for name, f in pick.items():
            info = f.tensors[name]
            w.add_tensor_info(name, info.shape, info.type)
        for name, f in pick.items():
            w.write_tensor(name, f.raw(name))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    from llava_edge.bundle import MODEL_FILE
    from llava_edge.evaluate import compare_many
    from llava_edge.quantize import _llama_cpp_quantize, quantize_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", help="F16 bundle folder (model.gguf + vision tower)")
    ap.add_argument("workdir", help="where the quantized files go")
    ap.add_argument("--types", default="q4_0,q4_k_m,q6_k")
    ap.add_argument("--data", required=True, help="a make-demo-data folder (eval.json, heldout images)")
    ap.add_argument("--texts", type=int, default=100, help="held-out conversations used as text prompts")
    ap.add_argument("--images", type=int, default=40, help="held-out images used as image prompts")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    src = Path(args.bundle) / MODEL_FILE
    work = Path(args.workdir)
    data = Path(args.data)
    held = json.loads((data / "eval.json").read_text())
    texts = [_render(s["conversations"]) for s in held[: args.texts]]
    images = [str(data / s["image"]) for s in held[: args.images] if "image" in s]

    models, labels = [], []
    for t in args.types.split(","):
        for tool in ("llava-edge", "llama.cpp"):
            folder = work / f"{t}-{tool}"
            folder.mkdir(parents=True, exist_ok=True)
            dst = folder / MODEL_FILE
            if tool == "llava-edge":
                quantize_file(src, dst, t, threads=args.threads, progress=False)
            else:
                _llama_cpp_quantize(str(src), str(dst), t, args.threads or os.cpu_count() or 1)
                _projector_from(src, dst)
                for extra in Path(args.bundle).iterdir():  # the tower file(s) the GGUF names
                    if extra.suffix == ".onnx" and not (folder / extra.name).exists():
                        shutil.copyfile(extra, folder / extra.name)
            models.append(str(folder))
            labels.append((t, tool))
            print(f"{t} {tool}: {dst.stat().st_size / 2**20:.2f} MiB", file=sys.stderr)

    results = compare_many(args.bundle, models, texts, images=images, image_prompt="Describe the image.")
    rows = {}
    for (t, tool), r in zip(labels, results, strict=True):
        rows.setdefault(t, {})[tool] = r
    print(
        f"{'type':8} {'KL ours':>11} {'KL llama.cpp':>13} {'ratio':>7} {'top-1 ours':>11} {'top-1 llama':>12}"
    )
    summary = {}
    for t, pair in rows.items():
        ours, ref = pair["llava-edge"], pair["llama.cpp"]
        ratio = ours["mean_kl"] / ref["mean_kl"] if ref["mean_kl"] > 0 else float("inf")
        summary[t] = {
            "kl_ours": ours["mean_kl"],
            "kl_llama_cpp": ref["mean_kl"],
            "ratio": ratio,
            "top1_ours": ours["top1_agreement"],
            "top1_llama_cpp": ref["top1_agreement"],
        }
        print(
            f"{t:8} {ours['mean_kl']:11.3e} {ref['mean_kl']:13.3e} {ratio:7.3f} "
            f"{ours['top1_agreement']:11.4f} {ref['top1_agreement']:12.4f}"
        )
    n_pos = results[0].get("n_positions")
    print(
        f"({len(texts)} text prompts, {len(images)} image prompts, {n_pos} positions; KL(F16 || quantized))"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
