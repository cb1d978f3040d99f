"""The `llava-edge` command: thin glue from options to the library."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import LlavaEdgeError


def _fail(e: Exception) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llava-edge")
def main() -> None:
    """Run LLaVA vision-language models (and Mistral/Llama GGUFs) on a laptop CPU."""


def _threads_option(f):
    return click.option(
        "-t",
        "--threads",
        type=click.IntRange(1, 512),
        default=None,
        help="Compute threads (default: the physical cores).",
    )(f)


def _sampling_options(temp: float):
    """--temp (default `temp`), --top-k, --top-p, --min-p, --repeat-penalty and --seed: the arguments of
    `make_sampler` and `make_logits_processors`."""
    options = [
        click.option(
            "--temp",
            default=temp,
            show_default=True,
            type=click.FloatRange(0),
            help="Temperature; 0 is greedy.",
        ),
        click.option(
            "--top-k",
            default=40,
            show_default=True,
            type=click.IntRange(0),
            help="Keep the k most likely; 0 off.",
        ),
        click.option(
            "--top-p",
            default=0.95,
            show_default=True,
            type=click.FloatRange(0, 1, min_open=True),
            help="Nucleus sampling mass.",
        ),
        click.option(
            "--min-p",
            default=0.05,
            show_default=True,
            type=click.FloatRange(0, 1, max_open=True),
            help="Drop tokens below min-p times the top probability.",
        ),
        click.option(
            "--repeat-penalty",
            default=1.0,
            show_default=True,
            type=click.FloatRange(0, min_open=True),
            help="Penalty for recently generated tokens; 1 is off.",
        ),
        click.option("--seed", default=None, type=int, help="Sampling seed (default: random)."),
    ]

    def apply(f):
        for option in reversed(options):  # applied bottom-up, as stacked decorators are
            f = option(f)
        return f

    return apply


@main.command()
@click.option(
    "-m",
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False),
    help="A llama-architecture GGUF (Mistral, Llama). Default: a tiny random-weight model the package "
    "builds for itself, to try the pipeline.",
)
@click.option("-p", "--prompt", required=True, help="Text to continue.")
@click.option(
    "-n", "--max-tokens", default=256, show_default=True, type=click.IntRange(1), help="Tokens to generate."
)
@_sampling_options(temp=0.8)
@click.option(
    "--ctx",
    "n_ctx",
    default=4096,
    show_default=True,
    type=click.IntRange(1),
    help="Context size in tokens (capped at the model's).",
)
@click.option("--stop", multiple=True, help="Stop when this text appears (repeatable).")
@click.option(
    "--kv-type",
    type=click.Choice(["f16", "f32"]),
    default="f16",
    show_default=True,
    help="KV cache precision.",
)
@click.option(
    "--rolling",
    is_flag=True,
    help="Past the context, keep the start (BOS) and roll the rest instead of stopping.",
)
@_threads_option
def generate(
    model_path,
    prompt,
    max_tokens,
    temp,
    top_k,
    top_p,
    min_p,
    repeat_penalty,
    seed,
    n_ctx,
    stop,
    kv_type,
    rolling,
    threads,
) -> None:
    """Continue PROMPT with a text model, streaming."""
    from . import _kernels
    from .generate import stream_generate
    from .loader import load_text_model
    from .sampling import make_logits_processors, make_sampler

    try:
        if threads:
            _kernels.set_num_threads(threads)
        if model_path is None:
            from .tiny import cached_tiny_model

            model_path = cached_tiny_model()
            click.echo(
                f"(no -m given: using the tiny random-weight model {model_path}; its words are random)",
                err=True,
            )
        model, tokenizer = load_text_model(model_path)
        n_ctx = min(n_ctx, model.args.context_length)
        cache = model.make_cache(n_ctx, kv_type=kv_type, rolling=rolling, n_pinned=1 if rolling else 0)
        sampler = make_sampler(temp, top_k, top_p, min_p, seed)
        processors = make_logits_processors(repeat_penalty)
        tokens = tokenizer.encode(prompt)
        click.echo(prompt, nl=False)
        last = None
        for last in stream_generate(
            model,
            tokenizer,
            cache,
            tokens,
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=processors,
            stop=stop,
            continuation=True,
        ):
            click.echo(last.text, nl=False)
    except LlavaEdgeError as e:
        _fail(e)
    click.echo()
    click.echo(
        f"\nprompt: {last.prompt_tokens} tokens, {last.prompt_seconds:.2f} s "
        f"({last.prompt_tps:.2f} tokens/s) | "
        f"generation: {last.generation_tokens} tokens, {last.generation_seconds:.2f} s "
        f"({last.generation_tps:.2f} tokens/s) | finish: {last.finish_reason}",
        err=True,
    )


@main.command()
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-m",
    "--model",
    "model_path",
    type=click.Path(exists=True),
    help="A model bundle directory (or its model.gguf), or llama.cpp's decoder GGUF with --mmproj.",
)
@click.option(
    "--mmproj",
    type=click.Path(exists=True, dir_okay=False),
    help="llama.cpp's mmproj GGUF (CLIP tower + projector) to use with a decoder GGUF.",
)
@click.option("-p", "--prompt", help="Ask this, print the answer and exit (default: an interactive chat).")
@click.option(
    "-n", "--max-tokens", default=512, show_default=True, type=click.IntRange(1), help="Answer length cap."
)
@_sampling_options(temp=0.2)
@click.option(
    "--ctx",
    "n_ctx",
    default=8192,
    show_default=True,
    type=click.IntRange(1),
    help="Context size in tokens (capped at the model's).",
)
@click.option(
    "--template",
    type=click.Choice(["mistral_instruct", "llava_v1"]),
    default=None,
    help="Chat format (default: the model's).",
)
@click.option(
    "--kv-type",
    type=click.Choice(["f16", "f32"]),
    default="f16",
    show_default=True,
    help="KV cache precision.",
)
@click.option("-q", "--quiet", is_flag=True, help="No speed line.")
@click.option(
    "--rolling",
    is_flag=True,
    help="Past the context, keep the start (BOS, system text, the first turn's images) and roll the rest "
    "instead of stopping.",
)
@_threads_option
def chat(
    images,
    model_path,
    mmproj,
    prompt,
    max_tokens,
    temp,
    top_k,
    top_p,
    min_p,
    repeat_penalty,
    seed,
    n_ctx,
    template,
    kv_type,
    quiet,
    rolling,
    threads,
) -> None:
    """Chat about IMAGES with a LLaVA model (streaming, multi-turn, offline)."""
    from .llava import load
    from .repl import interactive, stream_answer
    from .sampling import make_logits_processors, make_sampler

    try:
        if model_path is None:
            from .demo import demo_bundle

            model_path = demo_bundle()
            if not quiet:
                click.echo(
                    "(no -m given: the built-in demo model, which knows only synthetic scenes of coloured "
                    "shapes like examples/; for photos pass a LLaVA bundle with -m)",
                    err=True,
                )
        model = load(model_path, mmproj=mmproj, threads=threads)
        n_ctx = min(n_ctx, model.decoder.args.context_length)
        session = model.chat(n_ctx=n_ctx, kv_type=kv_type, template=template, rolling=rolling)
        for image in images:
            session.add_image(image)
        gen = dict(
            max_tokens=max_tokens,
            sampler=make_sampler(temp, top_k, top_p, min_p, seed),
            logits_processors=make_logits_processors(repeat_penalty),
        )
        if prompt is not None:
            stream_answer(session, prompt, verbose=not quiet, **gen)
        else:
            interactive(session, verbose=not quiet, **gen)
    except LlavaEdgeError as e:
        _fail(e)


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--system", is_flag=True, help="Show the kernels' instruction set and threads instead.")
def info(path, system) -> None:
    """Describe a GGUF model file: architecture, hyperparameters, tensor types, tokenizer."""
    from .info import describe_file, describe_system

    if system or path is None:
        click.echo(describe_system())
        return
    try:
        click.echo(describe_file(path))
    except LlavaEdgeError as e:
        _fail(e)


@main.command()
@click.argument("hf_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@click.option(
    "--type",
    "file_type",
    default="f16",
    show_default=True,
    type=click.Choice(["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k"]),
    help="Tensor type of the decoder weights (norms stay F32).",
)
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow pickle .bin checkpoints (loaded with torch.load(weights_only=True)).",
)
@click.option(
    "--vision-tower",
    "vision_tower_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Original-layout LLaVA-1.5: the local CLIP folder whose weights the checkpoint leaves out.",
)
@click.option(
    "--vision-precision",
    type=click.Choice(["fp32", "int8"]),
    default="fp32",
    show_default=True,
    help="LLaVA: the ONNX tower's weights; int8 (vision-int8.onnx) is a quarter of the size and faster "
    "with VNNI; check its features on your images (the conversion prints their cosine to fp32's).",
)
def convert(hf_dir, out, file_type, trust_pickle, vision_tower_dir, vision_precision) -> None:
    """Convert a Hugging Face checkpoint: a LLaVA model to a bundle directory OUT (model.gguf +
    vision.onnx), a Mistral/Llama text model to the GGUF file OUT."""
    try:
        from .convert.gguf_export import export_text_model, is_text_model
        from .convert.llava_export import export_llava
    except ImportError as e:
        _fail(RuntimeError(f"converting needs the convert extra: pip install 'llava-edge[convert]' ({e})"))
    try:
        if is_text_model(Path(hf_dir)):
            path = export_text_model(Path(hf_dir), Path(out), file_type, trust_pickle=trust_pickle)
        else:
            path = export_llava(
                Path(hf_dir),
                Path(out),
                file_type,
                trust_pickle=trust_pickle,
                vision_tower_dir=vision_tower_dir,
                vision_precision=vision_precision,
            )
    except LlavaEdgeError as e:
        _fail(e)
    click.echo(f"wrote {path}")


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args) -> None:
    """Finetune a LLaVA model (visual instruction tuning; full or LoRA; `train --help` for the options).
    Several processes or GPUs: torchrun --nproc_per_node N -m llava_edge.convert.train ..."""
    try:
        from .convert.train import main as train_main
    except ImportError as e:
        _fail(RuntimeError(f"training needs the convert extra: pip install 'llava-edge[convert]' ({e})"))
    try:
        code = train_main(list(args))
    except LlavaEdgeError as e:
        _fail(e)
    if code:  # train_main has said why (1: an error; 130: interrupted, with its checkpoint saved)
        raise SystemExit(code)


@main.command("make-demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--images", "n_images", default=10000, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--image-size", default=112, show_default=True, type=click.IntRange(16))
@click.option("--heldout", default=200, show_default=True, type=click.IntRange(0), help="Held-out questions.")
@click.option("--questions-per-image", default=3, show_default=True, type=click.IntRange(1))
@click.option("--max-turns", default=4, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1))
def make_demo_data(out, n_images, seed, image_size, heldout, questions_per_image, max_turns, workers) -> None:
    """Write the synthetic shapes dataset (LLaVA JSON + images + a held-out question set) to OUT."""
    from .demo_data import make_demo_data as make

    files = make(
        out,
        n_images,
        seed,
        image_size,
        n_heldout=heldout,
        questions_per_image=questions_per_image,
        max_turns=max_turns,
        workers=workers,
    )
    for name, path in files.items():
        click.echo(f"{name}: {path}")


@main.command()
@click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path())
@click.argument("ftype", metavar="TYPE")
@click.option(
    "--allow-requantize",
    is_flag=True,
    help="Accept a quantized input (a second rounding error: quantize from F32/F16/BF16 if you can).",
)
@click.option(
    "--keep",
    multiple=True,
    metavar="NAME=TYPE",
    help="Give the tensors matching the pattern NAME (fnmatch) the tensor type TYPE, over every rule "
    "(repeatable; the first match wins), e.g. --keep 'output.weight=Q8_0'.",
)
@click.option(
    "--quantize-projector",
    is_flag=True,
    help="Quantize a bundle's projector and vision matrices (mm.*, v.*) too; they stay F16 otherwise.",
)
@_threads_option
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON instead of the summary.")
def quantize(src, dst, ftype, allow_requantize, keep, quantize_projector, threads, quiet, as_json) -> None:
    """Quantize (or requantize) the GGUF IN to OUT: a decoder GGUF or a bundle's model.gguf (its
    vision.onnx comes along). TYPE: F32, F16, BF16, Q8_0, Q4_0, Q4_K_S, Q4_K_M, Q5_K_M or Q6_K (any case);
    tensors follow llama.cpp's mixes for that type. OUT appears only when complete."""
    import json

    from .quantize import quantize_file, summary

    try:
        stats = quantize_file(
            src,
            dst,
            ftype,
            allow_requantize=allow_requantize,
            keep=list(keep),
            quantize_projector=quantize_projector,
            threads=threads,
            progress=not quiet,
        )
    except LlavaEdgeError as e:
        _fail(e)
    click.echo(json.dumps(stats, indent=1) if as_json else summary(stats))


def _json_option(f):
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table."
    )(f)


def _ctx_option(default: int):
    return click.option(
        "--ctx", default=default, show_default=True, type=click.IntRange(1), help="Context size in tokens."
    )


def _echo_result(result, as_json: bool) -> None:
    import json

    from .evaluate import format_table

    click.echo(json.dumps(result, indent=1) if as_json else format_table(result))


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        _fail(RuntimeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"))
    except OSError as e:
        _fail(RuntimeError(f"{path}: cannot read: {e.strerror or e}"))


@main.group("eval")
def eval_group() -> None:
    """Measure model quality: perplexity, distance from a reference model, exact-answer accuracy."""


@eval_group.command("ppl")
@click.argument("model", type=click.Path(exists=True))
@click.argument("textfile", type=click.Path(exists=True, dir_okay=False))
@_ctx_option(512)
@click.option(
    "--stride",
    type=click.IntRange(1),
    default=None,
    help="Chunks every N tokens, scoring their last N predictions (llama-perplexity's --ppl-stride); "
    "default: chunks of --ctx, scoring their second half.",
)
@click.option(
    "--kv-type",
    type=click.Choice(["f16", "f32"]),
    default="f16",
    show_default=True,
    help="KV cache precision.",
)
@_threads_option
@_json_option
def eval_ppl(model, textfile, ctx, stride, kv_type, threads, as_json) -> None:
    """Perplexity of MODEL (a GGUF or a bundle) on TEXTFILE (UTF-8), computed as llama.cpp's
    llama-perplexity does."""
    from .evaluate import perplexity

    text = _read_text(textfile)
    try:
        result = perplexity(model, text, ctx=ctx, stride=stride, threads=threads, kv_type=kv_type)
    except LlavaEdgeError as e:
        _fail(e)
    _echo_result(result, as_json)


@eval_group.command("compare")
@click.argument("ref", type=click.Path(exists=True))
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--text",
    "text_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A UTF-8 text file, one prompt (repeatable; longer than --ctx runs in pieces).",
)
@click.option("-p", "--prompt", "prompts", multiple=True, help="A text prompt (repeatable).")
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="An image prompt, for bundles (repeatable): --image-prompt, then REF's greedy answer.",
)
@click.option(
    "--image-prompt",
    default="Describe the image in detail.",
    show_default=True,
    help="Asked about each image.",
)
@click.option(
    "--answer-tokens",
    default=32,
    show_default=True,
    type=click.IntRange(0),
    help="Length cap of REF's answer about each image.",
)
@_ctx_option(512)
@click.option(
    "--kv-type",
    type=click.Choice(["f16", "f32"]),
    default="f16",
    show_default=True,
    help="KV cache precision.",
)
@_threads_option
@_json_option
def eval_compare(
    ref, models, text_files, prompts, images, image_prompt, answer_tokens, ctx, kv_type, threads, as_json
) -> None:
    """How far each of MODELS is from the reference REF (e.g. quantized files from their F16 source):
    mean / p99 / max KL(REF || MODEL) per position, the worst position, top-1 agreement, perplexities."""
    from .evaluate import compare_many

    texts = [_read_text(f) for f in text_files] + list(prompts)
    try:
        results = compare_many(
            ref,
            models,
            texts,
            images=images,
            image_prompt=image_prompt,
            answer_tokens=answer_tokens,
            ctx=ctx,
            threads=threads,
            kv_type=kv_type,
        )
    except LlavaEdgeError as e:
        _fail(e)
    _echo_result(results, as_json)


@eval_group.command("accuracy")
@click.argument("bundle", type=click.Path(exists=True))
@click.argument("questions", type=click.Path(exists=True, dir_okay=False))
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N questions.")
@click.option(
    "-n", "--max-tokens", default=32, show_default=True, type=click.IntRange(1), help="Answer length cap."
)
@_ctx_option(4096)
@click.option(
    "--kv-type",
    type=click.Choice(["f16", "f32"]),
    default="f16",
    show_default=True,
    help="KV cache precision.",
)
@_threads_option
@_json_option
def eval_accuracy(bundle, questions, limit, max_tokens, ctx, kv_type, threads, as_json) -> None:
    """Exact-answer accuracy of a LLaVA BUNDLE on QUESTIONS, a JSON list of {image, question, answer,
    type} (image paths relative to the JSON; type optional, counted apart), answered greedily."""
    from .evaluate import accuracy

    try:
        result = accuracy(
            bundle, questions, limit=limit, max_tokens=max_tokens, ctx=ctx, threads=threads, kv_type=kv_type
        )
    except LlavaEdgeError as e:
        _fail(e)
    _echo_result(result, as_json)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args) -> None:
    """Ours vs llama.cpp on random-weight files of real shapes: decode, prefill, vision tower, memory
    bandwidth (`bench --help` for the options; `bench --shape tiny` is a quick smoke run)."""
    from .bench import main as bench_main

    try:
        code = bench_main(list(args))
    except LlavaEdgeError as e:
        _fail(e)
    sys.exit(code)


if __name__ == "__main__":
    main()
