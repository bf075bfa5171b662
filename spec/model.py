"""The validated spec: Pydantic models for everything a .dlspec file can say."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from dlspec.spec.errors import Span
from dlspec.spec.limits import FLOAT32_MAX, FLOAT32_TINY, MAX_EPOCHS, MAX_INT, MAX_SAMPLE_VALUES, MAX_SIZE

Size = Annotated[int, Field(gt=0, le=MAX_SIZE)]  # a dimension, a batch size
Count = Annotated[int, Field(gt=0, le=MAX_INT)]


def _no_nul(path: str) -> str:
    if "\0" in path:
        raise ValueError("a path cannot contain a NUL character")
    if not path.strip():  # `from ""` was read as no `from` at all
        raise ValueError("a path cannot be empty")
    return path


FilePath = Annotated[str, AfterValidator(_no_nul)]  # a data file or a run folder


class Node(BaseModel):
    """Base of every spec model: frozen, strict about unknown fields, carries its span."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    span: Span | None = Field(default=None, repr=False, exclude=True)
    arg_spans: dict[str, Span] = Field(default_factory=dict, repr=False, exclude=True)


# ---- expressions (block arguments, features) ----
class Num(Node):
    kind: Literal["num"]
    value: int | float


class Name(Node):
    kind: Literal["name"]
    id: str


class Str(Node):
    kind: Literal["str"]
    value: str


class Bool(Node):
    kind: Literal["bool"]
    value: bool


class ListExpr(Node):
    kind: Literal["list"]
    items: list[Expr]


class Op(Node):
    kind: Literal["op"]
    op: Literal["add", "sub", "mul", "div", "neg", "pow"]
    args: list[Expr]


class Func(Node):
    kind: Literal["func"]
    name: str
    args: list[Expr]


Expr = Annotated[Union[Num, Name, Str, Bool, ListExpr, Op, Func], Field(discriminator="kind")]


# ---- chains ----
class Call(Node):
    """`name(arg, key=value)`: a layer or a block."""

    kind: Literal["call"]
    name: str
    args: list[Expr] = []
    kwargs: dict[str, Expr] = {}
    name_span: Span | None = Field(default=None, repr=False, exclude=True)


class Residual(Node):
    """`residual { chain }`: body plus shortcut (projected where channels or stride change)."""

    kind: Literal["residual"]
    kwargs: dict[str, Expr] = {}
    body: Chain


class ForEach(Node):
    """`for h in hidden { chain }`: the body once per list item."""

    kind: Literal["for"]
    var: str
    iter: Expr
    body: Chain


class Group(Node):
    kind: Literal["group"]
    body: Chain


class Repeat(Node):
    """`element * n`: n copies, each with its own parameters."""

    kind: Literal["repeat"]
    body: Element
    times: Expr


Element = Annotated[Union[Call, Residual, ForEach, Group, Repeat], Field(discriminator="kind")]


class Chain(Node):
    kind: Literal["chain"] = "chain"
    items: list[Element]


class Stage(Node):
    name: str | None
    chain: Chain
    name_span: Span | None = Field(default=None, repr=False, exclude=True)


class Body(Node):
    stages: list[Stage]


class Param(Node):
    name: str
    default: Expr | None = None


class BlockDef(Node):
    name: str
    params: list[Param] = []
    body: Body
    name_span: Span | None = Field(default=None, repr=False, exclude=True)


# ---- models ----
DType = Literal["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool", "string"]


class TensorDecl(Node):
    role: Literal["input", "target"]
    name: str
    dtype: DType
    shape: list[Size | str]
    dtype_span: Span | None = Field(default=None, repr=False, exclude=True)
    dim_spans: list[Span] = Field(default_factory=list, repr=False, exclude=True)

    @field_validator("shape")
    @classmethod
    def _values_per_sample(cls, shape: list[int | str]) -> list[int | str]:
        n = 1
        for d in shape[1:]:
            n *= d if isinstance(d, int) else 1
            if n > MAX_SAMPLE_VALUES:
                raise ValueError(f"it holds more than {MAX_SAMPLE_VALUES:,} values per sample, the limit")
        return shape


class FeatureDef(Node):
    name: str
    expr: Expr


class Features(Node):
    role: Literal["features"] = "features"
    defs: list[FeatureDef]


class Section(Node):
    role: Literal["backbone", "neck", "head"]
    form: Literal["body", "call"]
    body: Body | None = None
    call: Call | None = None


class NamedHead(Node):
    """`head cls: classify(10)`: one of several heads, each a named output of the model."""

    role: Literal["named_head"] = "named_head"
    name: str
    chain: Chain
    name_span: Span | None = Field(default=None, repr=False, exclude=True)


class CrossEntropy(Node):
    """`cross_entropy(label_smoothing=0.1, weight=[...], ignore_index=-100)`"""

    kind: Literal["cross_entropy"]
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    weight: list[Annotated[float, Field(ge=0.0)]] | None = None  # per class; at least one above 0
    ignore_index: int | None = None

    @field_validator("weight")
    @classmethod
    def _some_weight(cls, weight: list[float] | None) -> list[float] | None:
        if weight is not None and not any(w > 0 for w in weight):
            raise ValueError("at least one class needs a weight above 0")
        return weight


class BceWithLogits(Node):
    """`bce_with_logits(pos_weight=2.0)`"""

    kind: Literal["bce_with_logits"]
    pos_weight: PositiveFloat | None = None


class Mse(Node):
    """`mse`"""

    kind: Literal["mse"]


class L1(Node):
    """`l1`"""

    kind: Literal["l1"]


class Huber(Node):
    """`huber(delta=1.0)`"""

    kind: Literal["huber"]
    delta: PositiveFloat = 1.0


class Dice(Node):
    """`dice(smooth=1.0, ignore_index=255)`: 1 - the mean over classes of the soft Dice coefficient
    of the softmax scores against the labels, for per-pixel classes."""

    kind: Literal["dice"]
    smooth: PositiveFloat = 1.0
    ignore_index: int | None = None


LossKind = Annotated[Union[CrossEntropy, BceWithLogits, Mse, L1, Huber, Dice], Field(discriminator="kind")]


class LossTerm(Node):
    """`0.1 * huber(box, size)`: a weighted loss of one head's output against one target."""

    weight: float = 1.0
    loss: LossKind
    target: str | None = None
    head: str | None = None  # None: the model's only head
    # what the loader resolved (dlspec.spec.heads), not dumped: the head this term reads (None: the
    # unnamed head) and the declared target it compares with (the model's only one where none is named)
    bound_head: str | None = Field(default=None, repr=False, exclude=True)
    bound_target: str | None = Field(default=None, repr=False, exclude=True)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), ("head",))


class Loss(Node):
    role: Literal["loss"] = "loss"
    terms: list[LossTerm]


HeadKind = Literal["classify", "binary", "segment", "regress", ""]


class ResolvedHead(Node):
    """A head as the loader resolved it (dlspec.spec.heads), once, for the compiler and the runtime."""

    name: str | None  # None: the model's one unnamed head
    output: str  # its output in model.onnx: logits, prediction or output (unnamed); a named head's name
    terms: list[int] = []  # the loss terms that read it, as indices into loss.terms
    metric_term: int | None = None  # the term that says what it is and that its metric reads
    loss: str | None = None  # that term's loss kind
    target: str | None = None  # that term's target
    # classify (cross_entropy, dice), segment (the same, a label per position), binary
    # (bce_with_logits), regress (mse, l1, huber), or "" (no loss)
    kind: HeadKind = ""


class Model(Node):
    name: str
    extends: str | None = None
    inputs: list[TensorDecl] = []
    targets: list[TensorDecl] = []
    features: Features | None = None
    backbone: Section | None = None
    neck: Section | None = None
    head: Section | None = None
    heads: list[NamedHead] = []  # `head NAME: chain`, in place of `head`
    loss: Loss | None = None
    name_span: Span | None = Field(default=None, repr=False, exclude=True)
    # each head, in output order, as the loader resolved it (dlspec.spec.heads); not dumped
    resolved_heads: list[ResolvedHead] = Field(default_factory=list, repr=False, exclude=True)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), ("heads",))


def _without_empty(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A dump without these fields where they are unset: a spec that does not use them dumps (and
    hashes, into its ONNX metadata) as before they existed."""
    return {k: v for k, v in data.items() if k not in keys or v not in (None, [])}


# ---- training ----
BUNDLED_CLASSES = {"digits": 10, "iris": 3, "wine": 3, "breast_cancer": 2}  # diabetes: a regression


class Bundled(Node):
    """`digits(test=0.2, val=0.1)`: a data set shipped with scikit-learn."""

    kind: Literal["digits", "iris", "wine", "breast_cancer", "diabetes"]
    classes: list[NonNegativeInt] | None = Field(None, min_length=1)  # keep only these labels
    test: float = Field(0.2, ge=0.0, lt=1.0)
    val: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, classes: list[int] | None, info: ValidationInfo) -> list[int] | None:
        kind = info.data.get("kind")
        if classes is None or kind is None:
            return classes
        if kind not in BUNDLED_CLASSES:
            raise ValueError(f"{kind} is a regression data set; it has no classes to keep")
        n = BUNDLED_CLASSES[kind]
        for c in classes:
            if c >= n:
                raise ValueError(f"{kind} has classes 0 to {n - 1}, not {c}")
        if len(set(classes)) != len(classes):
            raise ValueError("a class is listed twice")
        return classes


class NpzData(Node):
    """`npz("data.npz", image=x, label=y, test=0.2)`"""

    kind: Literal["npz"]
    path: FilePath
    fields: dict[str, str] = {}
    test: float = Field(0.2, ge=0.0, lt=1.0)
    val: float = Field(0.0, ge=0.0, lt=1.0)


class CsvData(Node):
    """`csv("data.csv", target=price, test=0.2)`"""

    kind: Literal["csv"]
    path: FilePath
    target: str
    test: float = Field(0.2, ge=0.0, lt=1.0)
    val: float = Field(0.0, ge=0.0, lt=1.0)


class ImagesData(Node):
    """`images("photos", size=[32, 32], policy=center_crop, skip_bad=true, test=0.2)`: one subfolder
    per class of PNG/JPEG/BMP/WebP files, or a .csv/.json manifest of file names and labels."""

    kind: Literal["images"]
    path: FilePath
    size: list[Size] | None = Field(None, min_length=2, max_length=2)  # [H, W]; default: the input's
    policy: Literal["resize", "center_crop", "pad"] = "resize"
    skip_bad: bool = False  # corrupt or unreadable files are left out (and listed), not an error
    cache: FilePath | None = None  # the decoded-pixel cache folder; default ~/.cache/dlspec/images
    test: float = Field(0.2, ge=0.0, lt=1.0)
    val: float = Field(0.0, ge=0.0, lt=1.0)


Data = Annotated[Union[Bundled, NpzData, CsvData, ImagesData], Field(discriminator="kind")]


class Sgd(Node):
    """`sgd(lr=0.1, momentum=0.9, nesterov=true, dampening=0, weight_decay=0)`"""

    kind: Literal["sgd"]
    lr: PositiveFloat = 0.01
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    dampening: float = Field(0.0, ge=0.0, le=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class Adam(Node):
    """`adam(lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0)`; adamw decouples the decay."""

    kind: Literal["adam", "adamw"]
    lr: PositiveFloat = 1e-3
    # each in [0, 1): at 1 the moment never moves from its start and the bias correction divides by 0
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: float = Field(0.0, ge=0.0)


Optimizer = Annotated[Union[Sgd, Adam], Field(discriminator="kind")]


class Schedule(Node):
    """`cosine(warmup=1)`, `step(every=10, gamma=0.1)`, `linear`, `constant`; warmup in epochs."""

    kind: Literal["constant", "step", "cosine", "linear"]
    warmup: float = Field(0.0, ge=0.0)
    every: Count | None = None
    gamma: float = Field(0.1, gt=0.0)
    min_lr: float = Field(0.0, ge=0.0)
    scale_with_batch: Size | None = None


class Initializer(Node):
    """`xavier_normal`, `kaiming_uniform`, `zeros`, `constant(0.5)`, `normal(0.01)`."""

    kind: Literal["xavier_normal", "xavier_uniform", "kaiming_normal", "kaiming_uniform",
                  "zeros", "ones", "constant", "normal", "uniform"]
    value: float = 0.0
    std: PositiveFloat = 0.01
    limit: PositiveFloat = 0.1
    gain: PositiveFloat = 1.0


class InitRule(Node):
    target: str | None = None
    init: Initializer


def _float32(value: float) -> float:
    if not FLOAT32_TINY <= value <= FLOAT32_MAX:  # the graph computes in float32: 1e-50 would be 0
        raise ValueError(f"{value:g} is outside float32's normal range ({FLOAT32_TINY:.3g} to "
                         f"{FLOAT32_MAX:.3g})")
    return value


Float32Bound = Annotated[float, AfterValidator(_float32)]  # a positive bound the step compares with


class GradNorm(Node):
    """`grad_norm(1.0)`: scale all gradients so their global L2 norm is at most max_norm."""

    kind: Literal["grad_norm"]
    max_norm: Float32Bound


class GradValue(Node):
    """`grad_value(0.5)`: clip every gradient element to [-limit, limit]."""

    kind: Literal["grad_value"]
    limit: Float32Bound


Clip = Annotated[Union[GradNorm, GradValue], Field(discriminator="kind")]


class Augment(Node):
    """`hflip`, `vflip`, `translate(2)`, `crop(4)`, `noise(0.02)`, `brightness(0.2)`,
    `contrast(0.2)`, `cutout(4)`."""

    kind: Literal["hflip", "vflip", "translate", "crop", "noise", "brightness", "contrast", "cutout"]
    amount: float = Field(1.0, ge=0.0, le=MAX_SIZE)
    p: float = Field(0.5, ge=0.0, le=1.0)


class EarlyStop(Node):
    """`early_stop(patience=5, min_delta=0.0)`: stop when the validation score that picks best.npz
    (accuracy, else MAE) has not improved by more than min_delta for `patience` epochs in a row."""

    kind: Literal["early_stop"]
    patience: Annotated[int, Field(gt=0, le=MAX_EPOCHS, strict=True)] = 5
    min_delta: float = Field(0.0, ge=0.0)


class Fp16(Node):
    """`precision fp16(loss_scale=65536, growth_interval=2000)`: half precision on CUDA with dynamic
    loss scaling: a step whose gradients overflow is skipped and halves the scale; `growth_interval`
    good steps in a row double it."""

    kind: Literal["fp16"]
    loss_scale: float = Field(65536.0, gt=0.0, le=2.0 ** 64)
    growth_interval: Count = 2000


class PlainPrecision(Node):
    """`precision fp32` (the default) or `precision bf16` (half precision on CUDA, no loss scaling:
    bfloat16 has float32's range)."""

    kind: Literal["fp32", "bf16"]


Precision = Annotated[Union[Fp16, PlainPrecision], Field(discriminator="kind")]


class LrRule(Node):
    target: str
    value: float = Field(ge=0.0)


class MapRule(Node):
    source: str  # a weight's name in the `from` file, or a prefix ending in "." ("" for every name)
    target: str  # the parameter name (or prefix) it initialises


class Train(Node):
    name: str | None = None
    extends: str | None = None
    model: str | None = None
    data: Data | None = None
    batch: Size = 32
    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 10
    optimizer: Optimizer | None = None
    schedule: Schedule | None = None
    init: list[InitRule] = []
    clip: Clip | None = None
    augment: list[Augment] = []
    seed: Annotated[int, Field(ge=0, le=MAX_INT)] = 0
    from_: FilePath | None = Field(default=None, alias="from")
    from_map: list[MapRule] = []  # `from "x.onnx" map { "fc." -> "head.0." }`: renames, first
    from_except: list[str] = []  # `from "run" except head`: parameters under these stay fresh
    freeze: list[str] = []
    lr_mult: list[LrRule] = []
    early_stop: EarlyStop | None = None
    precision: Precision | None = None  # None: fp32

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
