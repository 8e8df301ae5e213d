"""The `rsctool` command: global options, one sub-command per stage, errors -> exit codes.

Exit codes: 0 success; 2 bad input or usage (one line naming the file and problem, no
traceback); 1 internal error; 130 interrupted (Ctrl-C), 143 / 129 stopped by SIGTERM /
SIGHUP (handled like Ctrl-C: a resumable state). Stage modules define their own
thin Typer command at the bottom; this module only assembles them.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer._completion_classes import completion_init
from typer.core import TyperGroup, TyperOption

try:  # recent typer ships its own copy of click; its exceptions are the ones raised
    from typer._click import ClickException
    from typer._click.exceptions import NoSuchOption
except ImportError:  # older typer uses click itself
    from click import ClickException
    from click.exceptions import NoSuchOption

from rsctool import __version__
from rsctool.console import AppState, err_console
from rsctool.devices import DEVICES
from rsctool.errors import ExitStatus, UserError, flag_lookup, render_message

_COMPLETION_OPTIONS = ("--show-completion", "--install-completion")
_DETECT = "detect"  # the value of a bare --show-completion: the shell this runs in

# Exceptions that already carry their exit code and message.
_CLICK_FLOW = (typer.Exit, typer.Abort, ClickException)

#: Options of the `rsctool` callback; given after a stage they get a hint.
_GLOBAL_OPTIONS = {"--project": "PATH", "-p": "PATH", "--device": "cpu", "--seed": "N",
                   "--quiet": "", "-q": ""}

#: Exit codes of every stage (the CLI reference, docs/cli/index.md, is generated from this).
EXIT_CODES: dict[int, str] = {
    0: "success (also: nothing to do, e.g. a finished run or an unchanged dataset)",
    1: "internal error: a bug; one line names the exception (`RSCTOOL_DEBUG=1` prints the "
       "traceback)",
    2: "bad input or usage: a missing or malformed file, a bad option value, an unknown "
       "run or dataset, a run, synthetic set or dataset that another rsctool process is "
       "writing; one line names the file and the problem, nothing is half-written "
       "(`predict --keep-going`: some files failed)",
    129: "stopped by SIGHUP (the terminal closed), handled like Ctrl-C; the same command "
         "again resumes",
    130: "interrupted (Ctrl-C or SIGINT); the same command again resumes",
    141: "stdout closed early by the reader (e.g. `rsctool ... --json | head`)",
    143: "stopped by SIGTERM (`timeout`, SLURM pre-emption, `docker stop`), handled like "
         "Ctrl-C: the run is checkpointed and recorded `interrupted`; the same command "
         "again resumes",
}


def _flag_type(self: TyperOption, ctx):
    """typer's help shows a type column for every option, `<bool>` for a flag too; a flag
    takes no value, so its type column stays empty."""
    if self.is_flag and self.metavar is None:
        return None
    return _option_type(self, ctx)


_option_type = getattr(TyperOption, "display_type_rich", None)
if _option_type is not None:  # the typer versions that print a type for every option
    TyperOption.display_type_rich = _flag_type


class _Group(TyperGroup):
    """Maps rsctool's error types to exit codes for every sub-command, and loads the
    sub-commands in `_LAZY` on first use.

    Doing it here (not only in `main`) means tests driving `app` with CliRunner see
    the same exit codes and messages as a user in a shell.
    """

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return [*names, *(n for n in _LAZY if n not in names)]

    def get_command(self, ctx: typer.Context, cmd_name: str):
        if cmd_name not in self.commands and cmd_name in _LAZY:
            self.commands[cmd_name] = _load_command(cmd_name)
        return super().get_command(ctx, cmd_name)

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        # `--show-completion` / `--install-completion` take an optional SHELL; typer's
        # parser has no optional values, so a bare one gets the value "detect".
        args = list(args)
        for i, a in enumerate(args):
            if a in _COMPLETION_OPTIONS:
                nxt = args[i + 1] if i + 1 < len(args) else None
                if nxt is None or nxt.startswith("-") or nxt in _LAZY:
                    args.insert(i + 1, _DETECT)
                break
            if a in _LAZY or a == "--":  # the stage's own arguments start here
                break
        return super().parse_args(ctx, args)

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except ClickException as e:  # a mistyped global option or value
            _usage_error(e)

    def invoke(self, ctx: typer.Context):
        from rsctool.signals import exit_code, handled

        try:
            with handled():  # SIGTERM and SIGHUP stop a stage like Ctrl-C
                return super().invoke(ctx)
        except UserError as e:
            if _main_process():  # several processes (torchrun, --processes): say it once
                # An error naming an option by field shows this command's flag for it.
                text = render_message(e, flag_lookup(ctx))
                err_console.print(f"error: {text}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        except ExitStatus as e:  # a lower module's way to end the command (no typer there)
            raise typer.Exit(e.code) from None
        except KeyboardInterrupt as e:
            if _main_process():
                by = f" by {e}" if exit_code(e) != 130 else ""
                with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                    err_console.print(f"interrupted{by}: stopped cleanly; run the same "
                                      "command again to resume", markup=False,
                                      highlight=False)
            raise typer.Exit(exit_code(e)) from None
        except NoSuchOption as e:
            if e.option_name in _GLOBAL_OPTIONS and ctx.invoked_subcommand:
                given = f"{e.option_name} {_GLOBAL_OPTIONS[e.option_name]}".strip()
                e.message += (f" ({e.option_name} is a global option: put it before the "
                              f"stage, as in `rsctool {given} {ctx.invoked_subcommand} ...`)")
            _usage_error(e)
        except ClickException as e:
            _usage_error(e)
        except _CLICK_FLOW:
            raise
        except BrokenPipeError:
            # The reader went away (`rsctool ... | head`): not an error worth a message.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141) from None
        except OSError as e:
            from rsctool.utils import is_write_error, write_error

            # Safety net behind the atomic writers: any other write that hits a read-only
            # folder, a missing permission or a full disk is the user's to fix, not a bug.
            if not (is_write_error(e) and e.filename is not None):
                _internal_error(e)
            if _main_process():
                err_console.print(f"error: {write_error(e)}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        except Exception as e:
            _internal_error(e)


def _usage_error(e: ClickException):
    """Re-raise a usage error for typer's boxed message on a terminal; elsewhere (a log, a
    pipe, CI) print the one line `error: rsctool STAGE: problem` and exit 2."""
    if type(e).__name__ == "NoArgsIsHelpError" or _stderr_is_terminal():
        raise e
    ctx = getattr(e, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None and ctx.command_path else ""
    message = " ".join(e.format_message().split())
    hint = f" (see `{ctx.command_path} -h`)" if ctx is not None else ""
    if _main_process():
        err_console.print(f"error: {where}{message}{hint}", markup=False, highlight=False)
    raise typer.Exit(e.exit_code) from None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced by an object without it
        return False


def _internal_error(e: BaseException) -> None:
    """Report `e` as a bug (one line, or the traceback with RSCTOOL_DEBUG) and exit 1."""
    if os.environ.get("RSCTOOL_DEBUG"):
        traceback.print_exc()
    else:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        err_console.print(
            f"internal error: {type(e).__name__}: {first} (set RSCTOOL_DEBUG=1 for the "
            "traceback, and please report it)", markup=False, highlight=False)
    raise typer.Exit(1) from None


def _main_process() -> bool:
    """False in the non-main processes of a multi-process launch (their messages would
    repeat the main process's)."""
    from rsctool.distributed import env_rank

    return env_rank() == 0


app = typer.Typer(
    cls=_Group,
    name="rsctool",
    help="Respiratory-sound classification: analyze, synth, train, eval, export, predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # rsctool's own --install-completion / --show-completion (below) take the shell as a
    # value; typer's are flags that guess it from the parent process.
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# Typer registers its shell-completion classes only with its own completion options:
# `_RSCTOOL_COMPLETE=complete_bash rsctool` needs them.
completion_init()


def _detect_shell() -> str:
    """The shell this process runs in (from its parent processes), or ""."""
    try:
        import shellingham

        return shellingham.detect_shell()[0].lower()
    except Exception:  # not installed, or no shell among the parents
        return ""


def _completion_callback(install: bool):
    """Eager callback of `--install-completion [SHELL]` / `--show-completion [SHELL]`:
    the shell given, else the one detected from the parent processes."""

    def callback(ctx: typer.Context, param, value: str | None) -> None:
        if value is None or ctx.resilient_parsing:
            return
        from typer._completion_shared import Shells, get_completion_script
        from typer._completion_shared import install as install_script

        shells = [s.value for s in Shells]
        shell = _detect_shell() if value == _DETECT else value
        if shell not in shells:
            found = f"shell {shell!r}" if shell else "no shell detected"
            raise typer.BadParameter(f"{found}: give one of {', '.join(shells)}",
                                     param_hint=param.opts[0])
        if install:
            shell, path = install_script(shell=shell, prog_name="rsctool")
            typer.echo(f"{shell} completion installed in {path}; open a new shell to use it")
        else:
            typer.echo(get_completion_script(prog_name="rsctool",
                                             complete_var="_RSCTOOL_COMPLETE", shell=shell))
        raise typer.Exit()

    return callback


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rsctool {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    *,
    project: Annotated[Path | None, typer.Option(
        "--project", "-p", envvar="RSCTOOL_PROJECT", show_envvar=True,
        help="Project file (default ./rsctool.toml; created on first use).")] = None,
    device: Annotated[str, typer.Option(
        help="Compute device: auto (CUDA when present), cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed for everything that draws numbers.")] = 0,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No tables or progress on stderr (warnings and errors still).")
    ] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    install_completion: Annotated[str | None, typer.Option(
        "--install-completion", metavar="[SHELL]",
        callback=_completion_callback(install=True), is_eager=True, expose_value=False,
        help="Install completion for SHELL (bash, zsh, fish, powershell, pwsh; default: "
             "the shell this runs in).")] = None,
    show_completion: Annotated[str | None, typer.Option(
        "--show-completion", metavar="[SHELL]",
        callback=_completion_callback(install=False), is_eager=True, expose_value=False,
        help="Print the completion script for SHELL (default: the shell this runs in).")
    ] = None,
) -> None:
    if device not in DEVICES:
        raise typer.BadParameter(f"must be one of {', '.join(DEVICES)}", param_hint="--device")
    ctx.obj = AppState(project=project, device=device, seed=seed, quiet=quiet)


#: Sub-commands, in help order: name -> module defining `command`. A module is imported
#: only when its command runs (or `rsctool --help` lists them all), so `rsctool predict`
#: on an ONNX model never imports torch or the other stages: start-up stays well under 1 s.
_LAZY: dict[str, str] = {
    "analyze": "rsctool.analyze",
    "status": "rsctool.status",
    "demo-data": "rsctool.demodata",
    "synth": "rsctool.synth",
    "train": "rsctool.train",
    "eval": "rsctool.eval",
    "export": "rsctool.export",
    "predict": "rsctool.predict",
}


def _load_command(name: str):
    """The click command of stage `name`, built from its module's Typer `command`."""
    import importlib

    sub = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    sub.command(name)(importlib.import_module(_LAZY[name]).command)
    return typer.main.get_command(sub)


def main() -> None:
    """Console-script entry point; ends the process through `exit_now`."""
    freeze_on_import("torch")
    try:
        app(prog_name="rsctool")
    except KeyboardInterrupt as e:  # Ctrl-C outside a sub-command (e.g. during imports)
        from rsctool.signals import exit_code

        err_console.print("interrupted", markup=False)
        sys.exit(exit_code(e))
    except SystemExit as e:  # click's standalone mode ends every command so
        exit_now(e.code)


class _FreezeOnImport(importlib.abc.MetaPathFinder):
    """Runs one module's first import with the cyclic garbage collector paused, then
    freezes what exists (`gc.freeze`): see `freeze_on_import`."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once, and the finders after this one find the spec
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, run = spec.loader, spec.loader.exec_module

        def exec_module(module: Any) -> None:
            enabled = gc.isenabled()
            gc.disable()
            try:
                run(module)
            finally:
                gc.freeze()
                if enabled:
                    gc.enable()
                del loader.exec_module  # the loader's own method again

        try:
            loader.exec_module = exec_module  # on this loader instance, for this import
        except AttributeError:  # a loader without instance attributes: import as is
            pass
        return spec


def freeze_on_import(name: str) -> None:
    """Import `name` (when something first imports it) with the collector paused, and move
    every object then alive out of the collector's view (`gc.freeze`).

    torch's import makes some 160,000 long-lived objects; with them in view, each full
    collection while a command starts (rsctool's modules, building and loading a model)
    walks them all: 170 ms of `rsctool predict` on one window with AST, 1.47 vs 1.30 s
    (docs/benchmarks.md, "the last block on two tokens; starting and ending the
    process"). Frozen objects are never
    collected, which for a module's objects costs nothing: they live as long as the
    process. No effect once `name` is imported."""
    if name not in sys.modules and not any(isinstance(f, _FreezeOnImport) and f.name == name
                                           for f in sys.meta_path):
        sys.meta_path.insert(0, _FreezeOnImport(name))


def exit_now(code: object) -> NoReturn:
    """Exit with `code` as `sys.exit` does, without the interpreter's teardown where
    nothing needs it.

    With torch loaded, the teardown (collecting and freeing the objects of some 1,200
    modules) takes 0.28 s here: 6 % of `rsctool predict` on a 3-minute recording with
    AST (docs/benchmarks.md, "the last block on two tokens; starting and ending the
    process"). What the teardown does that matters is kept: the atexit handlers run
    (logging, multiprocessing, weakref finalizers, coverage) and stdout/stderr are
    flushed; rsctool's own files are closed (or written atomically) before a command
    returns. The normal exit is taken when a non-daemon thread is still running (the
    teardown would wait for it), in a multi-process launch (whose process group is ended
    first) or for a message instead of a status.
    """
    import threading

    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        # torch asks for the process group to be ended before the program ends: left to
        # the teardown, gloo's threads can be freed while joinable, and the process
        # aborts ("terminate called without an active exception", SIGABRT; seen once in
        # a fresh-ci run of a finished 2-process train)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        sys.exit(code)
    if not isinstance(code, int | None) or others or os.environ.get("WORLD_SIZE", "1") != "1":
        sys.exit(code)
    import atexit

    status = code or 0
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BrokenPipeError:  # the reader went away before the last records
            status = status or 141
        except (OSError, ValueError):  # a closed or failing stream: as the teardown does
            status = status or 120
    os._exit(status)
