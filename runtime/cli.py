"""The dlspec command line: check, compile, train, predict, eval, export, grad, gradcheck, plot.

Exit codes: 0 done; 1 a check failed (gradcheck); 2 bad input (a SpecError, CompileError or
RunError: one message, no traceback), as argparse's usage errors; 3 an internal error, a bug in
dlspec (one line; --debug shows the traceback); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM):
both stop as a failure does, leaving no half-written file; 141 output to a closed pipe.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# Only what the parser needs loads here: `dlspec --version` and `--help` stay fast. Each command
# imports the rest (onnx, onnxruntime, the compiler, rich) when it runs.
from dlspec import eval_cli, export_cli, grad_cli, plot, predict_cli
from dlspec.arg_types import positive, positive_float, whole_number
from dlspec.spec.errors import DlspecError, RunError
from dlspec.spec.version import __version__

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from dlspec.compiler import Compiled

CHECK_FAILED, INTERNAL_ERROR, INTERRUPTED = 1, 3, 130  # bad input: DlspecError.exit_code, 2
BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe
TERMINATED = 143  # 128 + SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised where the command is, as Ctrl-C raises KeyboardInterrupt: the writes under
    way remove their temporary files and a run's first epoch leaves no folder behind."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _compile(args: argparse.Namespace) -> Compiled:
    """api.compile, without importing the API: check and compile need neither onnxruntime nor the
    training loop."""
    from dlspec.compiler import compile_model
    from dlspec.compiler.grad.coverage import with_untrainable_notes
    from dlspec.spec.loader import load

    return with_untrainable_notes(compile_model(load(args.spec), args.model, args.seed))


def cmd_check(args: argparse.Namespace, out: Console) -> int:
    from rich.markup import escape
    from rich.table import Table

    from dlspec.compiler.graph import show

    c = _compile(args)
    table = Table(title=f"model {c.model.name}", title_justify="left")
    for col, justify in (("layer", "left"), ("kind", "left"), ("output", "left"),
                         ("params", "right"), ("FLOPs", "right")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in c.records:
        table.add_row(r.path, r.kind, " ".join(show(s) for s in r.shapes), f"{r.params:,}", _si(r.flops))
    params = sum(r.params for r in c.records)
    flops = sum(r.flops for r in c.records)
    table.add_section()
    table.add_row("total", "", _outputs(c), f"{params:,}", _si(flops))
    whole_when_piped(out, table)
    out.print(table)
    ins = ", ".join(f"{t.name}: {t.dtype}{show(tuple(None if isinstance(d, str) else d for d in t.shape))}"
                    for t in c.model.inputs)
    frozen = f" ({params - c.trainable_size:,} of them frozen)" if c.frozen else ""
    out.print(f"inputs {ins}; {params:,} parameters, {c.trainable_size:,} trainable{frozen}; "
              f"{_si(flops)} FLOPs per sample (a multiply-add counts 2)")
    _notes(c.notes, out)
    out.print(f"[green]ok[/green]: {escape(str(args.spec))} is valid")
    return 0


def _outputs(c: Compiled) -> str:
    """`logits [N, 10]`, or each head's output: `cls [N, 10], box [N, 4]`."""
    from dlspec.compiler.graph import show

    return ", ".join(f"{k} {show(v.dims)}" for k, v in (c.outputs or {c.output.name: c.output}).items())


def _notes(notes: Sequence[str], out: Console) -> None:
    for note in notes:
        out.print(f"note: {note}", markup=False)


def cmd_compile(args: argparse.Namespace, out: Console) -> int:
    import onnx

    from dlspec.files import atomic_write

    if args.train:
        return _compile_training(args, out)
    c = _compile(args)
    blob = c.onnx.SerializeToString()  # once: the checker would serialise the model again
    onnx.checker.check_model(blob, full_check=True)
    dest = Path(args.output or Path(args.spec).with_suffix(".onnx").name)
    atomic_write(dest, blob)
    params = sum(r.params for r in c.records)
    out.print(f"wrote {dest}: model {c.model.name}, {params:,} parameters, output"
              f"{'s' if len(c.outputs) > 1 else ''} {_outputs(c)}", markup=False)
    _notes(c.notes, out)
    return 0


def _compile_training(args: argparse.Namespace, out: Console) -> int:
    import onnx

    from dlspec import api
    from dlspec.artifacts import write_training
    from dlspec.compiler import Target
    from dlspec.files import OutputFolder
    from dlspec.spec.loader import load

    prog = load(args.spec)
    model = prog.model(args.model)
    dest = Path(args.output or f"{model.name}.train")
    with OutputFolder(dest, "the training graphs") as folder:  # gone again if compiling fails
        tg = api.compile_training(prog, args.model, seed=args.seed, target=Target(threads=args.threads))
        train = prog.train(model.name)
        from dlspec.training import init_from, unlowered_precision

        if train is not None and train.from_:  # init.npz starts where `dlspec train` would
            init_from(train, tg, Path(args.spec), out)
        asked = train.precision.kind if train is not None and train.precision else "fp32"
        if tg.precision != asked:
            out.print(f"note: {unlowered_precision(asked, 'these graphs compute')}", markup=False)
        for proto in (tg.inference.onnx, tg.train_step, tg.gradients, tg.apply):
            onnx.checker.check_model(proto, full_check=True)
        write_training(tg, folder)
    out.print(f"wrote {dest}/: model.onnx, train_step.onnx ({len(tg.train_step.graph.node)} nodes), "
              f"gradients.onnx, apply.onnx, init.npz; {len(tg.trainable)} trainable and "
              f"{len(tg.frozen)} frozen "
              f"parameter tensors; metrics: {', '.join(tg.terms + tg.metrics)}", markup=False)
    _notes(tg.inference.notes, out)
    return 0


def cmd_gradcheck(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from dlspec import api
    from dlspec.spec.loader import load

    prog = load(args.spec)
    out.print(f"gradcheck: the parameter tensors of {prog.model(args.model).name} against central "
              f"differences in float64 (eps {args.eps:g}, batch {args.batch}); slow, for debugging",
              markup=False)
    report = api.gradcheck_spec(prog, args.model, seed=args.seed, eps=args.eps, batch=args.batch,
                                directions=args.directions)
    table = Table(title="worst relative error per parameter tensor", title_justify="left")
    for col in ("parameter", "size", "checks", "rel. error", ""):
        table.add_column(col, justify="right" if col in ("size", "checks", "rel. error") else "left")
    failed = [r for r in report if not r.worst <= args.tol]
    for r in report:
        table.add_row(r.name, f"{r.size:,}", str(r.directions), f"{r.worst:.2e}",
                      "FAIL" if r in failed else "ok")
    out.print(table)
    if failed:
        out.print(f"{len(failed)} of {len(report)} tensors exceed the tolerance {args.tol:g}: "
                  f"worst {max(r.worst for r in failed):.2e} at {max(failed, key=lambda r: r.worst).name}",
                  markup=False)
        return CHECK_FAILED
    out.print(f"ok: all {len(report)} tensors within {args.tol:g} "
              f"(worst {max((r.worst for r in report), default=0.0):.2e})", markup=False)
    return 0


def cmd_train(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from dlspec import api, distributed

    if args.force and not args.resume:
        raise RunError("--force goes with --resume: it continues a run whose spec changed")
    if args.workers > 1 and not distributed.under_mpiexec():  # start the ranks; each runs the rest
        return distributed.launch(args.workers, _without_workers(args.argv))
    result = api.fit(args.spec, args.model, epochs=args.epochs, batch=args.batch, seed=args.seed,
                     out=args.out, resume=args.resume, force=args.force, device=args.device,
                     threads=args.threads or "auto", console=out)
    if distributed.env_rank():  # rank 0 reports for the job
        return 0
    table = Table(title=f"trained {result.run_dir}", title_justify="left")
    table.add_column("epochs", justify="right")
    table.add_column("steps", justify="right")
    for key in result.metrics:
        table.add_column(f"test {key}", justify="right")
    table.add_row(str(result.epochs), str(result.steps), *(f"{v:.4f}" for v in result.metrics.values()))
    whole_when_piped(out, table)
    out.print(table)
    out.print(f"wrote {result.run_dir / 'model.onnx'} (best checkpoint), metrics.jsonl, last.npz, best.npz",
              markup=False)
    return 0


def whole_when_piped(out: Console, table: Table) -> None:
    """Piped or captured output gets whole rows and column names (full layer paths, "accuracy:cls")
    rather than have them wrapped or cut at 80 columns."""
    from rich.measure import Measurement

    if not out.is_terminal:
        out.width = max(out.width, Measurement.get(out, out.options.update_width(10_000), table).maximum)


def _without_workers(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def _si(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _threads(text: str) -> int:
    from dlspec.session import MAX_THREADS  # onnxruntime: only when --threads is given

    value = positive(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlspec", description="Compile .dlspec model specs to ONNX.")
    p.add_argument("--version", action="version", version=f"dlspec {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def spec_cmd(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("spec", help="the .dlspec file")
        s.add_argument("--model", help="which model, when the file defines several")
        s.add_argument("--seed", type=whole_number, help="initialisation seed (default: the train block's)")
        return s

    spec_cmd("check", "validate a spec and print its layers, shapes, parameters and FLOPs")
    c = spec_cmd("compile", "compile a spec to an ONNX inference model")
    c.add_argument("-o", "--output", help="where to write the .onnx file")
    c.add_argument("--train", action="store_true",
                   help="write the training graphs into the folder -o names (default MODEL.train): "
                        "model.onnx, train_step.onnx, gradients.onnx, apply.onnx, init.npz")
    c.add_argument("--threads", type=_threads,
                   help="with --train: tune train_step.onnx for onnxruntime's CPU provider at this many "
                        "intra-op threads (default: a few); the function it computes is the same")
    predict_cli.add_parser(sub)
    grad_cli.add_parser(sub)
    export_cli.add_parser(sub)
    eval_cli.add_parser(sub)
    plot.add_parser(sub)
    t = spec_cmd("train", "train a spec on its data set with onnxruntime")
    t.add_argument("--epochs", type=positive, help="epochs (default: the train block's)")
    t.add_argument("--batch", type=positive, help="batch size (default: the train block's)")
    t.add_argument("--out", help="run folder (default runs/MODEL)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    t.add_argument("--force", action="store_true",
                   help="with --resume: continue even though the spec changed since the run began")
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    t.add_argument("--threads", type=_threads,
                   help="onnxruntime intra-op threads (default: the fastest of all cores, half and a quarter "
                        "on the first steps; with several local ranks, the cores shared among them)")
    t.add_argument("--workers", type=positive, default=1,
                   help="data-parallel ranks to start on this machine through mpiexec (the mpi extra); "
                        "under mpiexec, the ranks it started")
    gc = spec_cmd("gradcheck", "compare compiled gradients with finite differences (slow; debugging)")
    gc.add_argument("--eps", type=positive_float, default=1e-4, help="finite-difference step (default 1e-4)")
    gc.add_argument("--tol", type=positive_float, default=1e-4, help="largest relative error (default 1e-4)")
    gc.add_argument("--batch", type=positive, default=4, help="synthetic batch size (default 4)")
    gc.add_argument("--directions", type=positive, default=2,
                    help="random directions per large tensor (default 2)")
    return p


COMMANDS = {"check": cmd_check, "compile": cmd_compile, "predict": predict_cli.run,
            "train": cmd_train, "gradcheck": cmd_gradcheck, "grad": grad_cli.run,
            "export": export_cli.run, "eval": eval_cli.run, "plot": plot.run}


def main(argv: Sequence[str] | None = None) -> int:
    try:  # Ctrl-C while the parser or rich loads: one line too
        args = parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        from rich.console import Console

        out = Console(highlight=False, soft_wrap=True)  # messages stay whole lines; tables fit the width
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    # a handler can only be set from the main thread (main() called from another one keeps the default)
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        return COMMANDS[args.command](args, out)
    except DlspecError as err:
        if args.debug:
            raise
        print(f"{_rank_prefix()}{err}", file=sys.stderr)
        _abort_job(err.exit_code)
        return err.exit_code
    except (KeyboardInterrupt, Terminated) as stop:
        code = INTERRUPTED if isinstance(stop, KeyboardInterrupt) else TERMINATED
        print("interrupted" if code == INTERRUPTED else "terminated", file=sys.stderr)
        _abort_job(code)
        return code
    except BrokenPipeError:  # `dlspec check x | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return BROKEN_PIPE
    except Exception as err:  # a bug in dlspec: the input deserved a DlspecError
        if args.debug:
            raise
        print(f"internal error in dlspec {__version__}: {type(err).__name__}: {_first_line(err)}; "
              "this is a bug: please report it with the command and the spec (--debug shows the "
              "traceback)", file=sys.stderr)
        _abort_job(INTERNAL_ERROR)
        return INTERNAL_ERROR
    finally:
        if on_main:  # None: a handler set outside Python, which the default stands for
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _abort_job(code: int) -> None:
    from dlspec import distributed  # numpy: loaded only when a command fails

    distributed.abort_job(code)


def _rank_prefix() -> str:
    """`rank 1: ` before a message of a rank other than 0 in a data-parallel job."""
    from dlspec import distributed

    rank = distributed.env_rank()
    return f"rank {rank}: " if rank else ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


if __name__ == "__main__":
    sys.exit(main())
