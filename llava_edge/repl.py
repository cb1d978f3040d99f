"""The terminal side of `llava-edge chat`: streaming an answer with a progress note and a speed line,
and the interactive loop (/image PATH, /clear, /quit). Ctrl-C stops the current answer and keeps the
conversation; a Ctrl-C at the prompt exits with status 130."""

from __future__ import annotations

import signal
import sys

import click

from .errors import LlavaEdgeError

HELP = "commands: /image PATH (add an image), /clear (new conversation), /quit"


def stream_answer(session, question: str, *, verbose: bool = True, **gen) -> None:
    """Print the answer as it streams; Ctrl-C stops it (the session stays usable)."""
    n_images = len(session.pending_images) + len(gen.get("images", ()))
    note = "encoding the image and reading the prompt..." if n_images else "reading the prompt..."
    click.echo(f"[{note}]", nl=False, err=True)
    shown = False
    last = None
    interrupted = []

    def on_sigint(signum, frame):
        if interrupted:  # a second Ctrl-C during the same answer: leave
            raise SystemExit(130)
        interrupted.append(True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        for last in session.ask(question, should_stop=lambda: bool(interrupted), **gen):
            if not shown:
                click.echo("\r\033[K", nl=False, err=True)  # erase the note at the first token
                shown = True
            click.echo(last.text, nl=False)
            sys.stdout.flush()
    finally:
        signal.signal(signal.SIGINT, previous)
        if not shown:
            click.echo("\r\033[K", nl=False, err=True)
    click.echo()
    if interrupted:
        before = last is None or last.generation_tokens == 0
        click.echo(
            "[stopped before the answer began; that question was dropped]" if before else "[stopped]",
            err=True,
        )
    if verbose and last is not None:
        click.echo(
            f"[prompt: {last.prompt_tokens} tokens in {last.prompt_seconds:.2f} s "
            f"({last.prompt_tps:.1f} tokens/s) | answer: {last.generation_tokens} tokens, "
            f"{last.generation_tps:.1f} tokens/s]",
            err=True,
        )


def interactive(session, *, verbose: bool = True, **gen) -> None:
    click.echo(HELP, err=True)
    while True:
        try:
            line = input("> ")
        except EOFError:
            return
        except KeyboardInterrupt:
            click.echo()
            sys.exit(130)
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/clear":
            session.reset()
            click.echo("[new conversation]", err=True)
            continue
        if line.startswith("/image"):
            path = line[len("/image") :].strip()
            if not path:
                click.echo("usage: /image PATH", err=True)
                continue
            session.add_image(path)
            click.echo(f"[image added: {path}; it goes with your next question]", err=True)
            continue
        if line.startswith("/"):
            click.echo(f"unknown command {line.split()[0]}; {HELP}", err=True)
            continue
        try:
            stream_answer(session, line, verbose=verbose, **gen)
        except LlavaEdgeError as e:
            click.echo(f"error: {e}", err=True)
        except KeyboardInterrupt:  # a second Ctrl-C just after the answer's own handler was removed
            click.echo()
            sys.exit(130)
