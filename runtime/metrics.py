"""The metrics of predictions against targets, the same for training's validation and test
splits and for `dlspec eval`."""

from __future__ import annotations

import numpy as np


def head_metrics(pred: np.ndarray, truth: np.ndarray, kind: str) -> dict[str, float]:
    """The metrics of a head of this kind (m.HeadKind, as the loader resolved it), as its graph's
    metric computes them: accuracy of the class scores' argmax for `classify` ([N, C] against
    labels [N]); pixel accuracy and mean IoU for `segment` ([N, C, H, W] against [N, H, W]);
    accuracy of each logit's sign against 0/1 labels for `binary` (any shape, one logit per
    label); MAE and RMSE for `regress`."""
    if kind == "segment":
        return dense_metrics(pred, truth)
    if kind == "classify":
        return {"accuracy": float((pred.argmax(1) == truth.reshape(len(truth))).mean())}
    if kind == "binary":
        return {"accuracy": float(((pred.reshape(truth.shape) > 0) == (truth > 0.5)).mean())}
    with np.errstate(over="ignore"):  # a diverged model's errors overflow to inf, which the caller refuses
        err = pred.reshape(truth.shape) - truth
        return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean()))}


def dense_metrics(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Over the positions labelled 0 .. C-1 (an ignore_index is left out): `accuracy`, the share
    predicted right, and `mean_iou`, the mean over the classes present in the labels or the
    predictions of |predicted c and labelled c| / |predicted c or labelled c|."""
    classes = scores.shape[1]
    labels = truth.reshape(len(truth), *scores.shape[2:]).astype(np.int64)  # [N, 1, H, W] -> [N, H, W]
    pred = scores.argmax(1)
    valid = (labels >= 0) & (labels < classes)
    # confusion[i, j]: positions labelled i and predicted j
    confusion = np.bincount(labels[valid] * classes + pred[valid], minlength=classes * classes)
    confusion = confusion.reshape(classes, classes)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return {"accuracy": float(inter.sum() / max(int(valid.sum()), 1)),
            "mean_iou": float((inter[present] / union[present]).mean()) if present.any() else 0.0}
