"""dlspec from Python: what the command line does, as functions that return values.

    import dlspec
    prog = dlspec.load("examples/digits.dlspec")
    print(dlspec.compile(prog).onnx.graph.output)          # the inference graph
    result = dlspec.fit(prog, epochs=5, out="runs/digits")  # train, as `dlspec train`
    dlspec.predict(result.run_dir / "model.onnx", {"image": images})

Each function takes a loaded Program or the path of a .dlspec file; errors are the three of
dlspec.spec.errors (SpecError, CompileError, RunError), with the message the CLI prints.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from rich.console import Console

from dlspec.compiler import Compiled, Target, TrainingGraphs, compile_model, gradient_model
from dlspec.compiler import compile_training as _compile_training
from dlspec.compiler.grad.coverage import with_untrainable_notes
from dlspec.compiler.lower.export import export as _export
from dlspec.compiler.lower.heads import HeadInfo, head_infos
from dlspec.data import Split, load_all, load_dataset, size
from dlspec.files import load_model
from dlspec.gradient_check import TensorCheck, gradcheck
from dlspec.image_folder import labelled_images
from dlspec.images import policy_of
from dlspec.inference import check_finite, check_inputs, run_model, session
from dlspec.labels import Classes, class_names_of, target_class_names
from dlspec.metrics import head_metrics
from dlspec.per_class import PerClass, per_class
from dlspec.spec import model as m
from dlspec.spec.errors import RunError
from dlspec.spec.loader import Program, load
from dlspec.training import FitOptions, FitResult
from dlspec.training import fit as _fit

Spec = Program | str | Path

__all__ = ["Program", "Target", "compile", "compile_training", "evaluate", "export", "fit", "grad",
           "gradcheck_spec", "load", "predict"]


def _program(spec: Spec) -> Program:
    if isinstance(spec, Program):
        return spec
    return load(_path("spec", spec))


def _path(what: str, value: object) -> str | Path:
    """A file or folder argument: a str or a path (os.PathLike), else a RunError naming it."""
    if isinstance(value, (str, os.PathLike)):
        return value  # type: ignore[return-value]
    raise RunError(f"{what} must be a path (str or pathlib.Path), got {type(value).__name__} {value!r:.60}")


def _name(what: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise RunError(f"{what} must be a name (str), got {type(value).__name__} {value!r:.60}")


def _target(value: object) -> Target | None:
    if value is None or isinstance(value, Target):
        return value
    raise RunError(f"target must be a dlspec.Target (say Target('cpu', threads=4)), got {value!r:.60}")


def compile(spec: Spec, model: str | None = None, *, seed: int | None = None) -> Compiled:  # noqa: A001
    """The inference graph (`.onnx`), with one record per layer (shapes, parameters, FLOPs)."""
    model, seed = _name("model", model), _count("compile", "seed", seed, 0)
    return with_untrainable_notes(compile_model(_program(spec), model, seed))


def compile_training(spec: Spec, model: str | None = None, *, seed: int | None = None,
                     target: Target | None = None) -> TrainingGraphs:
    """The training graphs: train_step, gradients, evaluate and inference, with initial values.
    `target` (device, CPU threads) picks lowerings that compute the same function faster there."""
    model, seed = _name("model", model), _count("compile_training", "seed", seed, 0)
    return _compile_training(_program(spec), model, seed, target=_target(target))


def fit(spec: Spec, model: str | None = None, *, epochs: int | None = None, batch: int | None = None,
        seed: int | None = None, out: str | Path | None = None, resume: bool = False, force: bool = False,
        device: str = "cpu", threads: int | Literal["auto"] | None = None,
        console: Console | None = None) -> FitResult:
    """Train on the train block's data, as `dlspec train`: the run folder (default runs/MODEL)
    gets metrics.jsonl, last.npz, best.npz and model.onnx. `resume` refuses a spec that changed
    since the run began, unless `force`. Progress goes to `console` (default: none shown).
    `threads`: CPU threads; None, all cores; "auto", the fastest of a few counts on the first steps."""
    epochs, batch = _count("fit", "epochs", epochs, 1), _count("fit", "batch", batch, 1)
    seed = _count("fit", "seed", seed, 0)
    threads = threads if threads == "auto" else _count("fit", "threads", threads, 1)
    if device not in ("cpu", "cuda"):
        raise RunError(f"fit: device must be 'cpu' or 'cuda', got {device!r}")
    if force and not resume:
        raise RunError("fit: force goes with resume=True: it continues a run whose spec changed")
    prog, model = _program(spec), _name("model", model)
    opts = FitOptions(epochs=epochs, batch=batch, seed=seed, device=device,
                      out=Path(_path("out", out)) if out is not None else None, resume=resume,
                      threads=None if threads == "auto" else threads, force=force,
                      pick_threads=threads == "auto")
    return _fit(prog, Path(prog.root), model, opts, console or Console(quiet=True))


def _count(function: str, name: str, value: object, least: int) -> int | None:
    """None, or a whole number >= least (as the command line's options are), as an int; a
    RunError naming the function and the argument otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < least:
        raise RunError(f"{function}: {name} must be a whole number >= {least}, got {value!r}")
    return int(value)


def grad(model: onnx.ModelProto | str | Path, loss: str, wrt: Sequence[str] | None = None, *,
         target: Target | None = None) -> onnx.ModelProto:
    """The gradients graph of any ONNX model (opset 9 or newer) with a scalar value `loss`:
    outputs `loss` and `grad.<name>` for each name of `wrt` (default: every float initializer)."""
    proto = model if isinstance(model, onnx.ModelProto) else load_model(_path("model", model))
    loss = _name("loss", loss) or ""
    names = [wrt] if isinstance(wrt, str) else wrt  # one name, not its letters
    if names is not None and (isinstance(names, Mapping) or not isinstance(names, Sequence)
                              or not all(isinstance(n, str) for n in names)):
        raise RunError(f"wrt must be a name or a list of names (str), got {wrt!r:.60}")
    return gradient_model(proto, loss, names, _target(target))


def export(run: str | Path) -> onnx.ModelProto:
    """The deployable model of a training run (its folder or model.onnx): batch norm folded into
    the convolutions, and `probabilities` beside `logits` for classifiers (`probabilities:cls`
    beside each classifying head cls of a model with named heads)."""
    src = Path(_path("run", run))
    source = src / "model.onnx" if src.is_dir() else src
    if source.exists() and not source.is_file():  # a device or a pipe: not a model
        raise RunError(f"cannot read {source}: not a regular file")
    if not source.is_file():
        raise RunError(f"no trained model at {source}: train first with `dlspec train`")
    return _export(load_model(source), {"exported_from": str(source)})[0]


def evaluate(model: str | Path, spec: Spec, data: str | Path | None = None, *,
             model_name: str | None = None) -> dict[str, float]:
    """Metrics of a model file on the spec's test split, or on every sample of `data` (an .npz or
    .csv file, a bundled set, or a folder of class subfolders of images): for each output scored
    against a target, `accuracy` for classifiers (pixel `accuracy` and `mean_iou` for per-pixel
    scores), `mae` and `rmse` for regression, each named `metric:head` for a model with named
    heads; and `samples`, the number of samples, as a float."""
    return evaluation(model, spec, data, model_name=model_name).metrics


@dataclass(frozen=True)
class Evaluation:
    """What `dlspec eval` reports, all from one run of the model over the samples."""

    metrics: dict[str, float]  # as evaluate returns them
    per_class: list[PerClass]  # the confusion of each classifying output of [N, C] logits


def evaluation(model: str | Path, spec: Spec, data: str | Path | None = None, *,
               model_name: str | None = None) -> Evaluation:
    """evaluate's metrics, and the per-class confusion of each classifier, from one run."""
    prog = _program(spec)
    decl = prog.model(_name("model_name", model_name))
    if not decl.targets:
        raise RunError(f"model {decl.name} declares no target to evaluate against")
    if data is not None:
        _path("data", data)
    sess = session(_path("model", model))
    scored = _scored(model, sess, decl)
    shapes = {o.name: o.shape for o in sess.get_outputs()}
    classes: Classes = (_width(shapes[scored[0].output]) if not decl.heads else
                        {h.target: _width(shapes[h.output]) for h in scored
                         if h.kind in ("classify", "segment") and h.target})
    split, where = _samples(prog, decl, data, classes, sess)
    if size(split) == 0:  # metrics of nothing: nan, with numpy's warnings
        raise RunError(f"{where} has no samples to evaluate" + (
            ": give the spec's data a test share (test=0.2), or name the data to evaluate on"
            if where == "the test split" else ""))
    feeds = check_inputs(sess, {t.name: split[t.name] for t in decl.inputs}, where)
    outputs = run_model(sess, feeds, model, where)
    metrics: dict[str, float] = {}
    names = class_names_of(sess.get_modelmeta().custom_metadata_map)
    confusions = []
    for h in scored:
        assert h.target is not None
        pred, truth = outputs[h.output], split[h.target]
        if not _fits(pred, truth, h.kind):
            raise RunError(f"{model}: output '{h.output}' has shape {list(pred.shape)} for target "
                           f"'{h.target}' of shape {list(truth.shape)}: is it a model of this spec?")
        metrics.update({h.key(k): v for k, v in head_metrics(pred, truth, h.kind).items()})
        if h.kind == "classify" and pred.ndim == 2:
            confusions.append(per_class(h.output, pred, truth, names.get(h.output)))
    return Evaluation({**metrics, "samples": float(size(split))}, confusions)


def _fits(pred: np.ndarray, truth: np.ndarray, kind: str) -> bool:
    """Whether an output can be scored as a head of this kind against the target: class scores
    [N, C] for labels [N]; per-position scores [N, C, ...] for labels [N, ...] (or [N, 1, ...]);
    else (one logit per label, a regression) a value per target value."""
    if len(pred) != len(truth):
        return False
    if kind == "classify":
        return pred.ndim == 2 and truth.size == len(truth)
    if kind == "segment":
        return pred.ndim > 2 and truth.size * pred.shape[1] == pred.size
    return pred.size == truth.size


def _scored(model: str | Path, sess: Any, decl: m.Model) -> list[HeadInfo]:
    """The outputs scored against a target: each named head with a target; else the model's
    first output against its head's target (its first target without a loss), scored as its head
    is when that output is `logits`, else as a regression."""
    outs = sess.get_outputs()
    if not outs:
        raise RunError(f"{model} has no outputs")
    if not decl.heads:
        out, (head,) = outs[0], head_infos(decl)
        kind = head.kind if out.name == "logits" else "regress"
        target = head.target or decl.targets[0].name
        return [HeadInfo(None, out.name, target, kind)]
    heads = [h for h in head_infos(decl) if h.target is not None]
    names = [o.name for o in outs]
    missing = [h.output for h in heads if h.output not in names]
    if missing:
        raise RunError(f"{model} has no output '{missing[0]}' (it has: {', '.join(names)}): is it a "
                       "model of this spec?")
    return heads


def _samples(prog: Program, decl: m.Model, data: str | Path | None, classes: Classes,
             sess: Any) -> tuple[Split, str | Path]:
    """Every sample of `data`, else the test split of the spec's data, and how to name it. A
    folder is decoded as the spec's images(...) decodes its images (size, fit policy), with the
    fit policy the model records, where it records one."""
    train = prog.train(decl.name) or m.Train()
    names = target_class_names(sess.get_modelmeta().custom_metadata_map, head_infos(decl))
    if data is not None and Path(data).is_dir():
        settings = train.data if isinstance(train.data, m.ImagesData) else None
        recorded = policy_of(sess.get_modelmeta().custom_metadata_map)
        return labelled_images(Path(data), decl, classes, names, settings, recorded), data
    if data is not None:
        return load_all(str(data), decl, classes, names), data
    return load_dataset(train, decl, Path(prog.root).parent, classes).test, "the test split"


def _width(shape: Sequence[Any]) -> int | None:
    """The classes of an output [N, C] (or [N, C, H, W], scored per pixel), where C is known."""
    return shape[1] if len(shape) >= 2 and isinstance(shape[1], int) else None


def predict(model: str | Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of a model file on `inputs` (one array per model input, checked by name,
    type, shape and finite values: NaN only in the inputs the model fills)."""
    sess = session(_path("model", model))
    if not isinstance(inputs, Mapping) or not all(isinstance(k, str) for k in inputs):
        raise RunError(f"inputs must map each input's name (str) to its array, got {type(inputs).__name__}")
    with np.errstate(over="ignore"):  # a value beyond float32's range: inf, refused
        feeds = check_finite(sess, check_inputs(sess, inputs, "inputs"), "inputs")
    return run_model(sess, feeds, model, "the inputs")


def gradcheck_spec(spec: Spec, model: str | None = None, *, seed: int | None = None, eps: float = 1e-4,
                   batch: int = 4, directions: int = 2) -> list[TensorCheck]:
    """The compiled gradients of every trainable tensor against central differences in float64:
    the worst relative error per tensor. Slow; for debugging."""
    sizes = {name: _count("gradcheck_spec", name, value, 1) for name, value in
             (("batch", batch), ("directions", directions))}
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < math.inf:
        raise RunError(f"gradcheck_spec: eps must be a finite number > 0, got {eps!r}")
    return gradcheck(compile_training(spec, model, seed=seed), eps=float(eps), batch=sizes["batch"] or 4,
                     directions=sizes["directions"] or 2)
