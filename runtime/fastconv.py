"""A vectorised Conv for onnx's reference evaluator (its own loops make gradcheck slow).

Same semantics as ONNX Conv for 1-D/2-D/3-D inputs with explicit pads (auto_pad=NOTSET).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from onnx.reference.ops.op_conv import Conv as ReferenceConv


class Conv(ReferenceConv):
    """Registered by class name: onnx's evaluator matches `new_ops` to op types by __name__."""

    op_domain = ""

    def _run(self, X: np.ndarray, W: np.ndarray, B: np.ndarray | None = None, auto_pad: Any = None,
             dilations: Any = None, group: Any = None, kernel_shape: Any = None, pads: Any = None,
             strides: Any = None) -> tuple[np.ndarray]:
        if auto_pad not in (None, "NOTSET", b"NOTSET"):
            return super()._run(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group,  # type: ignore[no-any-return]
                                kernel_shape=kernel_shape, pads=pads, strides=strides)
        nd = X.ndim - 2
        k = W.shape[2:]
        d = list(dilations or [1] * nd)
        s = list(strides or [1] * nd)
        p = list(pads or [0] * (2 * nd))
        groups = int(group or 1)
        x = np.pad(X, [(0, 0), (0, 0)] + [(p[i], p[nd + i]) for i in range(nd)])
        span = [d[i] * (k[i] - 1) + 1 for i in range(nd)]
        win = sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))  # [N, C, *out, *span]
        win = win[(slice(None), slice(None)) + tuple(slice(None, None, s[i]) for i in range(nd))
                  + tuple(slice(None, None, d[i]) for i in range(nd))]  # [N, C, *out, *k]
        n, c = X.shape[:2]
        cg, og = c // groups, W.shape[0] // groups
        outs = []
        for gi in range(groups):
            wg = W[gi * og:(gi + 1) * og].reshape(og, -1)  # [O, C/g * prod(k)]
            xg = win[:, gi * cg:(gi + 1) * cg]
            xg = np.moveaxis(xg, 1, 1 + nd)  # [N, *out, C/g, *k]
            cols = xg.reshape(xg.shape[: 1 + nd] + (-1,))
            outs.append(np.moveaxis(cols @ wg.T, -1, 1))  # [N, O/g, *out]
        y = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
        if B is not None:
            y = y + B.reshape((1, -1) + (1,) * nd)
        return (y.astype(X.dtype, copy=False),)
