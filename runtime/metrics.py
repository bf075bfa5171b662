"""The metrics of predictions against targets, the same for training's validation and test
splits and for `dlspec eval`."""

from __future__ import annotations

import numpy as np


def prediction_metrics(pred: np.ndarray, truth: np.ndarray, classifier: bool) -> dict[str, float]:
    """Accuracy for a classifier's logits ([N, C], or one logit per sample against 0/1 labels),
    pixel accuracy and mean IoU for per-pixel scores ([N, C, H, W] against labels [N, H, W]), MAE
    and RMSE for a regressor."""
    if classifier and pred.ndim > 2 and pred.shape[1] > 1 and truth.ndim >= pred.ndim - 1:
        return dense_metrics(pred, truth)
    if classifier:
        hits = pred.argmax(1) == truth if pred.ndim == 2 else (pred > 0) == (truth > 0.5)
        return {"accuracy": float(hits.mean())}
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
