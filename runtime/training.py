"""`dlspec train`: run a spec's train_step graph over its data, with validation, checkpoints,
resume, early stopping, NaN detection and a record of every epoch."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from dlspec import checkpoint, distributed, health, images, labels, resume, standardize, vocab
from dlspec.compiler import Target, TrainingGraphs, compile_model, compile_training, with_weights
from dlspec.data import Dataset, batch_count, batches, load_dataset, size
from dlspec.data_parallel import DataParallelRunner
from dlspec.files import OutputFolder, atomic_write
from dlspec.metrics import head_metrics
from dlspec.prefetch import Prefetch
from dlspec.schedule import base_rate, learning_rate
from dlspec.selection import Patience, kept, read_records, records_and_skipped, val_score
from dlspec.session import StepRunner, options, providers, threads_in_use
from dlspec.spec import model as m
from dlspec.spec.errors import RunError
from dlspec.spec.loader import Program
from dlspec.thread_choice import ThreadChoice, candidates
from dlspec.transfer import load_into, renamed, source_weights

LAST, BEST = "last.npz", "best.npz"
RECORDS = "metrics.jsonl"  # one line per epoch
EVAL_BYTES = 32 * 2**20  # the inputs of one evaluation batch; its activations are some multiple


@dataclass
class FitOptions:
    epochs: int | None = None
    batch: int | None = None
    seed: int | None = None
    device: str = "cpu"
    out: Path | None = None
    resume: bool = False
    threads: int | None = None
    force: bool = False  # --resume even though the spec changed
    pick_threads: bool = False  # no --threads: measure the first steps' speed at a few counts (thread_choice)


@dataclass
class FitResult:
    run_dir: Path
    epochs: int  # the epochs trained, fewer than asked when early_stop ended the run
    steps: int
    metrics: dict[str, float]  # of the best checkpoint on the test split
    stopped_early: str | None = None  # why early_stop ended the run before its last epoch


def evaluate(tg: TrainingGraphs, weights: dict[str, np.ndarray], split: dict[str, np.ndarray],
             sess: ort.InferenceSession, batch: int = 512) -> dict[str, float]:
    """Eval-mode loss (and each term's, `loss:cls`, where there are several) and each head's
    metrics: accuracy for classifiers, MAE and RMSE for regression (`accuracy:cls` for head cls)."""
    heads = tg.inference.heads
    n = len(next(iter(split.values())))
    if n == 0 or not any(h.target for h in heads):
        return {}
    names = [i.name for i in sess.get_inputs()]
    params = {k: weights[k] for k in names if k in weights}
    per_sample = sum(math.prod(split[k].shape[1:]) * split[k].dtype.itemsize for k in names if k in split)
    batch = max(1, min(batch, EVAL_BYTES // max(per_sample, 1)))  # large images: fewer at a time
    outputs = [o.name for o in sess.get_outputs()]  # the heads' outputs, the loss, each term's loss
    preds: list[list[np.ndarray]] = [[] for _ in heads]
    sums = [0.0] * (len(outputs) - len(heads))
    for start in range(0, n, batch):
        feeds = {k: split[k][start:start + batch] for k in names if k in split}
        values = sess.run(None, {**feeds, **params})
        rows = len(values[0])
        for i in range(len(heads)):
            preds[i].append(values[i])
        for i, v in enumerate(values[len(heads):]):
            sums[i] += float(v) * rows  # the losses are batch means: weigh them by their rows
    out = {"loss" if i == 0 else name: v / n for i, (name, v) in enumerate(zip(outputs[len(heads):], sums))}
    for h, pred in zip(heads, preds):
        if h.target is not None:
            found = head_metrics(np.concatenate(pred), split[h.target], h.kind)
            out.update({h.key(k): v for k, v in found.items()})
    return out


def fit(prog: Program, spec_path: Path, model_name: str | None, opts: FitOptions,
        console: Console) -> FitResult:
    model = prog.model(model_name)
    run_dir = opts.out or Path("runs") / model.name
    if opts.resume and not (run_dir / LAST).exists():
        raise RunError(f"--resume: no checkpoint {run_dir / LAST} to resume from")
    train = prog.train(model.name) or m.Train()
    if train.data is None:
        raise RunError(f"the train block of {spec_path} names no data set (data digits(...), "
                       "npz(...) or csv(...))")
    providers(opts.device)  # a missing CUDA provider fails here, before anything is written
    world = distributed.world()
    if not world.writes:
        console = Console(quiet=True)  # rank 0 speaks and writes for the job
    # checked writable now, made at the first write; rank 0 alone writes
    folder = OutputFolder(run_dir, "the run", probe=world.writes, exclusive=True)
    if opts.resume:
        folder.keep()  # its checkpoints are the run's, whatever happens now
    try:
        return _fit(prog, spec_path, model_name, opts, console, folder, world)
    except BaseException:
        folder.discard()  # a run stopped before its first checkpoint leaves nothing behind
        raise
    finally:
        folder.release()


@dataclass
class _SetUp:
    """A run's data and graphs, ready to train: what the epochs read and never change."""
    model: m.Model
    train: m.Train
    epochs: int
    bs: int
    seed: int
    data: Dataset
    has_val: bool
    patience: Patience | None
    columns: vocab.RunColumns
    stats: standardize.RunStats
    threads: int | None
    tg: TrainingGraphs
    given: dict[str, int]  # batch and epochs the command line set in place of the spec's (run.json)


@dataclass
class _Loop:
    """The fixed context of the epoch loop."""
    setup: _SetUp
    opts: FitOptions
    console: Console
    folder: OutputFolder
    world: distributed.World
    runner: StepRunner | DataParallelRunner
    chooser: ThreadChoice | None
    lr0: float
    start: int  # the first epoch this run trains, 0-based
    watch: health.Watch
    note: Callable[[str], None]


@dataclass
class _State:
    """What the epochs carry from one to the next."""
    step: int
    best: float
    lr: float
    threads: int | None
    eval_sess: ort.InferenceSession
    history: list[dict]
    start_files: dict[str, bytes]  # written with the first checkpoint, then emptied
    stopped: str | None  # why early_stop ended the run
    stale: list[Path]  # an earlier run's files in the folder: removed at the first checkpoint


def _fit(prog: Program, spec_path: Path, model_name: str | None, opts: FitOptions, console: Console,
         folder: OutputFolder, world: distributed.World) -> FitResult:
    def note(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    run_dir = folder.path
    setup = _set_up(prog, spec_path, model_name, opts, run_dir, world, note)
    tg, train = setup.tg, setup.train
    if train.from_ and not opts.resume:
        init_from(train, tg, spec_path, console)
    runner = _step_runner(setup, opts, world, note)
    eval_sess = _eval_session(tg, opts.device, setup.threads)
    optimizer = train.optimizer
    samples = size(setup.data.train)
    if setup.bs > samples:  # each step takes the whole split: the rate scales with what it holds
        note(f"batch {setup.bs} is larger than the {samples} training samples: each step takes them all")
    lr0 = base_rate(optimizer.lr if optimizer else 1e-3, train.schedule, min(setup.bs, samples))
    step, start, best = 0, 0, math.inf
    history: list[dict] = []
    if opts.resume:
        step, start, best, history = _resume(run_dir, spec_path, tg, runner, opts.force, world, note, console)
    state = _State(step, best, lr0, setup.threads, eval_sess, history, _start_files(spec_path, setup), None,
                   [] if opts.resume or not world.writes else _earlier_run(run_dir, note))
    if setup.patience is not None and opts.resume and setup.patience.replay(run_dir / RECORDS, start):
        state.stopped = setup.patience.reason(start)
        note(f"{state.stopped} (before this resume: nothing more to train)")
    watch = health.Watch(note, history)
    chooser = _thread_chooser(runner, state, tg, opts, note)
    loop = _Loop(setup, opts, console, folder, world, runner, chooser, lr0, start, watch, note)
    done = _train_epochs(loop, state)
    del runner, chooser, loop  # their sessions' arenas go before the test split's evaluation adds its own
    if not world.writes:  # rank 0 writes the model and measures it on the test split
        return FitResult(run_dir, done, state.step, {}, state.stopped)
    return FitResult(run_dir, done, state.step, _save_model(setup, run_dir, state.eval_sess), state.stopped)


def _set_up(prog: Program, spec_path: Path, model_name: str | None, opts: FitOptions, run_dir: Path,
            world: distributed.World, note: Callable[[str], None]) -> _SetUp:
    """Load the data, fit or reload its categories and moments, and compile the training graphs."""
    model = prog.model(model_name)
    train = prog.train(model.name) or m.Train()
    assert train.data is not None
    seed = opts.seed if opts.seed is not None else train.seed
    classes = compile_model(prog, model_name, opts.seed).classes()  # shapes only: no weights made
    data = load_dataset(train, model, spec_path.parent, classes, note)

    has_val = size(data.val) > 0  # without a validation split nothing is selected: best = last
    patience = Patience(train.early_stop) if train.early_stop is not None else None
    if patience is not None and not has_val:
        raise RunError(f"early_stop watches the validation split, and val={train.data.val} leaves it "
                       "no samples: give the data a larger val share")
    columns = vocab.for_run(model, data.train, run_dir, opts.resume, note)  # categories, fill means
    stats = standardize.for_run(prog, model_name, data.train, run_dir, opts.resume, opts.threads, note,
                                columns.fitted)
    threads = opts.threads or (distributed.threads_per_rank() if world.size > 1 else None)
    target = Target("cuda" if opts.device == "cuda" else "cpu", threads_in_use(threads))
    tg = compile_training(prog, model_name, opts.seed, {**columns.fitted, **stats.moments}, target)
    if not tg.trainable:
        note("no parameter is trainable (freeze or lr_mult 0 covers them all): the steps change nothing "
             "but batch norm's statistics, where it is not frozen")
    asked = train.precision.kind if train.precision else "fp32"
    if tg.precision != asked:
        note(unlowered_precision(asked, "this run trains"))
    elif asked != "fp32" and world.size > 1:
        note(f"precision {asked}: data-parallel steps compute in float32")
    data = vocab.encoded(data, columns.fitted)  # the training graphs take the categories' indices
    given = (resume.given_options(run_dir, opts.batch, opts.epochs, opts.force, note) if opts.resume else
             {k: v for k, v in (("batch", opts.batch), ("epochs", opts.epochs)) if v is not None})
    epochs = given.get("epochs", train.epochs)
    if train.schedule is not None and train.schedule.warmup >= epochs:
        note(f"warmup={train.schedule.warmup:g} epochs is as long as the run's {epochs}: the learning rate "
             "never reaches the optimizer's lr")
    return _SetUp(model, train, epochs, given.get("batch", train.batch), seed, data, has_val, patience,
                  columns, stats, threads, tg, given)


def unlowered_precision(asked: str, what: str) -> str:
    """The note for a `precision` that the graphs were compiled without (half precision on the CPU)."""
    return f"precision {asked} is lowered for CUDA only: on the CPU {what} in float32"


def init_from(train: m.Train, tg: TrainingGraphs, spec_path: Path, console: Console) -> None:
    """Start from the weights of the `from` file, in place of the initial ones."""
    assert train.from_ is not None
    # a run folder is usually relative to where training runs; a shipped file, to the spec
    origin = Path(train.from_) if Path(train.from_).exists() else spec_path.parent / train.from_
    params = [p.name for p in tg.inference.params]
    source = renamed(source_weights(origin), train.from_map, origin)
    loaded = load_into(tg.init, params, source, origin, train.from_except)
    console.print(f"initialised {len(loaded)} of {len(params)} parameter tensors from {origin}",
                  markup=False)


def _step_runner(setup: _SetUp, opts: FitOptions, world: distributed.World,
                 note: Callable[[str], None]) -> StepRunner | DataParallelRunner:
    """What runs the train step: data-parallel over the ranks, or one session."""
    runner: StepRunner | DataParallelRunner
    threads, bs = setup.threads, setup.bs
    if world.size > 1:
        runner = DataParallelRunner(setup.tg, world, opts.device, threads)
        note(f"data-parallel on {world.size} ranks: each runs about {bs // world.size} samples of every "
             f"global batch of {bs}, and one all-reduce per step averages their gradients")
    else:
        # a thread count to be measured starts at all cores, the first candidate (thread_choice)
        start = threads or (threads_in_use(None) if opts.pick_threads and opts.device == "cpu" else None)
        runner = StepRunner(setup.tg.train_step, setup.tg.init, opts.device, start, bs)
    if runner.graph_blockers:
        note(f"the step runs node by node, not as a CUDA graph: {runner.graph_blockers[0]}")
    return runner


def _resume(run_dir: Path, spec_path: Path, tg: TrainingGraphs, runner: StepRunner | DataParallelRunner,
            force: bool, world: distributed.World, note: Callable[[str], None],
            console: Console) -> tuple[int, int, float, list[dict]]:
    """Load the last checkpoint into the runner; the step, first epoch, best score and records to
    go on from."""
    state, step, done, best = checkpoint.load(run_dir / LAST)
    expected = {n: tg.init[n] for n in (*runner.carried, *runner.fixed)}
    values = resume.resumable(run_dir, spec_path, tg.inference.spec_hash, state, expected, force, note)
    runner.load(values)
    if values.keys() != expected.keys():  # --force gave some tensors their initial values: the best
        best = math.inf  # score so far was another model's, and the next epoch is this one's best
    start = done + 1
    records = run_dir / RECORDS
    history = _forget_after(records, start, note) if world.writes else read_records(records)[:start]
    ranks = history[-1].get("ranks", 1) if history else world.size
    if ranks != world.size:
        note(f"resuming with {world.size} rank(s) a run trained on {ranks}: the same parameters, "
             "the global batches sliced anew among the ranks")
    for leftover in run_dir.glob(".*.tmp") if world.writes else ():  # a write that a kill cut short
        leftover.unlink()
    console.print(f"resuming {run_dir} after epoch {done + 1} (step {step})", markup=False)
    return step, start, best, history


RUN_FILES = (RECORDS, LAST, BEST, "model.onnx", resume.SOURCE, resume.COPY, standardize.FILE, vocab.FILE,
             labels.CLASSES_FILE)


def _earlier_run(run_dir: Path, note: Callable[[str], None]) -> list[Path]:
    """The files of an earlier run (a folder with run.json) that a fresh run into the same folder
    replaces, said in a note; other files of the folder stay."""
    if not (run_dir / resume.SOURCE).is_file():
        return []
    found = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    names = ", ".join(p.name for p in found)
    note(f"{run_dir} holds an earlier run: this one replaces its files ({names}) at its first checkpoint "
         "(--resume continues it instead)")
    return found


def _start_files(spec_path: Path, setup: _SetUp) -> dict[str, bytes]:
    # spec.dlspec, run.json and standardize.json are written with this run's first checkpoint: a
    # run that stops before it leaves the folder as it found it
    start_files = {resume.COPY: spec_path.read_bytes(),  # what was trained, as a record
                   resume.SOURCE: resume.record(spec_path, setup.model.name, setup.tg.inference.spec_hash,
                                                  setup.given)}
    if setup.stats.fitted:
        start_files[standardize.FILE] = standardize.encode(setup.stats.moments)
    if setup.columns.fitted_now:
        start_files[vocab.FILE] = vocab.encode(setup.columns.fitted)
    if setup.data.class_names:
        start_files[labels.CLASSES_FILE] = labels.encode_class_names(setup.data.class_names)
    return start_files


def _thread_chooser(runner: StepRunner | DataParallelRunner, state: _State, tg: TrainingGraphs,
                    opts: FitOptions, note: Callable[[str], None]) -> ThreadChoice | None:
    """With no --threads: the chooser that measures the first steps' speed at a few counts, or none
    where a resumed run takes the count it chose."""
    if not (opts.pick_threads and state.threads is None and isinstance(runner, StepRunner)
            and runner.device == "cpu"):
        return None
    kept = state.history[-1].get("threads") if state.history else None
    if kept:  # the count the run chose when it began: a resume computes as the run would have
        runner.use_threads(kept, keep=False)
        state.threads, state.eval_sess = kept, _eval_session(tg, opts.device, kept)
        return None
    return ThreadChoice(runner, candidates(threads_in_use(None)), note, time.perf_counter)


def _train_epochs(loop: _Loop, state: _State) -> int:
    """Train the epochs left; the number done, fewer than asked when early_stop ends the run."""
    if state.stopped is not None:
        return loop.start
    for epoch in range(loop.start, loop.setup.epochs):
        _train_epoch(loop, state, epoch)
        if state.stopped is not None:
            loop.note(state.stopped)
            return epoch + 1
    return max(loop.start, loop.setup.epochs)  # a resume with fewer --epochs than done trains none


def _train_epoch(loop: _Loop, state: _State, epoch: int) -> None:
    """One epoch: its steps, the validation, its record and checkpoints."""
    setup, opts = loop.setup, loop.opts
    t0 = time.perf_counter()
    sums, count, data_wait = _train_steps(loop, state, epoch, t0)
    chooser = loop.chooser
    if chooser is not None and chooser.chosen is not None and state.threads != chooser.chosen:
        state.threads, state.eval_sess = chooser.chosen, _eval_session(setup.tg, opts.device, chooser.chosen)
    weights = loop.runner.weights()
    if not loop.world.same(weights):
        raise RunError(f"the ranks' parameters differ after epoch {epoch + 1}: data-parallel training "
                       "keeps them bit-identical, so a rank computed something else (a different "
                       "onnxruntime, device or thread count?)")
    val = evaluate(setup.tg, weights, setup.data.val, state.eval_sess) if setup.has_val else {}
    _check_finite(loop, epoch, weights, val)
    record = _epoch_record(loop, state, epoch, sums, count, val, t0, data_wait)
    score = val_score(val, epoch)
    patience = setup.patience
    if patience is not None:
        if patience.update(val, epoch + 1) and epoch + 1 < setup.epochs:
            state.stopped = patience.reason(epoch + 1)
        record["stale_epochs"] = patience.stale
        if state.stopped is not None:
            record["early_stop"] = True
    state.history.append(record)
    improved = kept(score, state.best)
    state.best = min(state.best, score)
    if loop.world.writes:
        _write_epoch(loop, state, epoch, weights, improved)
    state.start_files = {}
    loop.console.print(" ".join(_shown(k, v) for k, v in record.items() if not k.startswith(health.PREFIX)),
                       markup=False, highlight=False)
    loop.watch.epoch(record)


def _shown(key: str, value: object) -> str:
    """`key value` for an epoch's line: the rate in 3 significant digits (2e-05 read as 0.0000 in
    the fixed 4 decimals of the metrics)."""
    if key == "lr" and isinstance(value, float):
        return f"lr {value:.3g}"
    return f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"


def _train_steps(loop: _Loop, state: _State, epoch: int,
                 t0: float) -> tuple[dict[str, float], int, float]:
    """One epoch's step loop: the sums of the steps' outputs, their count and the share of the
    loop's time spent waiting on data."""
    setup = loop.setup
    bs = setup.bs
    n_batches = batch_count(setup.data.train, bs)
    sums: dict[str, float] = {}
    count = 0
    # the next batch is gathered by a thread while this step runs; feed.waited is the time it did not
    with _progress(loop.console) as bar, Prefetch(batches(setup.data.train, bs, epoch, setup.seed)) as feed:
        task = bar.add_task(f"epoch {epoch + 1}/{setup.epochs}", total=n_batches, info="")
        for i, batch in enumerate(feed):
            state.step += 1
            state.lr = lr = learning_rate(setup.train.schedule, loop.lr0, epoch + i / n_batches, setup.epochs)
            step = state.step
            runs = loop.runner if loop.chooser is None else loop.chooser
            out = runs.run(batch, lr, step)
            # the loss is the step's before its update; a gradient norm past float32 makes the
            # update itself inf or nan (a skipped mixed-precision step reports its norm as 0)
            for key, what in (("loss", "loss"), (health.GLOBAL_NORM, "gradient norm")):
                if not math.isfinite(out.get(key, 0.0)):
                    raise _diverged(loop, f"the {what} became {out[key]} at step {step}", epoch,
                                    before_any_update=step == 1)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            elapsed = time.perf_counter() - t0
            rate = count * bs / elapsed
            shown = " ".join(f"{k} {v / count:.4f}" for k, v in sums.items() if not health.is_health(k))
            bar.update(task, advance=1, info=f"{shown} lr {lr:.2e} {rate:,.0f} samples/s, "
                                             f"{feed.waited / elapsed:.0%} waiting on data")
    data_wait = feed.waited / max(time.perf_counter() - t0, 1e-9)  # of the epoch's step loop
    return sums, count, data_wait


def _diverged(loop: _Loop, what: str, epoch: int, before_any_update: bool = False) -> RunError:
    kept = (f"the last good checkpoint is {loop.folder.path / LAST}" if loop.opts.resume or epoch > loop.start
            else "before the first checkpoint, so nothing was written")
    # the first step's loss comes before any update: the learning rate has had no say yet
    hint = ("the data, the model's features (a log of a negative number? a division by 0?) or its "
            "initial weights make it, before any update" if before_any_update else
            "a lower learning rate, or clip grad_norm, may keep it finite")
    return RunError(f"{what} (epoch {epoch + 1}); training stopped, {kept} ({hint})")


def _check_finite(loop: _Loop, epoch: int, weights: dict[str, np.ndarray], val: dict[str, float]) -> None:
    """The epoch's parameters and validation metrics are finite before anything is written of them:
    the last step's update, or an overflow in the forward pass, can make them inf or nan where
    every step's loss was finite."""
    bad = next((n for n, w in weights.items() if w.dtype.kind == "f" and not np.isfinite(w).all()), None)
    if bad is not None:
        raise _diverged(loop, f"the parameters became inf or nan ('{bad}' first) by the epoch's last step",
                        epoch)
    bad = next((k for k, v in val.items() if not math.isfinite(v)), None)
    if bad is not None:
        raise _diverged(loop, f"the validation {bad} became {val[bad]}", epoch)


def _epoch_record(loop: _Loop, state: _State, epoch: int, sums: dict[str, float], count: int,
                  val: dict[str, float], t0: float, data_wait: float) -> dict:
    """The line of metrics.jsonl for this epoch, before early_stop's fields."""
    world, opts = loop.world, loop.opts
    return {"epoch": epoch + 1, "step": state.step, "lr": state.lr,
            **{f"train_{k}": v / max(count, 1) for k, v in sums.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "seconds": round(time.perf_counter() - t0, 3), "data_wait": round(data_wait, 4),
            **({"ranks": world.size} if world.size > 1 else {}),
            **({"threads": state.threads} if opts.pick_threads and state.threads is not None else {})}


def _write_epoch(loop: _Loop, state: _State, epoch: int, weights: dict[str, np.ndarray],
                 improved: bool) -> None:
    """Rank 0's writes after an epoch: the start files (the first time), the records, the checkpoints."""
    folder, run_dir = loop.folder, loop.folder.path
    for path in state.stale:  # not to be mixed with this run's (say, another model's classes.json)
        path.unlink(missing_ok=True)
    state.stale = []
    for name, blob in state.start_files.items():
        folder.write(name, blob)
    folder.write(RECORDS, _records_bytes(state.history))
    if improved:
        checkpoint.save(folder.track(run_dir / BEST), weights, state.step, epoch, state.best)
    checkpoint.save(folder.track(run_dir / LAST), weights, state.step, epoch, state.best)
    folder.keep()


def _save_model(setup: _SetUp, run_dir: Path, eval_sess: ort.InferenceSession) -> dict[str, float]:
    """Write model.onnx with the best checkpoint's weights; its metrics on the test split."""
    final = _model_weights(setup, run_dir)
    names = labels.output_class_names(setup.data.class_names, setup.tg.inference.heads)
    trained = labels.with_class_names(with_weights(setup.tg.inference.onnx, final), names)
    trained = images.with_policy(trained, setup.train.data)  # predict fits image files the same way
    atomic_write(run_dir / "model.onnx", trained.SerializeToString())
    metrics = evaluate(setup.tg, final, setup.data.test, eval_sess)
    bad = next((k for k, v in metrics.items() if not math.isfinite(v)), None)
    if bad is not None:  # the weights are finite (checked each epoch), and so are the test inputs
        raise RunError(f"the test split's {bad} is {metrics[bad]} with the trained weights, whose inputs are "
                       "finite: the model's features (a log of a negative number? a division by 0?) make it "
                       f"for some samples; the run's files are written in {run_dir}")
    return metrics


def _model_weights(setup: _SetUp, run_dir: Path) -> dict[str, np.ndarray]:
    """The best checkpoint's values, else the last's: the first that holds every parameter of this
    model at its shape (a run resumed with --force over a changed spec may not have trained an
    epoch of the new model yet)."""
    params = [p.name for p in setup.tg.inference.params]
    for name in (BEST, LAST):
        if (run_dir / name).exists():
            values = checkpoint.load(run_dir / name)[0]
            if all(p in values and values[p].shape == setup.tg.init[p].shape for p in params):
                return values
    raise RunError(f"no checkpoint in {run_dir} holds this spec's parameters (the spec changed since "
                   "they were written): train at least one more epoch (--epochs N) to write model.onnx")


def _eval_session(tg: TrainingGraphs, device: str, threads: int | None) -> ort.InferenceSession:
    return ort.InferenceSession(tg.evaluate.SerializeToString(), options(threads, device),
                                providers=providers(device))


def _forget_after(records: Path, epochs: int, note: Callable[[str], None]) -> list[dict]:
    """Drop the records of epochs after the checkpoint's (1-based `epochs`): a kill between an
    epoch's record and its checkpoint means the resumed run trains that epoch again. Lines that
    cannot be read go too, and a note says so."""
    found, skipped = records_and_skipped(records)
    if skipped:
        note(f"{records}: {skipped} line(s) that are not an epoch's record (cut short, or damaged) "
             "are left out; early_stop's patience and the plot have only the records kept")
    kept = [r for r in found if r["epoch"] <= epochs]
    atomic_write(records, _records_bytes(kept))
    return kept


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                    transient=True)


__all__ = ["Dataset", "FitOptions", "FitResult", "fit"]


def _records_bytes(records: list[dict]) -> bytes:
    """metrics.jsonl's bytes: one JSON record per line."""
    return "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode()  # strict JSON
