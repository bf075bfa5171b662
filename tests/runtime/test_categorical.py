"""Categories and missing values in csv tables: a string column's vocabulary is learnt on the
training split only, kept in the run (vocab.json, reused by --resume) and compiled into the graph,
so the exported model takes raw strings and maps an unseen one to the unknown slot; an empty or
NaN cell is an error naming the file, line and column unless the spec fills it, with the
training split's mean (checked against numpy) or a constant, baked into the graph."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from rich.console import Console

from dlspec import api, vocab
from dlspec.compiler import compile_model, compile_training
from dlspec.compiler.lower.columns import FillMean, Vocab, key
from dlspec.data import load_all, load_dataset, split_indices
from dlspec.spec import load
from dlspec.spec.errors import RunError, SpecError
from dlspec.training import FitOptions, fit

N = 120
DISTRICTS = ["north", "south", "east", "west"]
SHOP = """
model shop {
  input  district: string[N]
  input  income:   float32[N]
  target price:    float32[N]
  features {
    FEATURES
  }
  head regress(hidden=[8])
  loss mse
}
train {
  data      csv("shop.csv", target=price, test=0.25)
  batch     16
  epochs    EPOCHS
  optimizer adam(lr=0.01)
  seed      0
}
"""
WITH_INDICATOR = """income_missing = missing(income)
    income   = standardize(fill(income, mean))
    district = one_hot(district)"""


def _spec(tmp_path: Path, features: str = WITH_INDICATOR, epochs: int = 2) -> Path:
    path = tmp_path / "shop.dlspec"
    path.write_text(SHOP.replace("FEATURES", features).replace("EPOCHS", str(epochs)))
    return path


def _test_rows() -> np.ndarray:
    """The rows that land in the test split (a regression target: not stratified)."""
    (_, _, test), _ = split_indices(N, 0.25, 0.0, 0)
    return test


def _table(tmp_path: Path, rare: str = "harbour", missing_every: int = 9) -> dict[str, np.ndarray]:
    """A shop.csv whose `rare` district sits in one row of the test split only, with an empty
    district every 13th row and an empty income every `missing_every`th."""
    rng = np.random.default_rng(0)
    district = rng.choice(DISTRICTS, N).astype(object)
    district[_test_rows()[0]] = rare
    district[::13] = ""
    income = np.round(rng.uniform(1, 10, N), 4)  # as the csv holds it
    income[::missing_every] = np.nan
    offset = {"north": 10.0, "south": -10.0, "east": 0.0, "west": 5.0, rare: 3.0, "": 0.0}
    price = 3 * np.nan_to_num(income, nan=5.0) + np.array([offset[d] for d in district])
    lines = ["district,income,price"] + [f"{d},{'' if math.isnan(i) else f'{i:.4f}'},{p:.4f}"
                                         for d, i, p in zip(district, income, price)]
    (tmp_path / "shop.csv").write_text("\n".join(lines) + "\n")
    return {"district": district, "income": income.astype(np.float32), "price": price}


def _train(spec: Path, out: Path, resume: bool = False, epochs: int | None = None) -> str:
    buf = io.StringIO()
    fit(load(spec), spec, None, FitOptions(out=out, threads=1, resume=resume, epochs=epochs),
        Console(file=buf, width=200))
    return buf.getvalue()


def test_the_vocabulary_and_the_fill_mean_come_from_the_training_split(tmp_path: Path) -> None:
    table = _table(tmp_path)
    prog = load(_spec(tmp_path))
    data = load_dataset(prog.train("shop") or pytest.fail(), prog.model(), tmp_path)
    assert data.train["district"].dtype == object and "harbour" in data.test["district"]
    fitted = vocab.fit(prog.model(), data.train)
    words = fitted[key("vocab", "district")]
    assert isinstance(words, Vocab) and words.words == tuple(DISTRICTS[i] for i in (2, 0, 1, 3))  # sorted
    assert "harbour" not in words.words and "" not in words.words  # test-only, and empty: unknown
    train_rows = np.setdiff1d(np.arange(N), _test_rows())
    mean = fitted[key("fill", "income")]
    assert isinstance(mean, FillMean)
    np.testing.assert_allclose(mean.value, np.nanmean(table["income"][train_rows].astype(np.float64)),
                               rtol=1e-12)
    assert mean.value != pytest.approx(float(np.nanmean(table["income"])), rel=1e-9)  # not the whole file's
    # the indices the training graphs take: word i is i + 1, anything else 0
    encoded = vocab.encode_split(data.test, fitted)["district"]
    want = [words.words.index(w) + 1 if w in words.words else 0 for w in data.test["district"]]
    np.testing.assert_array_equal(encoded, want)


def test_the_compiled_lookup_agrees_with_the_runtime_encoding(tmp_path: Path) -> None:
    """model.onnx looks the strings up in the graph; the training graphs take the indices that
    vocab.encode_split gives: the same weights give the same predictions."""
    _table(tmp_path)
    prog = load(_spec(tmp_path))
    data = load_dataset(prog.train("shop") or pytest.fail(), prog.model(), tmp_path)
    fitted = vocab.fit(prog.model(), data.train)
    tg = compile_training(prog, moments=fitted)
    cpu = ["CPUExecutionProvider"]
    inference = ort.InferenceSession(tg.inference.onnx.SerializeToString(), providers=cpu)
    evaluate = ort.InferenceSession(tg.evaluate.SerializeToString(), providers=cpu)
    raw = {k: data.test[k] for k in ("district", "income")}
    encoded = vocab.encode_split(data.test, fitted)
    params = {i.name: tg.init[i.name] for i in evaluate.get_inputs() if i.name in tg.init}
    got = inference.run(None, raw)[0]
    want = evaluate.run(None, {**params, **{k: encoded[k] for k in ("district", "income", "price")}})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # the one-hot columns differ between districts: the lookup is not a constant
    assert len(np.unique(np.round(got, 5))) > len(DISTRICTS)


def test_a_trained_run_keeps_its_vocabulary_and_the_export_takes_raw_strings(tmp_path: Path) -> None:
    _table(tmp_path)
    spec = _spec(tmp_path)
    printed = _train(spec, tmp_path / "run")
    assert "categories of district: 4" in printed and "fill(income, mean)" in printed
    saved = json.loads((tmp_path / "run" / "vocab.json").read_text())
    assert saved["vocab"] == {"district": ["east", "north", "south", "west"]}
    exported = api.export(tmp_path / "run")
    meta = {p.key: p.value for p in exported.metadata_props}
    assert json.loads(meta["vocab"]) == saved["vocab"] and json.loads(meta["fill"]) == saved["fill"]
    sess = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in sess.get_inputs()}
    assert types == {"district": "tensor(string)", "income": "tensor(float)"}
    income = np.array([2.0, 2.0, 2.0, np.nan, saved["fill"]["income"]], np.float32)
    out = sess.run(None, {"district": np.array(["north", "harbour", "", "north", "north"], object),
                          "income": income})[0]
    assert out[1] == out[2] != out[0]  # unseen at predict time: the unknown slot, as an empty cell
    assert out[3] != out[4]  # the missing indicator: a filled NaN is not the same row as the mean
    assert np.isfinite(out).all()


def test_fill_without_an_indicator_puts_the_mean_or_the_constant_in_place(tmp_path: Path) -> None:
    _table(tmp_path)
    for how, value in (("mean", None), ("0", 0.0), ("-2.5", -2.5)):
        prog = load(_spec(tmp_path, f"income = fill(income, {how})\n    district = one_hot(district)"))
        data = load_dataset(prog.train("shop") or pytest.fail(), prog.model(), tmp_path)
        fitted = vocab.fit(prog.model(), data.train)
        if value is None:
            value = float(np.nanmean(data.train["income"].astype(np.float64)))
        else:
            assert key("fill", "income") not in fitted  # a constant needs nothing learnt
        sess = ort.InferenceSession(compile_model(prog, stats=fitted).onnx.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        district = np.array(["north", "west"], object)
        filled = sess.run(None, {"district": district, "income": np.array([np.nan, np.nan], np.float32)})[0]
        given = sess.run(None, {"district": district, "income": np.full(2, value, np.float32)})[0]
        np.testing.assert_array_equal(filled, given)


def test_resume_reads_the_saved_vocabulary(tmp_path: Path) -> None:
    _table(tmp_path)
    spec = _spec(tmp_path, epochs=1)
    _train(spec, tmp_path / "run")
    before = (tmp_path / "run" / "vocab.json").read_text()
    # a new district in the training rows now: a fresh fit would learn it, a resumed run must not
    text = (tmp_path / "shop.csv").read_text().replace("\nnorth,", "\nuptown,", 1)
    (tmp_path / "shop.csv").write_text(text)
    printed = _train(spec, tmp_path / "run", resume=True, epochs=2)
    assert "categories of district" not in printed
    assert (tmp_path / "run" / "vocab.json").read_text() == before
    prog = load(spec)
    data = load_dataset(prog.train("shop") or pytest.fail(), prog.model(), tmp_path)
    fresh = vocab.fit(prog.model(), data.train)[key("vocab", "district")]
    assert isinstance(fresh, Vocab) and "uptown" in fresh.words


def test_a_missing_cell_without_a_fill_rule_names_file_line_and_column(tmp_path: Path) -> None:
    _table(tmp_path)
    prog = load(_spec(tmp_path, "income = standardize(income)\n    district = one_hot(district)"))
    with pytest.raises(RunError) as err:
        load_dataset(prog.train("shop") or pytest.fail(), prog.model(), tmp_path)
    message = str(err.value)
    assert f"{tmp_path / 'shop.csv'}: input 'income': missing value at line 2" in message, message
    assert "income = fill(income, mean)" in message and "missing(income)" in message
    (tmp_path / "shop.csv").write_text("district,income,price\nnorth,nan,1\nsouth,2,3\n")
    with pytest.raises(RunError, match=r"shop.csv: input 'income': NaN at line 2; a spec fills"):
        load_all(str(tmp_path / "shop.csv"), prog.model())


def test_a_column_without_a_training_value_cannot_be_filled_with_its_mean(tmp_path: Path) -> None:
    _table(tmp_path, missing_every=1)
    spec = _spec(tmp_path)
    with pytest.raises(RunError, match=r"fill\(income, mean\): every value of 'income' on the training "
                                       r"split is missing"):
        _train(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()


SPEC_ERRORS = {
    "raw string in arithmetic": ("x = district * 2\n    district = one_hot(district)",
                                 "'district' is a category (string[N]); read it as numbers with one_hot"),
    "string not replaced": ("income = fill(income, 0)",
                            "input 'district' is a category (string[N]) and the network takes numbers"),
    "raw nan input": ("x = income * 2\n    income = fill(income, 0)\n    district = one_hot(district)",
                      "'income' may hold missing values"),
    "filled input not replaced": ("y = fill(income, mean)\n    district = one_hot(district)",
                                  "input 'income' may hold missing values (fill reads it): replace it"),
    "one_hot of a number": ("income = one_hot(income)\n    district = one_hot(district)",
                            "one_hot(income): 'income' is float32; one_hot reads a category"),
    "fill of a string": ("district = fill(district, 0)", "fill(district): 'district' is string"),
    "fill how": ("income = fill(income, median)\n    district = one_hot(district)",
                 "fill takes `mean` (the training split's mean of the present values) or a number"),
    "not an input": ("income = fill(incme, 0)\n    district = one_hot(district)",
                     "'incme' is not an input of the model (did you mean 'income'?)"),
    "arity": ("district = one_hot(district, 3)", "one_hot takes one_hot(x), x the name of an input"),
}


@pytest.mark.parametrize("case", SPEC_ERRORS, ids=list(SPEC_ERRORS))
def test_columns_are_read_through_their_functions(tmp_path: Path, case: str) -> None:
    features, message = SPEC_ERRORS[case]
    with pytest.raises(SpecError) as err:
        compile_model(load(_spec(tmp_path, features)))
    assert message in str(err.value) and "shop.dlspec:" in str(err.value), str(err.value)


def test_a_string_target_is_refused_where_it_is_declared(tmp_path: Path) -> None:
    text = SHOP.replace("target price:    float32[N]", "target price:    string[N]")
    (tmp_path / "s.dlspec").write_text(text.replace("FEATURES", "district = one_hot(district)")
                                       .replace("EPOCHS", "1"))
    with pytest.raises(SpecError, match=r"s.dlspec:5:20: error: 'price' is string\[N\]: strings are "):
        compile_model(load(tmp_path / "s.dlspec"))


def test_without_data_every_category_is_unknown(tmp_path: Path) -> None:
    """Compiled with no vocabulary (dlspec compile, check): one_hot has the unknown column alone."""
    c = compile_model(load(_spec(tmp_path)))
    sess = ort.InferenceSession(c.onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    out = [sess.run(None, {"district": np.array([d], object), "income": np.array([1.0], np.float32)})[0]
           for d in ("north", "south", "")]
    assert out[0] == out[1] == out[2]


EMBEDDED = """
model shop {
  input  district: string[N]
  target price:    float32[N]
  features {
    district = index(district)
  }
  backbone {
    emb: embedding(ROWS, 4) -> flatten
  }
  head regress(hidden=[8])
  loss mse
}
train {
  data      csv("shop.csv", target=price, test=0.25)
  batch     16
  epochs    1
  optimizer adam(lr=0.01)
  seed      0
}
"""


def test_an_embedding_smaller_than_its_vocabulary_is_refused_before_training(tmp_path: Path) -> None:
    """index(district) holds 0 (unknown) to 4 (the training split's 4 districts): embedding(4, ...)
    would clamp id 4 onto id 3's row, so training stops at compilation, naming the layer's place
    and the size needed; without data (dlspec check) the vocabulary is unknown and nothing is."""
    _table(tmp_path)
    spec = tmp_path / "shop.dlspec"
    spec.write_text(EMBEDDED.replace("ROWS", "4"))
    with pytest.raises(SpecError) as err:
        _train(spec, tmp_path / "run")
    assert ("shop.dlspec:9:10: error: backbone.emb.embedding1: embedding(4, 4) reads index(district), which "
            "has 5 ids (4 categories of district on the training split and the unknown slot, 0): use "
            "embedding(5, 4) or more") in str(err.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "model.onnx").exists()
    compile_model(load(spec))  # dlspec check, compile: no vocabulary to check against
    spec.write_text(EMBEDDED.replace("ROWS", "5"))
    _train(spec, tmp_path / "run")


def test_an_unseen_category_reads_the_unknown_row_of_the_embedding(tmp_path: Path) -> None:
    """The deployed model looks strings up in the training split's vocabulary: a district it never
    saw, and an empty cell, both read row 0, so no id can pass the table at predict time."""
    _table(tmp_path)
    spec = tmp_path / "shop.dlspec"
    spec.write_text(EMBEDDED.replace("ROWS", "5"))
    _train(spec, tmp_path / "run")
    sess = ort.InferenceSession(str(tmp_path / "run" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = ["harbour", "", "atlantis", *DISTRICTS]
    out = sess.run(None, {"district": np.array(names, object)})[0]
    assert out[0] == out[1] == out[2]
    assert len(np.unique(out[2:])) == len(DISTRICTS) + 1  # every known district has a row of its own


def test_a_string_input_reads_text_arrays_from_an_npz_alike_and_refuses_numbers(tmp_path: Path) -> None:
    """Training and eval refused a str array ('not numeric; string expected'), crashed on an
    int64 one, and predict read a bytes array as one unknown category."""
    table = _table(tmp_path)
    full, income = [d or "north" for d in table["district"]], np.nan_to_num(table["income"], nan=5.0)
    np.savez(tmp_path / "shop.npz", district=np.array(full), income=income, price=table["price"])
    spec = tmp_path / "shop.dlspec"
    spec.write_text(SHOP.replace('csv("shop.csv", target=price, test=0.25)', 'npz("shop.npz", test=0.25)')
                    .replace("FEATURES", "district = one_hot(district)").replace("EPOCHS", "2"))
    _train(spec, tmp_path / "run")
    model = tmp_path / "run" / "model.onnx"
    rows = {"district": np.array(full[:6]), "income": income[:6]}
    as_text = api.predict(model, rows)["prediction"]
    encoded = np.array([d.encode() for d in full[:6]])
    as_bytes = api.predict(model, {**rows, "district": encoded})["prediction"]
    np.testing.assert_array_equal(as_text, as_bytes)
    assert len(set(np.round(as_text, 4))) > 1  # the districts are told apart, not all unknown
    np.savez(tmp_path / "shop.npz", district=np.arange(N), income=income, price=table["price"])
    with pytest.raises(RunError, match="input 'district': is a string input, and the array holds int64"):
        _train(spec, tmp_path / "again")
    with pytest.raises(RunError, match="input 'district': is a string input, and the array holds int64"):
        api.predict(model, {**rows, "district": np.arange(6)})
