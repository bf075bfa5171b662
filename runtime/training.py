"""`dlspec train`: run a spec's train_step graph over its data, with validation, checkpoints,
resume, early stopping, NaN detection and a record of every epoch."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from dlspec import checkpoint, distributed, health, labels, resume, standardize, vocab
from dlspec.compiler import Target, TrainingGraphs, compile_model, compile_training, with_weights
from dlspec.data import Dataset, batch_count, batches, load_dataset, size
from dlspec.data_parallel import DataParallelRunner
from dlspec.files import OutputFolder, atomic_write
from dlspec.metrics import prediction_metrics
from dlspec.prefetch import Prefetch
from dlspec.schedule import base_rate, learning_rate
from dlspec.selection import Patience, read_records, val_score
from dlspec.session import StepRunner, options, providers, threads_in_use
from dlspec.spec import model as m
from dlspec.spec.errors import RunError
from dlspec.spec.loader import Program
from dlspec.thread_choice import ThreadChoice, candidates
from dlspec.transfer import load_into, renamed, source_weights

LAST, BEST = "last.npz", "best.npz"
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
            found = prediction_metrics(np.concatenate(pred), split[h.target], h.classifier)
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
    folder = OutputFolder(run_dir, "the run", probe=world.writes)
    if opts.resume:
        folder.keep()  # its checkpoints are the run's, whatever happens now
    try:
        return _fit(prog, spec_path, model_name, opts, console, folder, world)
    except BaseException:
        folder.discard()  # a run stopped before its first checkpoint leaves nothing behind
        raise


def _fit(prog: Program, spec_path: Path, model_name: str | None, opts: FitOptions, console: Console,
         folder: OutputFolder, world: distributed.World) -> FitResult:
    model = prog.model(model_name)
    run_dir = folder.path
    train = prog.train(model.name) or m.Train()
    assert train.data is not None
    epochs = opts.epochs or train.epochs
    bs = opts.batch or train.batch
    seed = opts.seed if opts.seed is not None else train.seed
    classes = compile_model(prog, model_name, opts.seed).classes()  # shapes only: no weights made

    def note(text: str) -> None:
        console.print(text, markup=False, highlight=False)

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
    asked = train.precision.kind if train.precision else "fp32"
    if tg.precision != asked:
        note(f"precision {asked} is lowered for CUDA only: on the CPU this run trains in float32")
    elif asked != "fp32" and world.size > 1:
        note(f"precision {asked}: data-parallel steps compute in float32")
    data = vocab.encoded(data, columns.fitted)  # the training graphs take the categories' indices
    if train.from_ and not opts.resume:
        # a run folder is usually relative to where training runs; a shipped file, to the spec
        origin = Path(train.from_) if Path(train.from_).exists() else spec_path.parent / train.from_
        params = [p.name for p in tg.inference.params]
        source = renamed(source_weights(origin), train.from_map, origin)
        loaded = load_into(tg.init, params, source, origin, train.from_except)
        console.print(f"initialised {len(loaded)} of {len(params)} parameter tensors from {origin}",
                      markup=False)
    runner: StepRunner | DataParallelRunner
    if world.size > 1:
        runner = DataParallelRunner(tg, world, opts.device, threads)
        note(f"data-parallel on {world.size} ranks: each runs about {bs // world.size} samples of every "
             f"global batch of {bs}, and one all-reduce per step averages their gradients")
    else:
        # a thread count to be measured starts at all cores, the first candidate (thread_choice)
        start = threads or (threads_in_use(None) if opts.pick_threads and opts.device == "cpu" else None)
        runner = StepRunner(tg.train_step, tg.init, opts.device, start, bs)
    if runner.graph_blockers:
        note(f"the step runs node by node, not as a CUDA graph: {runner.graph_blockers[0]}")
    eval_sess = _eval_session(tg, opts.device, threads)
    optimizer = train.optimizer
    lr0 = base_rate(optimizer.lr if optimizer else 1e-3, train.schedule, bs)
    step, start, best, lr = 0, 0, math.inf, lr0
    records = run_dir / "metrics.jsonl"
    history: list[dict] = []
    if opts.resume:
        state, step, done, best = checkpoint.load(run_dir / LAST)
        expected = {n: tg.init[n] for n in (*runner.carried, *runner.fixed)}
        runner.load(resume.resumable(run_dir, spec_path, tg.inference.spec_hash, state, expected,
                                     opts.force, note))
        start = done + 1
        history = _forget_after(records, start) if world.writes else read_records(records)[:start]
        ranks = history[-1].get("ranks", 1) if history else world.size
        if ranks != world.size:
            note(f"resuming with {world.size} rank(s) a run trained on {ranks}: the same parameters, "
                 "the global batches sliced anew among the ranks")
        for leftover in run_dir.glob(".*.tmp") if world.writes else ():  # a write that a kill cut short
            leftover.unlink()
        console.print(f"resuming {run_dir} after epoch {done + 1} (step {step})", markup=False)
    # spec.dlspec, run.json and standardize.json are written with this run's first checkpoint: a
    # run that stops before it leaves the folder as it found it
    start_files = {resume.COPY: spec_path.read_bytes(),  # what was trained, as a record
                   resume.SOURCE: resume.record(spec_path, model.name, tg.inference.spec_hash)}
    if stats.fitted:
        start_files[standardize.FILE] = standardize.encode(stats.moments)
    if columns.fitted_now:
        start_files[vocab.FILE] = vocab.encode(columns.fitted)
    if data.class_names:
        start_files[labels.CLASSES_FILE] = labels.encode_class_names(data.class_names)
    stopped = None
    if patience is not None and opts.resume and patience.replay(records, start):
        stopped = patience.reason(start)
        note(f"{stopped} (before this resume: nothing more to train)")
    last, end = start, epochs if stopped is None else start
    watch = health.Watch(note, history)
    chooser = None
    if opts.pick_threads and threads is None and isinstance(runner, StepRunner) and runner.device == "cpu":
        kept = history[-1].get("threads") if history else None
        if kept:  # the count the run chose when it began: a resume computes as the run would have
            runner.use_threads(kept, keep=False)
            threads, eval_sess = kept, _eval_session(tg, opts.device, kept)
        else:
            chooser = ThreadChoice(runner, candidates(threads_in_use(None)), note, time.perf_counter)
    for epoch in range(start, end):
        t0 = time.perf_counter()
        n_batches = batch_count(data.train, bs)
        sums: dict[str, float] = {}
        count = 0
        # the next batch is gathered by a thread while this step runs; feed.waited is the time it did not
        with _progress(console) as bar, Prefetch(batches(data.train, bs, epoch, seed)) as feed:
            task = bar.add_task(f"epoch {epoch + 1}/{epochs}", total=n_batches, info="")
            for i, batch in enumerate(feed):
                step += 1
                lr = learning_rate(train.schedule, lr0, epoch + i / n_batches, epochs)
                out = runner.run(batch, lr, step) if chooser is None else chooser.run(batch, lr, step)
                if not math.isfinite(out["loss"]):
                    kept = (f"the last good checkpoint is {run_dir / LAST}" if opts.resume or epoch > start
                            else "before the first checkpoint, so nothing was written")
                    raise RunError(f"the loss became {out['loss']} at step {step} (epoch {epoch + 1}); "
                                   f"training stopped, {kept}")
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                elapsed = time.perf_counter() - t0
                rate = count * bs / elapsed
                shown = " ".join(f"{k} {v / count:.4f}" for k, v in sums.items() if not health.is_health(k))
                bar.update(task, advance=1, info=f"{shown} lr {lr:.2e} {rate:,.0f} samples/s, "
                                                 f"{feed.waited / elapsed:.0%} waiting on data")
        data_wait = feed.waited / max(time.perf_counter() - t0, 1e-9)  # of the epoch's step loop
        if chooser is not None and chooser.chosen is not None and threads != chooser.chosen:
            threads, eval_sess = chooser.chosen, _eval_session(tg, opts.device, chooser.chosen)
        weights = runner.weights()
        if not world.same(weights):
            raise RunError(f"the ranks' parameters differ after epoch {epoch + 1}: data-parallel training "
                           "keeps them bit-identical, so a rank computed something else (a different "
                           "onnxruntime, device or thread count?)")
        val = evaluate(tg, weights, data.val, eval_sess) if has_val else {}
        record = {"epoch": epoch + 1, "step": step, "lr": lr,
                  **{f"train_{k}": v / max(count, 1) for k, v in sums.items()},
                  **{f"val_{k}": v for k, v in val.items()},
                  "seconds": round(time.perf_counter() - t0, 3), "data_wait": round(data_wait, 4),
                  **({"ranks": world.size} if world.size > 1 else {}),
                  **({"threads": threads} if opts.pick_threads and threads is not None else {})}
        score = val_score(val, epoch)
        if patience is not None:
            if patience.update(val, epoch + 1) and epoch + 1 < epochs:
                stopped = patience.reason(epoch + 1)
            record["stale_epochs"] = patience.stale
            if stopped is not None:
                record["early_stop"] = True
        history.append(record)
        improved = score <= best
        best = min(best, score)
        if world.writes:
            for name, blob in start_files.items():
                folder.write(name, blob)
            folder.write(records.name, "".join(json.dumps(r) + "\n" for r in history).encode())
            if improved:
                checkpoint.save(folder.track(run_dir / BEST), weights, step, epoch, best)
            checkpoint.save(folder.track(run_dir / LAST), weights, step, epoch, best)
            folder.keep()
        start_files = {}
        console.print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in record.items() if not k.startswith(health.PREFIX)),
                      markup=False, highlight=False)
        watch.epoch(record)
        last = epoch + 1
        if stopped is not None:
            note(stopped)
            break
    done = last if stopped else epochs
    del runner, chooser  # their sessions' arenas go before the test split's evaluation adds its own
    if not world.writes:  # rank 0 writes the model and measures it on the test split
        return FitResult(run_dir, done, step, {}, stopped)
    final, _, _, _ = checkpoint.load(run_dir / (BEST if (run_dir / BEST).exists() else LAST))
    names = labels.output_class_names(data.class_names, tg.inference.heads)
    trained = labels.with_class_names(with_weights(tg.inference.onnx, final), names)
    atomic_write(run_dir / "model.onnx", trained.SerializeToString())
    test = evaluate(tg, final, data.test, eval_sess)
    return FitResult(run_dir, done, step, test, stopped)


def _eval_session(tg: TrainingGraphs, device: str, threads: int | None) -> ort.InferenceSession:
    return ort.InferenceSession(tg.evaluate.SerializeToString(), options(threads, device),
                                providers=providers(device))


def _forget_after(records: Path, epochs: int) -> list[dict]:
    """Drop the records of epochs after the checkpoint's (1-based `epochs`): a kill between an
    epoch's record and its checkpoint means the resumed run trains that epoch again."""
    kept = [r for r in read_records(records) if r["epoch"] <= epochs]
    atomic_write(records, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                    transient=True)


__all__ = ["Dataset", "FitOptions", "FitResult", "fit"]
