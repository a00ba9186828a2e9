"""Reading reference rows and the features file: good files read, bad ones say what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from converters.errors import ConversionError
from converters.features import read_feature_file
from converters.reference import read_reference


def test_csv_with_missing_cells(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("temperature,vibration\n70.5,0.3\n,0.4\n71,NaN\n", encoding="utf-8")
    reference = read_reference(path)
    assert reference.features == ["temperature", "vibration"]
    assert reference.rows.dtype == np.float32 and reference.rows.shape == (3, 2)
    assert np.isnan(reference.rows[1, 0]) and np.isnan(reference.rows[2, 1])
    assert reference.rows[0, 0] == np.float32(70.5)


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3], "b": [0.5, None, 1.5]}), path)
    reference = read_reference(path)
    assert reference.features == ["a", "b"]
    assert reference.rows[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(reference.rows[1, 1])


def test_npy_structured_and_plain(tmp_path: Path) -> None:
    structured = np.zeros(4, dtype=[("speed", "f8"), ("load", "i4")])
    structured["speed"] = [1, 2, 3, 4]
    np.save(tmp_path / "named.npy", structured)
    reference = read_reference(tmp_path / "named.npy")
    assert reference.features == ["speed", "load"]
    assert reference.rows[:, 0].tolist() == [1, 2, 3, 4]

    np.save(tmp_path / "plain.npy", np.ones((5, 2)))
    with pytest.raises(ConversionError, match="--feature-names"):
        read_reference(tmp_path / "plain.npy")
    assert read_reference(tmp_path / "plain.npy", ["x", "y"]).features == ["x", "y"]
    with pytest.raises(ConversionError, match="2 columns for 3 feature names"):
        read_reference(tmp_path / "plain.npy", ["x", "y", "z"])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", r"is empty: expected a header naming the features"),
        ("header-only.csv", "a,b\n", "expected at least one reference row"),
        ("no-header.csv", "1,2\n3,4\n", "expected a header naming the features first"),
        ("text.csv", "a,b\n1,2\n3,red\n", r"text\.csv:3: expected numbers only.*column b"),
        ("ragged.csv", "a,b\n1,2\n3\n", r"ragged\.csv:3: 1 values for 2 named features"),
        ("repeat.csv", "a,a\n1,2\n", "feature names repeat: a"),
        ("rows.txt", "a\n1\n", "must be CSV, Parquet or .npy"),
    ],
)
def test_bad_csv(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConversionError, match=message):
        read_reference(path)


def test_parquet_with_text_column_names_it(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"a": [1.0], "site": ["north"]}), path)
    with pytest.raises(ConversionError, match=r"not numeric: site \(string"):
        read_reference(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="no such reference file"):
        read_reference(tmp_path / "nowhere.csv")


def test_features_file_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "features.toml"
    toml.write_text(
        '[[features]]\nname = "temperature"\nunit = "degC"\nvalid_min = -20\nvalid_max = 150\n'
        '[window]\nmode = "tumbling"\nlength_s = 10\n'
        'features = [{ name = "temperature", tag = "temperature", aggregation = "mean" }]\n',
        encoding="utf-8",
    )
    described = read_feature_file(toml)
    specs = described.specs_for(["temperature", "pressure"])
    assert (specs[0].unit, specs[0].valid_min, specs[0].valid_max) == ("degC", -20, 150)
    assert specs[1].name == "pressure" and specs[1].unit is None
    assert described.window is not None and described.window.length_s == 10

    path = tmp_path / "features.json"
    path.write_text(json.dumps([{"name": "pressure", "unit": "bar"}]), encoding="utf-8")
    assert read_feature_file(path).specs["pressure"].unit == "bar"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"name": "t", "valid_min": 5, "valid_max": 1}]', r"features\[0\].*valid_min is above"),
        ('[{"name": "t", "colour": "red"}]', r"features\[0\]: colour"),
        ('{"features": [], "extra": 1}', "unknown key extra"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_features_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "features.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConversionError, match=message):
        read_feature_file(path)


def test_features_file_naming_an_unknown_feature(tmp_path: Path) -> None:
    path = tmp_path / "features.json"
    path.write_text('[{"name": "humidity"}]', encoding="utf-8")
    with pytest.raises(ConversionError, match="describes humidity, which the model does not take"):
        read_feature_file(path).specs_for(["temperature"])
