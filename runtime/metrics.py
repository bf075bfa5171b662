"""The metrics of predictions against targets, the same for training's validation and test
splits and for `dlspec eval`."""

from __future__ import annotations

import numpy as np


def prediction_metrics(pred: np.ndarray, truth: np.ndarray, classifier: bool) -> dict[str, float]:
    """Accuracy for a classifier's logits ([N, C], or one logit per sample against 0/1 labels),
    MAE and RMSE for a regressor."""
    if classifier:
        hits = pred.argmax(1) == truth if pred.ndim == 2 else (pred > 0) == (truth > 0.5)
        return {"accuracy": float(hits.mean())}
    err = pred.reshape(truth.shape) - truth
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean()))}
