"""Finetune a LLaVA model in torch: LLaVA's two stages, on one process or many, resumable, then export.

    python -m llava_edge.convert.train --model HF_DIR --data train.json --out runs/x ...
    torchrun --nproc_per_node 8 -m llava_edge.convert.train --model HF_DIR --data train.json --out runs/x

Stages (LLaVA's recipe): `--stage pretrain` trains only the projector on captions in the "plain" format
(image, then caption: loss on the caption); `--stage finetune` trains projector + decoder (fully, or LoRA
adapters with `--lora`, merged before saving) on conversations in the model's chat template, with loss
only on the answers and their `</s>` (see `data.py`). The vision tower stays frozen unless --train-vision.

Data order, loss normalisation and checkpoints are defined on the global batch
(micro-batch x accumulation steps x processes): a step takes the next global batch of a seeded stream of
epochs, every token of it weighs the same whichever process holds it, so N processes give the same losses
and weights as one process accumulating N times as much; and a run resumed from a checkpoint (model,
optimizer, schedule, RNG, data position, step) continues exactly as if it had never stopped.

Out folder (on a file system every process sees): `log.jsonl` (one line per step, eval and accuracy),
`checkpoints/step-NNNNNNNN/`, `init/` (a model created from --config), `model/` (the trained checkpoint,
llava-hf layout) and `bundle/` (its export).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConvertError, Interrupted, LlavaEdgeError
from ..quant_rules import FILE_TYPES
from .data import (
    IGNORE,
    PLAIN,
    ConversationEncoder,
    LlavaDataset,
    Sample,
    collate,
    collate_parts,
    load_samples,
)
from .train_model import (
    CONFIG_COPY,
    add_lora,
    chat_template_name,
    copy_side_files,
    create_model,
    image_token_count,
    load_llava,
    model_preprocess_config,
    read_new_model_config,
    runtime_tokenizer,
    set_trainable,
)

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
# Settings a resumed run must share with the run that wrote the checkpoint.
RESUME_KEYS = (
    "stage",
    "model",
    "config",
    "data",
    "seed",
    "global_batch",
    "total_steps",
    "lr",
    "min_lr",
    "warmup_steps",
    "weight_decay",
    "lora",
    "lora_r",
    "lora_alpha",
    "train_vision",
    "max_length",
)


# -- the schedule and the data order -------------------------------------------------------------------


def lr_at(step: int, lr: float, total: int, warmup: int, min_lr: float = 0.0) -> float:
    """Linear warm-up from lr/warmup to lr over `warmup` steps, then cosine decay to min_lr at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@functools.lru_cache(maxsize=2)
def sample_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the samples in one epoch."""
    return np.random.default_rng((seed, epoch)).permutation(n)


@dataclass(frozen=True)
class DataPlan:
    """Which samples each (step, accumulation step, process) trains on."""

    n: int  # samples in the data set
    seed: int
    micro: int  # samples per micro-batch
    accum: int  # micro-batches per process per step
    world: int  # processes

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    def indices(self, step: int, a: int, rank: int) -> list[int]:
        """Global batch `step` of the seeded stream of epochs, cut into micro-batches: micro-batch a of
        process `rank` is chunk a * world + rank. One process with accum * world micro-batches gets the same
        micro-batches in the same order."""
        first = (step * self.accum * self.world + a * self.world + rank) * self.micro
        out = []
        for pos in range(first, first + self.micro):
            epoch, i = divmod(pos, self.n)
            out.append(int(sample_order(self.n, self.seed, epoch)[i]))
        return out


class StepBatches:
    """A torch batch sampler: the micro-batches of one process from `start` to `stop`, in order."""

    def __init__(self, plan: DataPlan, rank: int, start: int, stop: int):
        self.plan, self.rank, self.start, self.stop = plan, rank, start, stop

    def __len__(self) -> int:
        return (self.stop - self.start) * self.plan.accum

    def __iter__(self):
        for step in range(self.start, self.stop):
            for a in range(self.plan.accum):
                yield self.plan.indices(step, a, self.rank)


# -- the loss ------------------------------------------------------------------------------------------


def _loss_module(llava):
    """A module whose forward is the summed next-token cross-entropy over labelled positions, so DDP and
    FSDP see the whole computation in one forward call. The output head runs only where there is a label."""
    import torch
    import torch.nn.functional as F

    class SummedLoss(torch.nn.Module):
        def __init__(self, llava):
            super().__init__()
            self.llava = llava

        def forward(self, input_ids, attention_mask, labels, pixel_values=None):
            if pixel_values is None:
                # A batch without images runs tower and projector anyway, first as usual, on a blank image
                # whose features join the text embeddings with weight 0: every process then runs the same
                # modules in the same order, forward and backward, as DDP and FSDP require.
                size = self.llava.config.vision_config.image_size
                zeros = torch.zeros((1, 3, size, size), device=input_ids.device)
                blank = torch.cat(list(self.llava.model.get_image_features(pixel_values=zeros).pooler_output))
                embeds = self.llava.get_input_embeddings()(input_ids)
                embeds = embeds + 0.0 * blank.sum().to(embeds.dtype)
                out = self.llava.model(inputs_embeds=embeds, attention_mask=attention_mask)
            else:
                out = self.llava.model(
                    input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values
                )
            hidden = out.last_hidden_state[:, :-1]
            target = labels[:, 1:]
            keep = target != IGNORE
            logits = self.llava.lm_head(hidden[keep])  # [n_labelled, vocab]
            return F.cross_entropy(logits.float(), target[keep], reduction="sum")

    return SummedLoss(llava)


# -- distribution --------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Read torchrun's environment; gloo on CPU, nccl on GPUs."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if world > 1:
        import torch.distributed as td

        td.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank, world, local, device)


def _all_reduce(values: list[float], d: Dist) -> list[float]:
    import torch

    if d.world == 1:
        return values
    import torch.distributed as td

    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    td.all_reduce(t)
    return t.tolist()


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop after the step under way, save a
    checkpoint and exit, instead of losing everything since the last periodic one; a second signal stops at
    once. Installed only in the main thread (the only one Python delivers signals to)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, say):
        self.asked = False
        self._say = say
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.asked:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.asked = True
        self._say(f"{signal.Signals(signum).name}: stopping after this step (once more to stop now)")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _quiet_worker(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process: a terminal's Ctrl-C reaches the whole
    process group, and a worker that quit would fail the next batch before the checkpoint is saved."""
    for sig in StopRequest.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as td

        td.barrier()


# -- checkpoints ---------------------------------------------------------------------------------------


def _checkpoint_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(out: Path, step: int, module, optimizer, state: dict, d: Dist, keep: int) -> Path:
    """Trainable weights (safetensors), optimizer state, per-process RNG and the trainer state, written to a
    temporary folder and renamed when complete. Collective under FSDP: every process calls it."""
    import torch
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    trainable = {n for n, p in _unwrap(module).named_parameters() if p.requires_grad}
    weights = get_model_state_dict(module, options=options)
    optim = get_optimizer_state_dict(module, optimizer, options=options)
    final = out / "checkpoints" / f"step-{step:08d}"
    tmp = out / "checkpoints" / f".partial-step-{step:08d}"
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in weights.items() if k in trainable}, str(tmp / WEIGHTS_FILE))
        torch.save(optim, tmp / OPTIMIZER_FILE)
    _barrier(d)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / f"rng-{d.rank}.pt")
    _barrier(d)
    if d.main:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "world": d.world}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoint_dirs(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(d)
    return final


def load_checkpoint(path: Path, module, optimizer, d: Dist) -> tuple[dict, dict]:
    """Restore the weights and optimizer state save_checkpoint wrote; returns the trainer state and this
    process's RNG states (for `restore_rng`, once everything that draws random numbers at start is done)."""
    import torch
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = json.loads((path / STATE_FILE).read_text())
    weights = load_file(str(path / WEIGHTS_FILE))
    trainable = {n for n, p in _unwrap(module).named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        differ = sorted(set(weights) ^ trainable)
        raise ConvertError(
            f"{path}: the checkpoint's trainable tensors differ from this run's ({len(differ)} names, "
            f"e.g. {differ[:2]})"
        )
    set_model_state_dict(module, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    optim = torch.load(path / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
    # strict=False: a parameter that never had a gradient yet has no optimizer state
    set_optimizer_state_dict(
        module, optimizer, optim, options=StateDictOptions(full_state_dict=True, strict=False)
    )
    rng_file = path / f"rng-{d.rank}.pt"
    rng = torch.load(rng_file, weights_only=True) if rng_file.is_file() else {}
    return state, rng


def restore_rng(rng: dict) -> None:
    import torch

    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def _unwrap(module):
    return getattr(module, "module", module)


# -- evaluation ----------------------------------------------------------------------------------------


def eval_loss(module, dataset: LlavaDataset, micro: int, pad_id: int, d: Dist, autocast) -> float:
    """Token-weighted mean loss over the whole data set, split across processes. Every process runs the
    same number of forwards (FSDP needs it); a process out of samples repeats one with zero weight."""
    import torch

    n = len(dataset)
    per_rank = -(-n // d.world)
    total, count = 0.0, 0.0
    module.eval()
    with torch.no_grad():
        for start in range(0, per_rank, micro):
            idx = [d.rank + d.world * (start + j) for j in range(min(micro, per_rank - start))]
            real = [i < n for i in idx]
            batch = collate([dataset[i if i < n else 0] for i in idx], pad_id)
            for j, ok in enumerate(real):
                if not ok:
                    batch["labels"][j] = IGNORE
            batch = {k: (v.to(d.device) if v is not None else None) for k, v in batch.items()}
            with autocast():
                loss = module(**batch)
            total += float(loss)
            count += float((batch["labels"][:, 1:] != IGNORE).sum())
    module.train()
    total, count = _all_reduce([total, count], d)
    return total / max(count, 1.0)


def answer_questions(
    llava,
    encoder: ConversationEncoder,
    preprocess_config,
    questions: list[dict],
    folder: Path,
    device: str,
    *,
    max_new_tokens: int = 48,
    batch: int = 32,
) -> list[str]:
    """Greedy answers of the torch model to single questions about one image each (a first turn), batched
    by prompt length so that no padding is needed."""
    import torch

    from ..image import load_image
    from ..preprocess import preprocess

    tok = encoder.tokenizer
    prompts = [encoder.prompt(q["question"], 1) for q in questions]
    answers = [""] * len(questions)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    was_training = llava.training
    llava.eval()
    for n, members in sorted(by_length.items()):
        for start in range(0, len(members), batch):
            chunk = members[start : start + batch]
            ids = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)
            pixels = np.concatenate(
                [preprocess(load_image(folder / questions[i]["image"]), preprocess_config) for i in chunk]
            )
            with torch.no_grad():
                out = llava.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    pixel_values=torch.from_numpy(pixels).to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=tok.eos_id,
                    pad_token_id=tok.eos_id,
                )
            for i, row in zip(chunk, out[:, n:].tolist(), strict=True):
                if tok.eos_id in row:
                    row = row[: row.index(tok.eos_id)]
                answers[i] = tok.decode(row)
    llava.train(was_training)
    return answers


# -- progress ------------------------------------------------------------------------------------------


class Progress:
    """One status line on stderr (rewritten in place on a terminal) and `log.jsonl`, on process 0 only."""

    def __init__(self, out: Path, total: int, enabled: bool, every: int, append: bool):
        self.total, self.enabled, self.every = total, enabled, max(1, every)
        self.tty = enabled and sys.stderr.isatty()
        self.log = open(out / "log.jsonl", "a" if append else "w") if enabled else None  # noqa: SIM115
        self.t0 = time.perf_counter()
        self.steps_done = 0

    def record(self, entry: dict) -> None:
        if self.log is not None:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()

    def step(self, entry: dict) -> None:
        self.record(entry)
        self.steps_done += 1
        if not self.enabled:
            return
        step = entry["step"]
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.steps_done * (self.total - step)
        line = (
            f"step {step}/{self.total} | loss {entry['loss']:.4f} | lr {entry['lr']:.2e} | "
            f"{entry['samples_per_s']:.1f} samples/s {entry['tokens_per_s']:.0f} tok/s | "
            f"eta {int(eta // 60)}m{int(eta % 60):02d}s"
        )
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif step % self.every == 0 or step == self.total:
            print(line, file=sys.stderr, flush=True)

    def say(self, message: str) -> None:
        if self.enabled:
            print(("\n" if self.tty else "") + message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)
        if self.log is not None:
            self.log.close()


# -- training ------------------------------------------------------------------------------------------


def _text_lines(samples: list[Sample], template: str) -> list[str]:
    """Text for training a new tokenizer: every turn as the model will see it."""
    from ..chat import TEMPLATES

    t = TEMPLATES[template]
    lines = []
    for s in samples:
        for k, (q, a) in enumerate(s.turns):
            lines.append(t.turn(q, 0, k == 0))
            lines.append(a)
    return lines or ["-"]


def _prepare_model_dir(args, d: Dist, samples: list[Sample]) -> Path:
    """The checkpoint folder training starts from: --model, or out/init created from --config."""
    if not args.config:
        return Path(args.model)
    init = Path(args.out) / "init"
    cfg = read_new_model_config(args.config)
    kept = init / CONFIG_COPY
    if d.main and not kept.is_file():
        decoder = cfg["text_config"].get("model_type", "mistral")
        template = "mistral_instruct" if decoder == "mistral" else "llava_v1"
        create_model(cfg, init, _text_lines(samples, template), args.seed, where=args.config)
    _barrier(d)
    if json.loads(kept.read_text()) != cfg:
        raise ConvertError(
            f"{args.config}: differs from {kept}, which {init} was created from; use a new --out"
        )
    return init


def _wrap(module, llava, args, d: Dist):
    if d.world == 1:
        return module
    if args.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        tower = llava.model.vision_tower
        tower = getattr(tower, "vision_model", tower)
        for layer in [*tower.encoder.layers, *llava.model.language_model.layers]:
            fully_shard(layer)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.local_rank] if d.device.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=ids)


def _sync_context(module, args, sync: bool):
    if args.parallel == "fsdp" and hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if hasattr(module, "no_sync") and not sync:
        return module.no_sync()
    return contextlib.nullcontext()


def train(args: argparse.Namespace) -> Path:
    """Run a training job described by parsed command-line arguments; returns the out folder."""
    import torch
    from torch.utils.data import DataLoader

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    d = init_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    existing = _checkpoint_dirs(out)
    if existing and not args.resume:
        raise ConvertError(f"{out}: has checkpoints ({existing[-1].name}); pass --resume, or a new --out")

    samples = load_samples(args.data, args.image_folder)
    model_dir = _prepare_model_dir(args, d, samples)
    torch.manual_seed(args.seed)
    llava = load_llava(model_dir)
    config = llava.config
    template = PLAIN if args.stage == "pretrain" else chat_template_name(config)
    tok = runtime_tokenizer(model_dir, config.text_config.vocab_size)
    encoder = ConversationEncoder(tok, template, config.image_token_id, image_token_count(config))
    pp = model_preprocess_config(model_dir, config)
    dataset = LlavaDataset(samples, encoder, pp, args.max_length)
    if not len(dataset):
        raise ConvertError(f"{args.data}: no usable samples (all without images for pretrain, or too long)")
    eval_set = None
    if args.eval_data:
        eval_set = LlavaDataset(load_samples(args.eval_data, args.image_folder), encoder, pp, args.max_length)
    questions = None
    if args.questions:
        questions = json.loads(Path(args.questions).read_text())[: args.questions_limit or None]
    pad_id = tok.pad_id if tok.pad_id is not None else 0

    pretrain = args.stage == "pretrain"
    set_trainable(llava, projector=True, decoder=not pretrain and not args.lora, vision=args.train_vision)
    peft_model = None
    if args.lora:
        if pretrain:
            raise ConvertError("--lora applies to --stage finetune (pretraining trains only the projector)")
        keep = {n for n, p in llava.named_parameters() if p.requires_grad}
        peft_model = add_lora(llava, args.lora_r, args.lora_alpha, args.lora_dropout)
        for n, p in llava.named_parameters():  # peft froze everything but the adapters
            if n in keep:
                p.requires_grad_(True)
    if args.gradient_checkpointing:
        llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    llava.to(d.device)
    torch.manual_seed(args.seed + 1 + d.rank)  # dropout streams, distinct per process
    module = _wrap(_loss_module(llava), llava, args, d)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay
    )

    plan = DataPlan(len(dataset), args.seed, args.micro_batch, args.grad_accum, d.world)
    total = args.steps or max(1, math.ceil(args.epochs * len(dataset) / plan.global_batch))
    warmup = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_ratio * total)
    settings = {
        "stage": args.stage,
        "model": str(args.model),
        "config": str(args.config),
        "data": str(Path(args.data).resolve()),
        "seed": args.seed,
        "global_batch": plan.global_batch,
        "total_steps": total,
        "lr": args.lr,
        "min_lr": args.min_lr,
        "warmup_steps": warmup,
        "weight_decay": args.weight_decay,
        "lora": args.lora,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "train_vision": args.train_vision,
        "max_length": args.max_length,
    }
    start, rng = 0, {}
    if args.resume and existing:
        state, rng = load_checkpoint(existing[-1], module, optimizer, d)
        differ = [k for k in RESUME_KEYS if state["settings"].get(k) != settings[k]]
        if differ:
            details = ", ".join(f"{k}: {state['settings'].get(k)!r} -> {settings[k]!r}" for k in differ)
            raise ConvertError(f"{existing[-1]}: cannot resume with different settings ({details})")
        start = state["step"]
    stop = min(total, args.stop_after) if args.stop_after else total

    progress = Progress(out, total, d.main, args.log_every, append=start > 0)
    n_trainable = sum(p.numel() for p in params)
    progress.say(
        f"{model_dir}: {args.stage}, template {template}, {len(dataset)} samples "
        f"({dataset.dropped} dropped), {n_trainable:,} trainable parameters, {d.world} process(es) on "
        f"{d.device}, global batch {plan.global_batch}, steps {start}..{stop} of {total}"
    )

    def autocast():
        if args.dtype == "bf16":
            return torch.autocast(device_type=d.device.split(":")[0], dtype=torch.bfloat16)
        return contextlib.nullcontext()

    if questions and args.parallel == "fsdp" and d.world > 1:
        progress.say(
            "--questions: exact-answer accuracy needs the whole model in one process; not under FSDP"
        )

    def evaluate(step: int) -> None:
        if eval_set is not None:
            loss = eval_loss(module, eval_set, args.micro_batch, pad_id, d, autocast)
            progress.say(f"step {step}: eval loss {loss:.4f}")
            progress.record({"step": step, "eval_loss": loss})
        if questions and not (args.parallel == "fsdp" and d.world > 1):
            if d.main:
                folder = Path(args.questions_folder or Path(args.questions).parent)
                with autocast():
                    answers = answer_questions(llava, encoder, pp, questions, folder, d.device)
                from ..demo_data import score_answers

                scores = score_answers(questions, answers)
                progress.say(
                    f"step {step}: exact answers " + " ".join(f"{k} {v:.3f}" for k, v in scores.items())
                )
                progress.record({"step": step, "accuracy": scores})
            _barrier(d)

    state = {"settings": settings}
    loader = DataLoader(
        dataset,
        batch_sampler=StepBatches(plan, d.rank, start, stop),
        num_workers=args.workers,
        collate_fn=functools.partial(collate_parts, pad_id=pad_id, parts=args.length_groups),
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG out of data loading
        pin_memory=d.device.startswith("cuda"),
        worker_init_fn=_quiet_worker,
    )
    batches_iter = iter(loader)
    restore_rng(rng)
    module.train()
    with StopRequest(progress.say) as stop_request:
        for step in range(start, stop):
            t0 = time.perf_counter()
            batches = [part for _ in range(plan.accum) for part in next(batches_iter)]
            local_labels = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
            (n_labels,) = _all_reduce([float(local_labels)], d)
            lr = lr_at(step, args.lr, total, warmup, args.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for a, b in enumerate(batches):
                b = {k: (v.to(d.device, non_blocking=True) if v is not None else None) for k, v in b.items()}
                with _sync_context(module, args, a == len(batches) - 1):
                    with autocast():
                        loss = module(**b)
                    # every labelled token of the global batch weighs the same; DDP/FSDP average over
                    # processes
                    (loss * (d.world / max(n_labels, 1.0))).backward()
                loss_sum += float(loss.detach())
            grad_norm = None
            if args.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                # FSDP: a DTensor
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens = sum(int(b["attention_mask"].sum()) for b in batches)
            # the stop flag rides on the step's own reduction: every process stops at the same step,
            # whichever of them got the signal
            loss_all, tokens_all, asked = _all_reduce([loss_sum, float(tokens), float(stop_request.asked)], d)
            dt = max(time.perf_counter() - t0, 1e-9)
            entry = {
                "step": step + 1,
                "loss": loss_all / max(n_labels, 1.0),
                "lr": lr,
                "samples_per_s": plan.global_batch / dt,
                "tokens_per_s": tokens_all / dt,
            }
            if grad_norm is not None:
                entry["grad_norm"] = grad_norm
            progress.step(entry)
            done = step + 1
            interrupted = asked > 0
            if args.eval_every and done % args.eval_every == 0 and done < total and not interrupted:
                evaluate(done)
            if (args.save_every and done % args.save_every == 0) or done == stop or interrupted:
                save_checkpoint(out, done, module, optimizer, state, d, args.keep_checkpoints)
            if interrupted:
                progress.close()
                raise Interrupted(
                    f"{out}: interrupted after step {done} of {total}; the checkpoint is saved, "
                    "rerun the same command with --resume to continue"
                )
    if stop < total:
        progress.say(f"stopped after step {stop} of {total}; continue with --resume")
        progress.close()
        return out
    evaluate(total)
    save_final(args, d, module, llava, peft_model, model_dir, out, progress)
    progress.close()
    return out


def save_final(
    args, d: Dist, module, llava, peft_model, model_dir: Path, out: Path, progress: Progress
) -> None:
    """The trained model as a llava-hf checkpoint folder (LoRA merged) in out/model, then its bundle."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    target = out / "model"
    if args.parallel == "fsdp" and d.world > 1:
        weights = get_model_state_dict(
            module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if d.main:  # a fresh copy on the CPU receives the gathered weights
            llava = load_llava(model_dir)
            if peft_model is not None:
                peft_model = add_lora(llava, args.lora_r, args.lora_alpha, args.lora_dropout)
            llava.load_state_dict({k.removeprefix("llava."): v for k, v in weights.items()}, strict=True)
    if d.main:
        if peft_model is not None:
            llava = peft_model.merge_and_unload()
        llava.to("cpu").save_pretrained(target)
        copy_side_files(model_dir, target)
        progress.say(f"trained model -> {target}")
        if args.export_type != "none":
            from .llava_export import export_llava

            export_llava(target, out / "bundle", args.export_type, progress=True)
            progress.say(f"bundle ({args.export_type}) -> {out / 'bundle'}")
    _barrier(d)


# -- command line --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llava_edge.convert.train",
        description="Train a LLaVA model (llava-hf LlavaForConditionalGeneration) on LLaVA-format JSON data: "
        "projector pretraining or instruction finetuning (full or LoRA), on one process or under torchrun "
        "(DDP or FSDP), resumable; the result is exported as a llava-edge bundle.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="llava-hf checkpoint folder to start from")
    src.add_argument(
        "--config",
        help="JSON describing a new small LLaVA (vision_config, text_config, vision_feature_layer, "
        "tokenizer, tokenizer_vocab_size, vision_tower); see llava_edge/convert/train_model.py",
    )
    p.add_argument(
        "--data", required=True, help="training data: a LLaVA JSON list of {id, image, conversations}"
    )
    p.add_argument(
        "--image-folder", help="folder the JSON's image paths are relative to (default: the JSON's)"
    )
    p.add_argument("--eval-data", help="LLaVA JSON for the periodic eval loss")
    p.add_argument(
        "--questions", help="JSON list of {image, question, answer[, type]}: exact-answer accuracy"
    )
    p.add_argument("--questions-folder", help="folder the questions' image paths are relative to")
    p.add_argument("--questions-limit", type=int, default=0, help="use the first N questions (0: all)")
    p.add_argument("--out", required=True, help="run folder: log, checkpoints, model/, bundle/")
    p.add_argument(
        "--stage",
        choices=("pretrain", "finetune"),
        default="finetune",
        help="pretrain: the projector alone, on image + caption (plain format); "
        "finetune: projector + decoder, on conversations in the model's chat template",
    )
    p.add_argument("--lora", action="store_true", help="finetune LoRA adapters instead of the whole decoder")
    p.add_argument("--lora-r", type=int, default=64, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=128, help="LoRA alpha (scale alpha / r)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the LoRA input")
    p.add_argument(
        "--train-vision", action="store_true", help="train the vision tower too (frozen by default)"
    )
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (0: from --epochs)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data when --steps is 0")
    p.add_argument("--micro-batch", type=int, default=8, help="samples per forward pass per process")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step per process")
    p.add_argument(
        "--length-groups",
        type=int,
        default=1,
        help="run each micro-batch as N forwards of length-sorted samples, each padded only to its own "
        "longest: the same gradient with less arithmetic on padding (pays on a CPU; 1: one forward)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=2e-5,
        help="peak learning rate (LLaVA: 1e-3 pretrain, 2e-5 full, 2e-4 LoRA)",
    )
    p.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine decay")
    p.add_argument(
        "--warmup-ratio", type=float, default=0.03, help="warm-up steps as a fraction of all steps"
    )
    p.add_argument("--warmup-steps", type=int, help="warm-up steps (overrides --warmup-ratio)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    p.add_argument(
        "--max-length",
        type=int,
        default=2048,
        help="longest sequence in tokens (images included); longer conversations lose their last turns",
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="compute precision: bf16 autocast over fp32 weights, or fp32",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument(
        "--parallel",
        choices=("ddp", "fsdp"),
        default="ddp",
        help="under torchrun: replicate (DDP) or shard (FSDP2) the model",
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)"
    )
    p.add_argument("--workers", type=int, default=2, help="data loader worker processes per process")
    p.add_argument("--seed", type=int, default=0, help="seeds data order, new-model init and LoRA init")
    p.add_argument(
        "--log-every", type=int, default=10, help="status line every N steps (when not a terminal)"
    )
    p.add_argument(
        "--eval-every", type=int, default=0, help="eval loss / accuracy every N steps (and at the end)"
    )
    p.add_argument(
        "--save-every", type=int, default=0, help="checkpoint every N steps (and always at the end)"
    )
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept (0: all)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument(
        "--stop-after", type=int, default=0, help="stop (checkpointed) after step N; --resume later"
    )
    p.add_argument(
        "--export-type",
        default="f16",
        choices=("none", *FILE_TYPES),
        help="GGUF type of the exported bundle (none: keep only the checkpoint folder)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("micro_batch", "grad_accum", "length_groups"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    try:
        train(args)
    except Interrupted as e:
        print(e, file=sys.stderr)
        return 130  # the shell's code for a run stopped by Ctrl-C
    except LlavaEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
