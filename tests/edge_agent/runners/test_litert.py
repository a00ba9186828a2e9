"""The LiteRT runner on a real TFLite model: dynamic batch, output order, clear failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters import convert
from edge_agent.contracts.bundle import read_bundle
from edge_agent.errors import ModelError
from edge_agent.model import load_model
from edge_agent.runners import build_runner
from edge_agent.runners.litert import LiteRtRunner
from tests.converters.conftest import write_csv
from tests.support.models import linear_onnx
from tests.support.processes import program_env
from tests.support.tools import require_module

pytestmark = pytest.mark.tensorflow
WEIGHTS = np.array([1.0, 10.0, 100.0])


@pytest.fixture(scope="module")
def tflite_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TFLite-only bundle of ``score = X @ WEIGHTS + 0.5``, made by the converter."""
    directory = tmp_path_factory.mktemp("litert")
    (directory / "linear.onnx").write_bytes(linear_onnx(WEIGHTS, 0.5))
    rows = np.random.default_rng(0).normal(size=(40, 3))
    write_csv(directory / "r.csv", rows, ["a", "b", "c"])
    convert(
        directory / "linear.onnx", directory / "r.csv", name="lin", version="1",
        output=directory / "lin.bundle", target="tflite",
    )  # fmt: skip
    return directory / "lin.bundle"


def _runner(bundle: Path, threads: int = 1) -> LiteRtRunner:
    return LiteRtRunner(read_bundle(bundle).files["model.tflite"], threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_batches_of_any_size(tflite_bundle: Path, threads: int) -> None:
    runner = _runner(tflite_bundle, threads)
    assert runner.format == "tflite" and runner.input_width == 3
    runner.warmup()
    rng = np.random.default_rng(1)
    for batch in (1, 7, 1, 300, 7):
        rows = rng.normal(size=(batch, 3)).astype(np.float32)
        (scores,) = runner.predict(rows)
        assert scores.shape == (batch, 1)
        assert np.abs(scores[:, 0] - (rows @ WEIGHTS + 0.5)).max() < 1e-3


def test_outputs_follow_the_signature_order(tmp_path: Path) -> None:
    """A classifier network's label comes first, its probabilities second, as in the manifest."""
    torch = require_module("torch", "convert-torch")
    network = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Softmax(dim=-1))
    torch.save(network, tmp_path / "net.pt")
    rows = np.random.default_rng(2).normal(size=(30, 3)).astype(np.float32)
    write_csv(tmp_path / "r.csv", rows, ["a", "b", "c"])
    convert(
        tmp_path / "net.pt", tmp_path / "r.csv", name="net", version="1",
        output=tmp_path / "net.bundle", target="tflite", labels=["w", "x", "y", "z"],
    )  # fmt: skip
    label, probabilities = _runner(tmp_path / "net.bundle").predict(rows)
    assert label.dtype == np.int64 and label.shape == (30,)
    assert probabilities.shape == (30, 4)
    assert label.tolist() == probabilities.argmax(axis=1).tolist()


def test_wrong_width_and_garbage(tflite_bundle: Path) -> None:
    runner = _runner(tflite_bundle)
    with pytest.raises(ModelError, match="expected rows of 3 features"):
        runner.predict(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ModelError, match="LiteRT cannot load the model"):
        LiteRtRunner(b"definitely not a flatbuffer")


def test_build_runner_picks_litert_for_a_tflite_bundle(tflite_bundle: Path) -> None:
    bundle = read_bundle(tflite_bundle)
    assert isinstance(build_runner(bundle), LiteRtRunner)
    assert isinstance(build_runner(bundle, preference="tflite", threads=2), LiteRtRunner)
    with pytest.raises(ModelError, match="runner 'onnx' cannot run any of them"):
        build_runner(bundle, preference="onnx")
    served = load_model(tflite_bundle, expected_features=["a", "b", "c"])
    result = served.predict(np.array([[1, 2, 3]], dtype=np.float32))
    assert result[0]["prediction"] == pytest.approx(321.5, abs=1e-3)


# A device with only the older tflite-runtime package: ai_edge_litert cannot be imported there.
ONLY_TFLITE_RUNTIME = """
import importlib.abc, sys
class NoLiteRt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ai_edge_litert":
            raise ImportError("not on this device")
        return None
sys.meta_path.insert(0, NoLiteRt())
from pathlib import Path
import numpy as np
from edge_agent.errors import ModelError
from edge_agent.model import load_model
try:
    model = load_model(Path(sys.argv[1]))
except ModelError as err:
    print("refused", "tflite_runtime" in sys.modules, err)
    raise SystemExit(0)
[result] = model.predict(np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
print(model.runner.format, "tflite_runtime" in sys.modules, result["score"])
"""


def test_the_runner_falls_back_to_tflite_runtime(tflite_bundle: Path) -> None:
    require_module("tflite_runtime", "dev")
    done = subprocess.run(
        [sys.executable, "-c", ONLY_TFLITE_RUNTIME, str(tflite_bundle)],
        env=program_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outcome, used, rest = done.stdout.strip().split(" ", 2)
    assert used == "True"  # the fallback package was the one tried
    if int(np.__version__.split(".")[0]) >= 2:
        # tflite-runtime 2.14 is built for NumPy 1.x: a clear refusal that says what to install.
        assert outcome == "refused", done.stdout
        assert "built for NumPy 1.x" in rest and "pip install ai-edge-litert" in rest
    else:
        assert outcome == "tflite", done.stdout
        assert abs(float(rest) - (1.0 + 20.0 + 300.0 + 0.5)) < 1e-3
