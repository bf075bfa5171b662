"""Built-in necks that need more wiring than a chain: the feature pyramid (fpn)."""

from __future__ import annotations

from dlspec.compiler.context import LayerCtx
from dlspec.compiler.layers import LAYERS, upsample
from dlspec.compiler.tensor import Tensor, show
from dlspec.compiler.walk import Scope, Walker
from dlspec.spec import model as m
from dlspec.spec.constexpr import evaluate
from dlspec.spec.errors import CompileError, SpecError, did_you_mean

NECKS = ("fpn",)


def fpn(w: Walker, call: m.Call) -> list[Tensor]:
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
    if not isinstance(channels, int) or channels < 1:
        raise SpecError(f"fpn channels must be a whole number >= 1, got {channels!r}",
                        call.arg_spans["channels"])
    levels = w._from(call, {})
    for t in levels:
        if t.rank != 4:
            raise CompileError(f"fpn needs image-like stages [N, C, H, W], got {show(t.shape)}",
                               call.arg_spans["from"])
    scope = Scope("neck")
    conv1 = LAYERS["conv"].model_validate({"out": channels, "k": 1})
    conv3 = LAYERS["conv"].model_validate({"out": channels, "k": 3})
    lat = [w._apply(conv1, f"lateral{i + 1}", [t], scope, call.span, None)[0]
           for i, t in enumerate(levels)]
    tops: list[Tensor] = [lat[-1]]
    for i in range(len(lat) - 2, -1, -1):
        fine, coarse = lat[i], tops[0]
        fh, fw = _factor(fine, coarse, call)
        ctx = LayerCtx(w.comp, f"neck.top_down{i + 1}", "upsample", call.span, None, None)
        up = upsample(ctx, coarse, fh, fw)
        tops.insert(0, Tensor(ctx.g.op1("Add", [fine.name, up.name], ctx.path), fine.shape))
    return [w._apply(conv3, f"output{i + 1}", [t], scope, call.span, None)[0]
            for i, t in enumerate(tops)]


def _factor(fine: Tensor, coarse: Tensor, call: m.Call) -> tuple[int, int]:
    h, wd = fine.shape[2], fine.shape[3]
    ch, cw = coarse.shape[2], coarse.shape[3]
    assert h and wd and ch and cw
    if h % ch or wd % cw:
        raise CompileError(f"fpn: a stage of {show(fine.shape)} is not a whole-number upsampling "
                           f"of the next stage {show(coarse.shape)}; list stages finest first",
                           call.arg_spans.get("from", call.span))
    return h // ch, wd // cw
