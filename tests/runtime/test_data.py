"""runtime/data.py: every data source, splits, batches and every bad-data error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlspec import data as d
from dlspec.spec import model as m
from dlspec.spec.errors import RunError
from dlspec.spec.loader import load

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def decl(role: str, name: str, dtype: str = "float32", *dims: int) -> m.TensorDecl:
    return m.TensorDecl(role=role, name=name, dtype=dtype, shape=["N", *dims])  # type: ignore[arg-type]


def model(inputs: list[m.TensorDecl], targets: list[m.TensorDecl]) -> m.Model:
    return m.Model(name="net", inputs=inputs, targets=targets)


def tabular(*names: str, target: str = "y", dtype: str = "int64") -> m.Model:
    return model([decl("input", n) for n in names], [decl("target", target, dtype)])


def train(data: m.NpzData | m.CsvData | m.Bundled, seed: int = 0) -> m.Train:
    return m.Train(data=data, seed=seed)


def bundled(kind: str, test: float = 0.2, val: float = 0.0) -> m.Train:
    return train(m.Bundled(kind=kind, test=test, val=val))  # type: ignore[arg-type]


def npz(path: Path, fields: dict[str, str] | None = None, test: float = 0.2, val: float = 0.0) -> m.Train:
    return train(m.NpzData(kind="npz", path=path.name, fields=fields or {}, test=test, val=val))


def csv(path: Path, target: str = "y") -> m.Train:
    return train(m.CsvData(kind="csv", path=path.name, target=target, test=0.2, val=0.0))


def size(ds: d.Dataset) -> tuple[int, int, int]:
    return d.size(ds.train), d.size(ds.val), d.size(ds.test)


IMAGES = model([decl("input", "image", "float32", 1, 8, 8)], [decl("target", "label", "int64")])


# ---- bundled sets ----
def test_digits_raw_pixels_as_declared_shape() -> None:
    ds = d.load_dataset(bundled("digits", test=0.2, val=0.1), IMAGES, EXAMPLES)
    assert size(ds) == (1258, 180, 359)
    assert ds.train["image"].shape == (1258, 1, 8, 8) and ds.train["image"].dtype == np.float32
    assert ds.train["label"].dtype == np.int64
    assert ds.train["image"].max() == 16.0 and ds.train["image"].min() == 0.0   # no implicit scaling
    flat = model([decl("input", "x", "float32", 64)], [decl("target", "label", "int64")])
    assert d.load_dataset(bundled("digits"), flat, EXAMPLES).train["x"].shape[1:] == (64,)


@pytest.mark.parametrize("kind, n, features",
                         [("iris", 150, 4), ("wine", 178, 13), ("breast_cancer", 569, 30)])
def test_tabular_classification_sets(kind: str, n: int, features: int) -> None:
    net = model([decl("input", "x", "float32", features)], [decl("target", "y", "int64")])
    ds = d.load_dataset(bundled(kind), net, EXAMPLES)
    assert sum(size(ds)) == n and ds.stratified
    assert ds.train["x"].dtype == np.float32 and ds.train["y"].dtype == np.int64


def test_diabetes_regression_target_raw() -> None:
    net = model([decl("input", "x", "float32", 10)], [decl("target", "y", "float32")])
    ds = d.load_dataset(bundled("diabetes"), net, EXAMPLES)
    assert ds.train["y"].dtype == np.float32 and not ds.stratified
    assert ds.train["x"][:, 0].max() > 50    # age in years: sklearn's unscaled values


def test_bundled_columns_by_name_then_by_order() -> None:
    by_name = d.load_dataset(bundled("iris"), tabular("petal_width", "sepal_length"), EXAMPLES)
    from sklearn.datasets import load_iris
    raw = load_iris().data
    all_x = np.concatenate([s["petal_width"] for s in (by_name.train, by_name.val, by_name.test)])
    np.testing.assert_array_equal(np.sort(all_x), np.sort(raw[:, 3].astype(np.float32)))
    by_order = d.load_dataset(bundled("iris"), tabular("a", "b", "c", "d"), EXAMPLES)
    assert set(by_order.train) == {"a", "b", "c", "d", "y"}
    assert by_order.train["d"].max() == np.float32(raw[:, 3].max())


def test_bundled_mismatch_lists_both() -> None:
    with pytest.raises(RunError, match=r"bundled data set iris has 4 features per sample \(sepal_length, "
                                       r"sepal_width, petal_length, petal_width\).*a: float32\[N\]"):
        d.load_dataset(bundled("iris"), tabular("a", "b"), EXAMPLES)
    wrong = model([decl("input", "image", "float32", 1, 28, 28)], [decl("target", "label", "int64")])
    with pytest.raises(RunError, match=r"digits has 64 features.*image: float32\[N, 1, 28, 28\]"):
        d.load_dataset(bundled("digits"), wrong, EXAMPLES)
    two = model([decl("input", "x", "float32", 4)], [decl("target", "y"), decl("target", "z")])
    with pytest.raises(RunError, match="iris has one target; model net declares y, z"):
        d.load_dataset(bundled("iris"), two, EXAMPLES)


# ---- npz ----
def write_npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_fields_and_defaults(tmp_path: Path) -> None:
    x = np.arange(100 * 64, dtype=np.float64).reshape(100, 1, 8, 8)
    y = np.arange(100) % 5
    path = write_npz(tmp_path, x=x, label=y.astype(np.int32))
    ds = d.load_dataset(npz(path, {"image": "x"}), IMAGES, tmp_path)
    assert ds.train["image"].dtype == np.float32 and ds.train["label"].dtype == np.int64
    assert size(ds) == (80, 0, 20)
    # samples stay paired: image i carries label i
    for split in (ds.train, ds.test):
        np.testing.assert_array_equal((split["image"][:, 0, 0, 0] // 64).astype(int) % 5, split["label"])
    # whole-valued floats may become int labels
    path = write_npz(tmp_path, image=x.astype(np.float32), label=y.astype(np.float64))
    assert d.load_dataset(npz(path), IMAGES, tmp_path).train["label"].dtype == np.int64


GOOD_X = np.zeros((10, 1, 8, 8), np.float32)
GOOD_Y = np.arange(10) % 2

NPZ_ERRORS: dict[str, tuple[dict[str, np.ndarray], dict[str, str], str]] = {
    "missing array": (dict(image=GOOD_X, lbl=GOOD_Y), {},
                      "target 'label': the file has no array 'label' (did you mean 'lbl'?) "
                      "(it has: image, lbl)"),
    "field names no input": (dict(image=GOOD_X, label=GOOD_Y), {"imgae": "image"},
                             "npz field 'imgae' is not an input or target of model net "
                             "(did you mean 'image'?)"),
    "renamed array missing": (dict(image=GOOD_X, label=GOOD_Y), {"image": "pixels"},
                              "input 'image' (array 'pixels'): the file has no array 'pixels'"),
    "wrong shape": (dict(image=np.zeros((10, 64), np.float32), label=GOOD_Y), {},
                    "input 'image': shape (10, 64) does not match the declared float32[N, 1, 8, 8]"),
    "scalar": (dict(image=GOOD_X, label=np.array(3)), {},
               "target 'label': shape () does not match the declared int64[N]"),
    "strings": (dict(image=GOOD_X, label=np.array(["a"] * 10)), {},
                "target 'label': values are not numeric (dtype <U1); int64 expected"),
    "objects": (dict(image=GOOD_X, label=np.array([None] * 10, dtype=object)), {},
                "array 'label' holds Python objects, not numbers"),
    "nan": (dict(image=np.where(np.arange(640).reshape(10, 1, 8, 8) == 200, np.nan, 0.0), label=GOOD_Y), {},
            "input 'image': has NaN (a missing value) at sample 3"),
    "inf": (dict(image=np.where(np.arange(640).reshape(10, 1, 8, 8) == 70, np.inf, 0.0), label=GOOD_Y), {},
            "input 'image': has an infinite value inf at sample 1"),
    "fractional label": (dict(image=GOOD_X, label=np.array([0, 1, 2.5, 0, 1, 0, 1, 0, 1, 0])), {},
                         "target 'label': cannot cast float64 to int64 safely: "
                         "non-integer value 2.5 at sample 2"),
    "float32 overflow": (dict(image=np.full((10, 1, 8, 8), 1e300), label=GOOD_Y), {},
                         "cannot cast float64 to float32 safely: "
                         "value 1e+300 at sample 0 is out of its range"),
    "sample counts": (dict(image=GOOD_X, label=GOOD_Y[:9]), {},
                      "the arrays have different sample counts: 'image' has 10, 'label' has 9"),
    "empty": (dict(image=GOOD_X[:0], label=GOOD_Y[:0]), {}, "data.npz: no samples"),
}


@pytest.mark.parametrize("case", NPZ_ERRORS, ids=list(NPZ_ERRORS))
def test_npz_errors(tmp_path: Path, case: str) -> None:
    arrays, fields, message = NPZ_ERRORS[case]
    path = write_npz(tmp_path, **arrays)
    with pytest.raises(RunError) as err:
        d.load_dataset(npz(path, fields), IMAGES, tmp_path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_npz_int_range_and_bool(tmp_path: Path) -> None:
    net = model([decl("input", "x")], [decl("target", "y", "int8")])
    path = write_npz(tmp_path, x=np.zeros(10), y=np.array([0] * 9 + [300]))
    with pytest.raises(RunError, match=r"target 'y': cannot cast int64 to int8 safely: value 300 at sample 9 "
                                       r"is outside \[-128, 127\]"):
        d.load_dataset(npz(path), net, tmp_path)
    net = model([decl("input", "x")], [decl("target", "y", "bool")])
    path = write_npz(tmp_path, x=np.zeros(10), y=np.array([0, 1] * 4 + [2, 1]))
    with pytest.raises(RunError, match="value 2 at sample 8 is not 0 or 1"):
        d.load_dataset(npz(path), net, tmp_path)


def test_npz_unreadable_and_missing(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(RunError, match="cannot read data file .*junk.npz: not an .npz file"):
        d.load_dataset(npz(tmp_path / "junk.npz"), IMAGES, tmp_path)
    np.save(tmp_path / "one.npy", GOOD_X)
    with pytest.raises(RunError, match="one.npy: it holds a single array, not an .npz"):
        d.load_dataset(npz(tmp_path / "one.npy"), IMAGES, tmp_path)
    with pytest.raises(RunError, match=r"no such file .*nothere.npz$"):
        d.load_dataset(npz(tmp_path / "nothere.npz"), IMAGES, tmp_path)


# ---- csv ----
LAND = tabular("length", "width", "distance", target="price", dtype="float32")


def write_csv(tmp_path: Path, text: str, name: str = "land.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def land_rows(n: int = 20) -> str:
    rows = [f"{i},{i + 1},{i % 7},{i * 3.5},extra" for i in range(n)]
    return "length,width,distance,price,note\n" + "\n".join(rows) + "\n\n"


def test_csv_columns_by_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path, land_rows())
    ds = d.load_dataset(csv(path, target="price"), LAND, tmp_path)
    assert set(ds.train) == {"length", "width", "distance", "price"} and size(ds) == (16, 0, 4)
    assert all(v.dtype == np.float32 and v.shape == (16,) for v in ds.train.values())
    np.testing.assert_array_equal(ds.train["price"], ds.train["length"] * 3.5)   # rows stay together
    # the model's target may read a column of another name
    renamed = tabular("length", "width", "distance", target="y", dtype="float32")
    assert d.load_dataset(csv(path, target="price"), renamed, tmp_path).train["y"].shape == (16,)


CSV_ERRORS = {
    "unknown target column": (land_rows(), "prize",
                              "target 'price' (column 'prize'): no column 'prize' (did you mean 'price'?) "
                              "(the header has: length, width, distance, price, note)"),
    "unknown input column": (land_rows().replace("width", "widht"), "price",
                             "input 'width': no column 'width' (did you mean 'widht'?)"),
    "non-numeric": (land_rows().replace("\n3,4,", "\n3,four,"), "price",
                    "input 'width': value 'four' at line 5 is not numeric"),
    "missing value": (land_rows().replace("\n3,4,", "\n3,,"), "price",
                      "input 'width': missing value at line 5"),
    "nan": (land_rows().replace("\n3,4,", "\n3,nan,"), "price", "input 'width': NaN at line 5"),
    "ragged": (land_rows().replace("\n3,4,", "\n3,"), "price", "line 5 has 4 fields; the header has 5"),
    "duplicate header": ("a,a\n1,2\n", "price", "the header names column 'a' more than once"),
    "empty": ("", "price", "empty file (a header row of column names is expected)"),
    "header only": ("length,width,distance,price\n", "price", "no samples (only a header)"),
}


@pytest.mark.parametrize("case", CSV_ERRORS, ids=list(CSV_ERRORS))
def test_csv_errors(tmp_path: Path, case: str) -> None:
    text, target, message = CSV_ERRORS[case]
    path = write_csv(tmp_path, text)
    with pytest.raises(RunError) as err:
        d.load_dataset(csv(path, target=target), LAND, tmp_path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_csv_int_target_and_shapes(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "a,y\n" + "".join(f"{i},{i % 2}.5\n" for i in range(10)))
    with pytest.raises(RunError, match=r"target 'y': cannot cast float64 to int64 safely: "
                                       r"non-integer value 0.5"):
        d.load_dataset(csv(path), tabular("a"), tmp_path)
    wide = model([decl("input", "a", "float32", 3)], [decl("target", "y")])
    with pytest.raises(RunError, match=r"input 'a': a csv column gives one value per sample; "
                                       r"the model declares float32\[N, 3\]"):
        d.load_dataset(csv(path), wide, tmp_path)


def test_land_price_example_and_missing_file_hint(tmp_path: Path) -> None:
    prog = load(EXAMPLES / "land_price.dlspec")
    net = prog.model()
    plan = prog.train(net.name)
    assert plan is not None
    shutil.copy(EXAMPLES / "land_price.dlspec", tmp_path)
    shutil.copy(EXAMPLES / "make_land_price.py", tmp_path)
    hint = r"no such file .*land_price.csv \(run make_land_price.py to write it\)"
    with pytest.raises(RunError, match=hint):
        d.load_dataset(plan, net, tmp_path)
    subprocess.run([sys.executable, str(tmp_path / "make_land_price.py")], check=True, capture_output=True)
    ds = d.load_dataset(plan, net, tmp_path)
    assert size(ds) == (1600, 0, 400)
    price, area = ds.train["price"], ds.train["length"] * ds.train["width"]
    present = ~np.isnan(ds.train["distance"])  # 3% of the distances are missing
    assert np.corrcoef(price, area)[0, 1] > 0.8
    assert np.corrcoef(price[present], ds.train["distance"][present])[0, 1] < 0
    assert 0.01 < 1 - present.mean() < 0.05 and 0.02 < np.mean(ds.train["district"] == "") < 0.08
    again = tmp_path / "again.csv"
    subprocess.run([sys.executable, str(tmp_path / "make_land_price.py"), "-o", str(again)], check=True,
                   capture_output=True)
    assert again.read_bytes() == (tmp_path / "land_price.csv").read_bytes()   # seeded


def test_examples_digits_through_the_loader() -> None:
    prog = load(EXAMPLES / "digits.dlspec")
    net = prog.model()
    plan = prog.train(net.name)
    assert plan is not None
    ds = d.load_dataset(plan, net, EXAMPLES)
    assert ds.test["image"].shape[1:] == (1, 8, 8) and ds.stratified


# ---- splits ----
def test_split_deterministic_disjoint_and_complete() -> None:
    labels = np.arange(1000) % 4
    (tr, va, te), strat = d.split_indices(1000, 0.2, 0.1, seed=7, labels=labels)
    (tr2, va2, te2), _ = d.split_indices(1000, 0.2, 0.1, seed=7, labels=labels)
    assert strat and (len(tr), len(va), len(te)) == (700, 100, 200)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), (tr2, va2, te2)))
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(1000))
    (_, _, other), _ = d.split_indices(1000, 0.2, 0.1, seed=8, labels=labels)
    assert not np.array_equal(te, other)
    assert list(np.bincount(labels[te])) == [50] * 4 and list(np.bincount(labels[va])) == [25] * 4


def test_stratification_keeps_class_shares_and_falls_back() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    (tr, va, te), strat = d.split_indices(100, 0.2, 0.0, seed=0, labels=labels)
    assert strat and (labels[te] == 1).sum() == 2 and len(va) == 0
    rare = np.array([0] * 99 + [1])    # one sample of class 1: cannot reach every split
    (_, _, te), strat = d.split_indices(100, 0.2, 0.0, seed=0, labels=rare)
    assert not strat and len(te) == 20
    (_, _, te), strat = d.split_indices(100, 0.2, 0.0, seed=0, labels=None)
    assert not strat and len(te) == 20


def test_load_dataset_split_is_seeded(tmp_path: Path) -> None:
    path = write_npz(tmp_path, image=np.arange(640, dtype=np.float32).reshape(10, 1, 8, 8), label=GOOD_Y)
    first = d.load_dataset(npz(path, test=0.3), IMAGES, tmp_path)
    second = d.load_dataset(npz(path, test=0.3), IMAGES, tmp_path)
    np.testing.assert_array_equal(first.test["image"], second.test["image"])
    seeded = d.load_dataset(train(m.NpzData(kind="npz", path=path.name, test=0.3, val=0.0), seed=5),
                            IMAGES, tmp_path)
    assert not np.array_equal(first.test["image"], seeded.test["image"])
    with pytest.raises(RunError, match="test=0.6 and val=0.5 leave no samples for training"):
        d.load_dataset(npz(path, test=0.6, val=0.5), IMAGES, tmp_path)
    with pytest.raises(RunError, match="has no `data` setting"):
        d.load_dataset(m.Train(), IMAGES, tmp_path)


# ---- batches ----
SPLIT = {"x": np.arange(100), "y": np.arange(100) * 2}


def test_batches_per_epoch_order_is_deterministic() -> None:
    def order(epoch: int, seed: int = 0) -> np.ndarray:
        return np.concatenate([b["x"] for b in d.batches(SPLIT, 10, epoch, seed)])

    assert np.array_equal(order(3), order(3))          # resuming at epoch 3 replays its order
    assert not np.array_equal(order(3), order(4)) and not np.array_equal(order(3), order(3, seed=1))
    assert sorted(order(3)) == list(range(100))
    for b in d.batches(SPLIT, 10, 0, 0):
        np.testing.assert_array_equal(b["y"], b["x"] * 2)


@pytest.mark.parametrize("n, batch, train_sizes", [
    (100, 32, [32, 32, 32]),        # last 4 < 16: dropped
    (100, 40, [40, 40, 20]),        # last 20 >= 20: kept
    (96, 32, [32, 32, 32]),
    (10, 32, [10]),                 # a single short batch is kept
])
def test_last_batch_policy(n: int, batch: int, train_sizes: list[int]) -> None:
    split = {"x": np.arange(n)}
    assert [len(b["x"]) for b in d.batches(split, batch, 0, 0)] == train_sizes
    assert d.batch_count(split, batch) == len(train_sizes)
    assert d.batch_count(split, batch, shuffle=False) == -(-n // batch)
    evaluation = [b["x"] for b in d.batches(split, batch, 0, 0, shuffle=False)]
    np.testing.assert_array_equal(np.concatenate(evaluation), np.arange(n))   # in order, all kept


def test_batches_empty_split_and_bad_size() -> None:
    assert list(d.batches({}, 8, 0, 0)) == []
    with pytest.raises(RunError, match="batch size must be positive"):
        list(d.batches(SPLIT, 0, 0, 0))
