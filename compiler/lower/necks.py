"""Built-in necks that need more wiring than a chain: the feature pyramid (fpn)."""

from __future__ import annotations

from dlspec.compiler.graph import Value, show
from dlspec.compiler.lower.context import LayerCtx
from dlspec.compiler.lower.layers import LAYERS, upsample
from dlspec.compiler.lower.walk import Scope, Walker
from dlspec.spec import model as m
from dlspec.spec.constexpr import evaluate
from dlspec.spec.errors import CompileError, SpecError, did_you_mean
from dlspec.spec.limits import MAX_SIZE

NECKS = ("fpn",)


def fpn(w: Walker, call: m.Call) -> list[Value]:
    """`fpn(from=[c3, c4, c5], channels=256)`: top-down feature pyramid (Lin et al. 2017).

    lateral_i = conv1x1(C_i); P_last = lateral_last;
    P_i = lateral_i + upsample(P_{i+1}) (nearest, integer factor); out_i = conv3x3(P_i).
    Gives one tensor per level, finest first.
    """
    known = {"from", "channels"}
    for key in call.kwargs:
        if key not in known:
            raise SpecError(f"fpn has no argument '{key}'{did_you_mean(key, known)}; it takes: "
                            "from, channels", call.arg_spans.get(key))
    if call.args or "from" not in call.kwargs or "channels" not in call.kwargs:
        raise SpecError("fpn takes from=[stage, ...] and channels=C", call.span)
    channels = evaluate(call.kwargs["channels"], {})
    if not isinstance(channels, int) or isinstance(channels, bool) or not 1 <= channels <= MAX_SIZE:
        raise SpecError(f"fpn channels must be a whole number from 1 to {MAX_SIZE:,}, got {channels!r}",
                        call.arg_spans["channels"])
    levels = w._from(call, {})
    if not levels:
        raise SpecError("fpn needs at least one stage to fuse: from=[stage, ...]", call.arg_spans["from"])
    for t in levels:
        if t.rank != 4:
            raise CompileError(f"fpn needs image-like stages [N, C, H, W], got {show(t.dims)}",
                               call.arg_spans["from"])
    scope = Scope("neck")
    conv1 = LAYERS["conv"].model_validate({"out": channels, "k": 1})
    conv3 = LAYERS["conv"].model_validate({"out": channels, "k": 3})
    lat = [w._apply(conv1, f"lateral{i + 1}", [t], scope, call.span, None)[0]
           for i, t in enumerate(levels)]
    tops: list[Value] = [lat[-1]]
    for i in range(len(lat) - 2, -1, -1):
        fine, coarse = lat[i], tops[0]
        fh, fw = _factor(fine, coarse, call)
        LayerCtx(w.comp, f"neck.top_down{i + 1}", "upsample", call.span, None, None)  # names the nodes
        tops.insert(0, (fine + upsample(coarse, fh, fw)).with_shape(fine.shape))
    return [w._apply(conv3, f"output{i + 1}", [t], scope, call.span, None)[0]
            for i, t in enumerate(tops)]


def _factor(fine: Value, coarse: Value, call: m.Call) -> tuple[int, int]:
    h, wd, ch, cw = fine.dims[2], fine.dims[3], coarse.dims[2], coarse.dims[3]
    assert isinstance(h, int) and isinstance(wd, int) and isinstance(ch, int) and isinstance(cw, int)
    if h % ch or wd % cw:
        raise CompileError(f"fpn: a stage of {show(fine.dims)} is not a whole-number upsampling "
                           f"of the next stage {show(coarse.dims)}; list stages finest first",
                           call.arg_spans.get("from", call.span))
    return h // ch, wd // cw
