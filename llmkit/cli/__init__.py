"""The `llmkit` command line: one module per command group, each command a thin function that
parses its options, calls the library, and prints.

    data.py      download, tokenize          train.py     train
    evaluate.py  eval                        generate.py  generate
    chat.py      chat                        serve.py     serve
    finetune.py  finetune, classify          export.py    export
    plot.py      plot loss|lr|attention|positions|masks|embeddings

Each command imports the library (and torch) only when it runs, so `llmkit --help` stays fast.
Results go to stdout (paths, text, JSON), everything else to stderr, so commands compose in a
shell. Errors are one message and a hint, with a non-zero exit code.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Annotated

import typer

from llmkit import __version__
from llmkit.cli import chat, data, evaluate, export, finetune, generate, plot, serve, train
from llmkit.errors import LlmkitError

app = typer.Typer(
    name="llmkit",
    help="Language models from scratch: download -> tokenize -> train -> eval / generate.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"llmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Language models from scratch: download -> tokenize -> train -> eval / generate.

    Start with: llmkit train recipes/shakespeare_char.yaml
    """


# In the order `llmkit --help` lists them.
for command in (data.download, data.tokenize, train.train, evaluate.eval_, generate.generate, chat.chat,
                serve.serve, finetune.finetune, finetune.classify):
    app.command(command.__name__.rstrip("_"))(command)
app.add_typer(plot.app, name="plot")
app.command()(export.export)


def main() -> None:
    try:
        try:
            app(prog_name="llmkit")
        finally:
            sys.stdout.flush()  # here, not at exit, so that a full disk (> /dev/full) is reported
    except LlmkitError as e:
        _fail(e.message, e.hint, e.exit_code)
    except BrokenPipeError:
        # The reader went away (`llmkit generate ... | head`): stop quietly, as other tools do.
        _silence_stdout()
        sys.exit(141)
    except OSError as e:  # one the library did not name itself: say which file, never a traceback
        from llmkit.files import os_error

        error = os_error(e, e.filename, "use") if e.filename else os_error(e, "standard output", "write")
        _silence_stdout()  # nothing more to flush
        _fail(error.message, error.hint, 2)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's own flush at exit cannot fail again (a real file
    descriptor only: embedded or captured, stdout has none, and nothing is left to flush)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def _fail(message: str, hint: str | None, code: int) -> None:
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    sys.exit(code)
