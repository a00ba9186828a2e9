"""``edge-convert`` as a person runs it: keys, convert, verify, inspect, and every bad input."""

from __future__ import annotations

import json
import stat
import subprocess
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edge_agent.contracts.bundle import read_bundle
from tests.converters.conftest import Dataset, write_csv
from tests.support.processes import run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, iris: Dataset) -> Path:
    """A trained pipeline, its reference rows and a key pair, made once for the module."""
    directory = tmp_path_factory.mktemp("cli")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(iris.x, iris.y)
    joblib.dump(model, directory / "model.joblib")
    joblib.dump(
        RandomForestClassifier(n_estimators=5).fit(iris.x, iris.y), directory / "forest.joblib"
    )
    iris.csv(directory / "reference.csv")
    result = run("edge-convert", "keygen", "-o", str(directory / "fleet"))
    assert result.returncode == 0, result.stderr
    return directory


def _run_convert(
    model: Path, reference: Path, output: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run(
        "edge-convert", "convert", str(model), "--reference", str(reference), "-o", str(output),
        "--name", "iris", "--version", "4", *extra,
    )  # fmt: skip


def _convert(workdir: Path, output: Path, *extra: str) -> Path:
    result = _run_convert(workdir / "model.joblib", workdir / "reference.csv", output, *extra)
    assert result.returncode == 0, result.stderr
    return output


def _rewrite(path: Path, name: str, change: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    files[name] = change
    with zipfile.ZipFile(path, "w") as archive:
        for n, data in files.items():
            archive.writestr(n, data)


def test_keygen_keeps_the_private_key_private(workdir: Path) -> None:
    private = workdir / "fleet.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in (workdir / "fleet.pub").read_bytes()
    again = run("edge-convert", "keygen", "-o", str(workdir / "fleet"))
    assert again.returncode == 1 and "--force" in again.stderr


def test_convert_signed_shows_progress_and_summary(workdir: Path, tmp_path: Path) -> None:
    output = tmp_path / "iris-4.bundle"
    key = ("--sign-key", str(workdir / "fleet.key"))
    result = _run_convert(workdir / "model.joblib", workdir / "reference.csv", output, *key)
    assert result.returncode == 0, result.stderr
    assert "[4/7] exporting to ONNX ... " in result.stderr
    assert "[7/7] writing" in result.stderr
    assert f"wrote {output}: iris@4 from scikit-learn" in result.stdout
    assert "parity onnx: passed on 150 rows" in result.stdout
    bundle = read_bundle(output)
    assert sorted(bundle.files) == ["baseline.json", "golden.npz", "model.onnx"]
    assert bundle.signature is not None


def test_verify_accepts_the_right_key_and_runs_golden_vectors(
    workdir: Path, tmp_path: Path
) -> None:
    output = _convert(workdir, tmp_path / "b.bundle", "--sign-key", str(workdir / "fleet.key"))
    result = run(
        "edge-convert",
        "verify",
        str(output),
        "--public-key",
        str(workdir / "fleet.pub"),
        "--golden",
    )
    assert result.returncode == 0, result.stderr
    assert "signature matches" in result.stdout
    assert "golden onnx: golden vectors: all 32 rows agree" in result.stdout


def test_verify_names_the_tampered_model_file(workdir: Path, tmp_path: Path) -> None:
    output = _convert(workdir, tmp_path / "b.bundle", "--sign-key", str(workdir / "fleet.key"))
    model = bytearray(read_bundle(output).files["model.onnx"])
    model[len(model) // 2] ^= 0x01
    _rewrite(output, "model.onnx", bytes(model))
    result = run("edge-convert", "verify", str(output), "--public-key", str(workdir / "fleet.pub"))
    assert result.returncode == 1
    assert "model.onnx does not match its sha256" in result.stderr


def test_verify_refuses_an_edited_manifest(workdir: Path, tmp_path: Path) -> None:
    output = _convert(workdir, tmp_path / "b.bundle", "--sign-key", str(workdir / "fleet.key"))
    manifest = json.loads(read_bundle(output).manifest_bytes)
    manifest["inputs"][0]["valid_max"] = 1000.0
    _rewrite(output, "manifest.json", json.dumps(manifest).encode())
    result = run("edge-convert", "verify", str(output), "--public-key", str(workdir / "fleet.pub"))
    assert result.returncode == 1
    assert "signature does not match the manifest" in result.stderr


def test_verify_refuses_a_wrong_key_and_an_unsigned_bundle(workdir: Path, tmp_path: Path) -> None:
    assert run("edge-convert", "keygen", "-o", str(tmp_path / "other")).returncode == 0
    signed = _convert(workdir, tmp_path / "s.bundle", "--sign-key", str(workdir / "fleet.key"))
    wrong = run("edge-convert", "verify", str(signed), "--public-key", str(tmp_path / "other.pub"))
    assert wrong.returncode == 1 and "signature does not match" in wrong.stderr
    unsigned = _convert(workdir, tmp_path / "u.bundle")
    plain = run("edge-convert", "verify", str(unsigned), "--public-key", str(workdir / "fleet.pub"))
    assert plain.returncode == 1 and "is not signed" in plain.stderr


def test_inspect_human_and_json(workdir: Path, tmp_path: Path) -> None:
    output = _convert(workdir, tmp_path / "b.bundle", "--sign-key", str(workdir / "fleet.key"))
    human = run("edge-convert", "inspect", str(output), check=True).stdout
    assert "iris@4 from scikit-learn" in human and "signed" in human
    assert "inputs: sepal_length, sepal_width, petal_length, petal_width" in human
    assert "outputs: label (label: 0, 1, 2), probabilities (probabilities: 0, 1, 2)" in human
    document = json.loads(run("edge-convert", "inspect", str(output), "--json", check=True).stdout)
    assert document["signature_present"] is True
    assert document["manifest"]["parity"]["passed"] is True
    assert document["manifest"]["opset"] == 17
    assert set(document["sizes"]) == {"model.onnx", "baseline.json", "golden.npz", "signature"}


def test_a_features_file_puts_units_ranges_and_a_window_in_the_manifest(
    workdir: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "features.toml"
    spec.write_text(
        '[[features]]\nname = "petal_length"\nunit = "cm"\nvalid_min = 0\nvalid_max = 10\n'
        '[window]\nmode = "sliding"\nlength_s = 10\nhop_s = 2\nfeatures = [\n'
        + "".join(
            f'  {{ name = "{name}", tag = "{name.split("_")[0]}", aggregation = "{agg}" }},\n'
            for name, agg in [
                ("sepal_length", "mean"),
                ("sepal_width", "max"),
                ("petal_length", "last"),
                ("petal_width", "rms"),
            ]
        )
        + "]\n",
        encoding="utf-8",
    )
    output = _convert(workdir, tmp_path / "windowed.bundle", "--features", str(spec))
    manifest = read_bundle(output).manifest
    petal = manifest.inputs[manifest.feature_names.index("petal_length")]
    assert (petal.unit, petal.valid_min, petal.valid_max) == ("cm", 0, 10)
    assert manifest.window is not None
    assert (manifest.window.mode, manifest.window.length_s, manifest.window.hop_s) == (
        "sliding",
        10,
        2,
    )
    assert [(f.tag, f.aggregation) for f in manifest.window.features] == [
        ("sepal", "mean"),
        ("sepal", "max"),
        ("petal", "last"),
        ("petal", "rms"),
    ]
    human = run("edge-convert", "inspect", str(output), check=True).stdout
    assert "window: sliding, 4 features" in human and "petal_length [cm, 0..10]" in human


def test_quiet_conversion_of_a_tree_states_its_policy(workdir: Path, tmp_path: Path) -> None:
    output = tmp_path / "forest.bundle"
    result = _run_convert(workdir / "forest.joblib", workdir / "reference.csv", output, "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet
    assert "tree ensemble" in read_bundle(output).manifest.parity.policy  # type: ignore[union-attr]


def _bad(workdir: Path, tmp_path: Path, model: Path, reference: Path, *extra: str) -> str:
    output = tmp_path / "bad.bundle"
    result = _run_convert(model, reference, output, "-q", *extra)
    assert result.returncode == 1, result.stdout
    assert not output.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-convert: "), result.stderr
    return lines[0]


def test_unreadable_model_files(workdir: Path, tmp_path: Path) -> None:
    reference = workdir / "reference.csv"
    garbage = tmp_path / "model.joblib"
    garbage.write_bytes(b"\x80\x05not really a pickle")
    assert "cannot load" in _bad(workdir, tmp_path, garbage, reference)
    text = tmp_path / "notes.pkl"
    text.write_text("import os\n")
    assert "is not a joblib/pickle file" in _bad(workdir, tmp_path, text, reference)
    empty = tmp_path / "empty.joblib"
    empty.write_bytes(b"")
    assert "is empty; expected a joblib/pickle file" in _bad(workdir, tmp_path, empty, reference)
    broken_onnx = tmp_path / "model.onnx"
    broken_onnx.write_bytes(b"\x01\x02\x03")
    assert "not a readable ONNX model" in _bad(workdir, tmp_path, broken_onnx, reference)
    missing = tmp_path / "nowhere.joblib"
    assert "no such model file" in _bad(workdir, tmp_path, missing, reference)
    joblib.dump({"weights": [1, 2]}, tmp_path / "dict.joblib")
    assert "builtins.dict is not a joblib" in _bad(
        workdir, tmp_path, tmp_path / "dict.joblib", reference
    )


def test_feature_count_mismatch(workdir: Path, tmp_path: Path, iris: Dataset) -> None:
    wide = np.hstack([iris.x, iris.x])
    model = LogisticRegression(max_iter=500).fit(wide[:, :6], iris.y)  # wants 6 features
    joblib.dump(model, tmp_path / "six.joblib")
    reference = write_csv(tmp_path / "eight.csv", wide, [f"f{i}" for i in range(8)])
    line = _bad(workdir, tmp_path, tmp_path / "six.joblib", reference)
    assert "the model wants 6 features but" in line and "has 8" in line


def test_non_numeric_and_empty_reference(workdir: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.csv"
    text.write_text("sepal_length,sepal_width,petal_length,petal_width\n5,3,1,0.2\n5,3,1,small\n")
    line = _bad(workdir, tmp_path, workdir / "model.joblib", text)
    assert "text.csv:3: expected numbers only" in line and "petal_width" in line
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    line = _bad(workdir, tmp_path, workdir / "model.joblib", empty)
    assert "is empty: expected a header naming the features" in line


def test_trees_to_tflite_are_refused_naming_onnx(workdir: Path, tmp_path: Path) -> None:
    line = _bad(
        workdir,
        tmp_path,
        workdir / "forest.joblib",
        workdir / "reference.csv",
        "--target",
        "tflite",
    )
    assert "RandomForestClassifier" in line and "use --target onnx" in line


def test_bad_name_and_version(workdir: Path, tmp_path: Path) -> None:
    reference = workdir / "reference.csv"
    line = _bad(workdir, tmp_path, workdir / "model.joblib", reference, "--version", "v1")
    assert "neither a whole number" in line


def test_help_teaches_every_command() -> None:
    top = run("edge-convert", "--help", check=True).stdout
    for command in ("convert", "keygen", "verify", "inspect"):
        assert command in top
    assert "runs code" in top  # the pickle warning
    convert_help = run("edge-convert", "convert", "--help", check=True).stdout
    for option in ("--target", "--quantize", "--features", "--labels", "--model-class"):
        assert option in convert_help
