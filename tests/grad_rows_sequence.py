"""Gradient-table rows of recurrent and sampling ops: RNN, GRU, LSTM, GridSample, linear and cubic
Resize, Einsum, and batch norm in training mode."""

from __future__ import annotations

from typing import Any

import numpy as np
from grad_row import Row
from grad_row import const as _c

NO_LAYOUT_1 = "onnxruntime runs recurrent ops in layout 0 only"
T, B, IN, H = 3, 2, 3, 2  # steps, batch, inputs, hidden units: small, the time loop is unrolled
LENS = _c([3, 1], np.int32)  # a full sequence and a padded one


def _recurrent(op: str, gates: int, *, dirs: int = 1, bias: bool = True, lens: bool = False,
               h0: bool = True, c0: bool = True, peep: bool = False, layout: int = 0,
               outputs: int | None = None, loss_on: list[int] | None = None, id: str = "",
               no_ort: str = "", **attrs: Any) -> Row:
    """A row of op with the optional inputs asked for, wired as x0.. (differentiated) and c0 (lens)."""
    batch_major = layout == 1
    shapes: list[tuple[int, ...]] = [(B, T, IN) if batch_major else (T, B, IN), (dirs, gates * H, IN),
                                     (dirs, gates * H, H)]
    wiring = ["x0", "x1", "x2"]

    def add(on: bool, shape: tuple[int, ...]) -> None:
        if on:
            wiring.append(f"x{len(shapes)}")
            shapes.append(shape)
        else:
            wiring.append("")

    state = (B, dirs, H) if batch_major else (dirs, B, H)
    add(bias, (dirs, 2 * gates * H))
    wiring.append("c0" if lens else "")
    add(h0, state)
    if op == "LSTM":
        add(c0, state)
        add(peep, (dirs, 3 * H))
    while not wiring[-1]:
        wiring.pop()
    direction = {1: "forward", 2: "bidirectional"}[dirs]
    return Row(op, shapes, {"hidden_size": H, "direction": attrs.pop("direction", direction),
                            "layout": layout, **attrs},
               consts=[LENS] if lens else [], inputs=wiring, low=-1.0, high=1.0,
               outputs=outputs or (3 if op == "LSTM" else 2), loss_on=loss_on, id=id,
               no_ort=no_ort or (NO_LAYOUT_1 if layout else ""))


ROWS: list[Row] = [
    _recurrent("RNN", 1, id="forward"),
    _recurrent("RNN", 1, lens=True, direction="reverse", id="reverse-lens"),
    _recurrent("RNN", 1, dirs=2, lens=True, id="bidirectional-lens"),
    _recurrent("RNN", 1, dirs=2, layout=1, bias=False, id="bidirectional-layout-1"),
    _recurrent("RNN", 1, h0=False, outputs=1, clip=0.6, id="only-y-clip"),
    _recurrent("RNN", 1, lens=True, loss_on=[1], id="only-y-h"),
    _recurrent("RNN", 1, dirs=2, activations=["Sigmoid", "Relu"], id="sigmoid-relu"),
    _recurrent("RNN", 1, dirs=2, activations=["LeakyRelu", "HardSigmoid"], activation_alpha=[0.2, 0.4],
               activation_beta=[0.5], id="leaky-hard-sigmoid"),
    _recurrent("RNN", 1, dirs=2, activations=["Elu", "Softsign"], id="elu-softsign"),
    _recurrent("RNN", 1, dirs=2, activations=["Softplus", "Affine"], activation_alpha=[0.7],
               activation_beta=[0.2], id="softplus-affine"),
    _recurrent("RNN", 1, dirs=2, activations=["ScaledTanh", "ThresholdedRelu"], activation_alpha=[1.5, 0.1],
               activation_beta=[0.8], id="scaled-tanh-thresholded"),
    _recurrent("GRU", 3, id="forward"),
    _recurrent("GRU", 3, lens=True, direction="reverse", linear_before_reset=1, id="reverse-lens-linear"),
    _recurrent("GRU", 3, dirs=2, lens=True, clip=0.7, id="bidirectional-lens-clip"),
    _recurrent("GRU", 3, dirs=2, layout=1, linear_before_reset=1, lens=True, id="bidirectional-layout-1"),
    _recurrent("GRU", 3, bias=False, h0=False, outputs=1, id="no-optional-inputs"),
    _recurrent("GRU", 3, dirs=2, activations=["Sigmoid", "Relu", "HardSigmoid", "Tanh"], lens=True,
               linear_before_reset=1, id="activations"),
    _recurrent("LSTM", 4, peep=True, id="forward-peepholes"),
    _recurrent("LSTM", 4, peep=True, lens=True, direction="reverse", id="reverse-lens-peepholes"),
    _recurrent("LSTM", 4, dirs=2, lens=True, clip=0.8, loss_on=[2], id="bidirectional-only-y-c"),
    _recurrent("LSTM", 4, dirs=2, peep=True, layout=1, lens=True, loss_on=[0, 1],
               id="bidirectional-layout-1"),
    _recurrent("LSTM", 4, peep=True, input_forget=1, id="input-forget"),
    _recurrent("LSTM", 4, bias=False, h0=False, c0=False, outputs=1, id="no-optional-inputs"),
    _recurrent("LSTM", 4, activations=["HardSigmoid", "Relu", "Softsign"], lens=True, id="activations"),
]

ROWS += [
    Row("BatchNormalization", [(3, 2, 2, 3), (2,), (2,)], {"training_mode": 1, "epsilon": 1e-3},
        consts=[_c([0.1, -0.2], np.float64), _c([0.5, 1.5], np.float64)], outputs=3, loss_on=[0],
        id="training"),
    Row("BatchNormalization", [(4, 3, 5), (3,), (3,), (3,), (3,)], {"training_mode": 1, "momentum": 0.7},
        outputs=3, low=0.2, high=1.5, id="training-running-stats-read"),
    Row("BatchNormalization", [(5, 2), (2,), (2,)], {"training_mode": 1},
        consts=[_c([0.0, 0.3], np.float64), _c([1.0, 2.0], np.float64)], outputs=3, loss_on=[0, 2],
        id="training-2d"),
]


def _grid(mode: str, pad: str, corners: int, x: tuple[int, ...] = (2, 2, 3, 4),
          out: tuple[int, ...] = (2, 3), id: str = "") -> Row:
    """GridSample of x on a grid reaching past the borders ([-1.3, 1.3]) where the padding shows."""
    grid = (x[0], *out, len(x) - 2)
    return Row("GridSample", [x, grid], {"mode": mode, "padding_mode": pad, "align_corners": corners},
               low=-1.3, high=1.3, id=id or f"{mode}-{pad}-{'aligned' if corners else 'half-pixel'}")


ROWS += [_grid(m, p, a) for m in ("linear", "nearest") for p in ("zeros", "border", "reflection")
         for a in (0, 1)]
ROWS += [
    _grid("linear", "zeros", 0, x=(1, 2, 3, 2, 4), out=(2, 2, 2), id="volumetric-zeros"),
    _grid("linear", "reflection", 1, x=(1, 1, 2, 3, 2), out=(3, 1, 2), id="volumetric-reflection"),
    _grid("nearest", "border", 0, x=(1, 2, 2, 3, 3), out=(2, 2, 1), id="volumetric-nearest"),
]


def _resize(x: tuple[int, ...], mode: str, id: str, scales: list[float] | None = None,
            sizes: list[int] | None = None, roi: list[float] | None = None, no_ort: str = "",
            **attrs: Any) -> Row:
    """Resize of x by constant scales or sizes (and roi), wired as X, roi, scales, sizes."""
    consts, wiring = [], ["x0", "", "", ""]
    for slot, v, dtype in ((1, roi, np.float32), (2, scales, np.float32), (3, sizes, np.int64)):
        if v is not None:
            wiring[slot] = f"c{len(consts)}"
            consts.append(_c(v, dtype))
    while not wiring[-1]:
        wiring.pop()
    return Row("Resize", [x], {"mode": mode, **attrs}, consts=consts, inputs=wiring, id=id, no_ort=no_ort)


NO_CUBIC_3D = "onnxruntime's cubic Resize takes 2-D input or 4-D input resized on its last two axes"
ROWS += [
    _resize((1, 2, 3, 4), "linear", "linear-upsample", scales=[1, 1, 2, 1.5]),
    _resize((1, 2, 5, 4), "linear", "linear-align-corners-fractional", scales=[1, 1, 0.6, 0.6],
            coordinate_transformation_mode="align_corners"),
    _resize((1, 2, 5, 4), "linear", "linear-pytorch-half-pixel-one-row", sizes=[1, 2, 1, 3],
            coordinate_transformation_mode="pytorch_half_pixel"),
    _resize((1, 2, 5, 4), "linear", "linear-asymmetric", scales=[1, 1, 1.7, 0.8],
            coordinate_transformation_mode="asymmetric"),
    _resize((1, 2, 5, 4), "linear", "linear-half-pixel-symmetric", scales=[1, 1, 0.6, 1.5],
            coordinate_transformation_mode="half_pixel_symmetric"),
    _resize((1, 2, 5, 4), "linear", "linear-tf-crop-and-resize", sizes=[1, 2, 3, 7],
            roi=[0, 0, 0.1, -0.2, 1, 1, 0.8, 1.3], coordinate_transformation_mode="tf_crop_and_resize",
            extrapolation_value=2.0),
    _resize((1, 2, 5, 4), "linear", "linear-axes-not-larger", sizes=[7, 3], axes=[3, 2],
            keep_aspect_ratio_policy="not_larger"),
    _resize((1, 2, 5, 4), "linear", "linear-antialias", scales=[1, 1, 0.6, 0.4], antialias=1),
    _resize((6, 5), "linear", "linear-2d", scales=[0.5, 1.5]),
    _resize((2, 3, 5), "linear", "linear-3d", scales=[1, 1, 1.5]),
    _resize((1, 1, 3, 2, 4), "linear", "trilinear", scales=[1, 1, 2, 1.5, 0.5]),
    _resize((2, 3, 2, 2), "linear", "linear-batch-axis", scales=[1.5, 1, 1, 1],
            no_ort="onnxruntime's linear Resize leaves a 4-D input's outer axes alone"),
    _resize((1, 2, 3, 4), "cubic", "cubic-upsample", scales=[1, 1, 2, 1.5]),
    _resize((1, 2, 5, 4), "cubic", "cubic-align-corners-downsample", sizes=[1, 2, 3, 2],
            coordinate_transformation_mode="align_corners"),
    _resize((1, 2, 4, 4), "cubic", "cubic-exclude-outside", scales=[1, 1, 1.5, 0.75], cubic_coeff_a=-0.5,
            exclude_outside=1, coordinate_transformation_mode="asymmetric"),
    _resize((1, 2, 5, 6), "cubic", "cubic-antialias", sizes=[1, 2, 3, 2], antialias=1),
    _resize((5, 4), "cubic", "cubic-2d-pytorch-half-pixel", scales=[1.5, 0.8],
            coordinate_transformation_mode="pytorch_half_pixel"),
    _resize((2, 6, 5), "cubic", "cubic-3d", scales=[1, 0.5, 1.5], no_ort=NO_CUBIC_3D),
]

# the equations of onnx's Einsum node tests that the table above lacks, and diagonals that meet
# another operand
ROWS += [
    Row("Einsum", [(3, 4)], {"equation": "ij->ji"}, id="transpose"),
    Row("Einsum", [(3, 4)], {"equation": "ij->i"}, id="sum"),
    Row("Einsum", [()], {"equation": "->"}, id="scalar"),
    Row("Einsum", [(2, 3, 3)], {"equation": "...ii ->...i"}, id="batch-diagonal-spaced"),
    Row("Einsum", [(2, 3, 3), (3,)], {"equation": "bii,i->b"}, id="diagonal-meets-vector"),
    Row("Einsum", [(3, 3, 3)], {"equation": "iii->i"}, id="triple-diagonal"),
    Row("Einsum", [(2, 2, 3), (3, 4, 4)], {"equation": "aab,bcc->ac"}, id="diagonals-both-sides"),
]
