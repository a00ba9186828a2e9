"""``edge-convert``: convert a trained model into a signed model bundle, and check bundles."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.contracts.bundle import (
    SIGNATURE_FILE,
    Bundle,
    BundleError,
    generate_keypair,
    load_public_key,
    read_bundle,
)

__all__ = ["main"]

_EPILOG = """\
examples:
  edge-convert keygen -o fleet
  edge-convert convert model.joblib --reference rows.csv -o press-3.bundle \\
      --name press --version 3 --sign-key fleet.key
  edge-convert convert net.pt --model-class train:PumpNet --labels ok,worn \\
      --reference rows.parquet -o pump-1.bundle --name pump --version 1 --target both
  edge-convert verify press-3.bundle --public-key fleet.pub --golden
  edge-convert inspect press-3.bundle

Loading a pickle (joblib, pickle, a pickled PyTorch module) runs code from the file: convert on a
workstation, from files you trust. Devices never unpickle: bundles hold ONNX, TFLite, JSON, npz.
Exit codes: 0 ok, 1 failure (the message says why), 2 usage.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-convert",
        description=(
            "Convert a trained model to ONNX and/or TFLite, prove it answers like the original "
            "on reference rows, and pack it with its drift baseline and golden vectors into a "
            "versioned, signed model bundle."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _convert_parser(commands)
    keygen = commands.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing bundles",
        description="Write OUT.key (private, mode 600: keep it off devices) and OUT.pub "
        "(public: every agent and the fleet hold it).",
    )
    keygen.add_argument("-o", "--output", type=Path, required=True, help="path prefix: OUT")
    keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
    verify = commands.add_parser(
        "verify",
        help="check a bundle's signature and every file's hash",
        description="Check the signature over the manifest with KEY and every file against its "
        "sha256; with --golden also run the golden vectors on each model the installed runtimes "
        "can run, as the device does before activating it.",
    )
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--public-key", type=Path, required=True, help="Ed25519 public key (PEM)")
    verify.add_argument("--golden", action="store_true", help="also run the golden vectors")
    inspect = commands.add_parser(
        "inspect",
        help="show what a bundle holds",
        description="Show a bundle's manifest: inputs, outputs, parity, quantization and files "
        "(hashes are checked; the signature is checked by verify).",
    )
    inspect.add_argument("bundle", type=Path)
    inspect.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def _convert_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    convert = commands.add_parser(
        "convert",
        help="convert a trained model and write a bundle",
        description=(
            "MODEL is a joblib/pickle file of a scikit-learn estimator or pipeline (LightGBM and "
            "XGBoost models included), a PyTorch file (.pt/.pth: TorchScript, a pickled module, "
            "or a state dict with --model-class), a Keras file (.keras/.h5) or an ONNX file. "
            "Parity is checked on the reference rows; beyond tolerance no bundle is written."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    convert.add_argument("model", type=Path, help="the trained model file")
    convert.add_argument(
        "--reference",
        type=Path,
        required=True,
        help="reference rows: CSV or Parquet with a header naming the features, or .npy "
        "(structured, or plain with --feature-names)",
    )
    convert.add_argument("-o", "--output", type=Path, required=True, help="the bundle to write")
    convert.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    convert.add_argument("--version", required=True, help="model version: 7 or 1.4.2")
    convert.add_argument(
        "--target",
        choices=["onnx", "tflite", "both"],
        default="onnx",
        help="model format(s) to ship; TFLite takes neural networks only",
    )
    convert.add_argument(
        "--quantize",
        choices=["none", "dynamic-int8", "static-int8", "float16"],
        default="none",
        help="static-int8 calibrates on the reference rows; float16 is TFLite only",
    )
    convert.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign with")
    convert.add_argument(
        "--features",
        type=Path,
        help="JSON/TOML file with each feature's unit, valid_min, valid_max (and a window)",
    )
    convert.add_argument(
        "--labels",
        help="comma-separated class labels: the network's output columns are class scores",
    )
    convert.add_argument(
        "--model-class", help="module:Class building the network of a PyTorch state dict"
    )
    convert.add_argument(
        "--model-kwargs", default="{}", help="JSON object of --model-class constructor arguments"
    )
    convert.add_argument(
        "--feature-names", help="comma-separated column names of a plain .npy reference"
    )
    convert.add_argument(
        "--tolerance", type=float, default=1e-4, help="parity tolerance (see docs)"
    )
    convert.add_argument(
        "--tree-row-share",
        type=float,
        default=0.01,
        help="share of rows a tree ensemble may flip on float32 thresholds",
    )
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    convert.add_argument("--json", action="store_true", help="print the manifest as JSON")


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _sizes(bundle: Bundle) -> dict[str, int]:
    return {name: len(data) for name, data in bundle.files.items()}


def _convert(args: argparse.Namespace) -> int:
    from converters.api import convert
    from converters.errors import ConversionError
    from converters.parity import ParityPolicy
    from converters.progress import Progress
    from converters.report import describe_bundle

    try:
        model_kwargs = json.loads(args.model_kwargs)
        if not isinstance(model_kwargs, dict):
            raise ValueError("not an object")
    except ValueError as err:
        print(f"edge-convert: --model-kwargs must be a JSON object ({err})", file=sys.stderr)
        return 2
    try:
        manifest = convert(
            args.model,
            args.reference,
            name=args.name,
            version=args.version,
            output=args.output,
            target=args.target,
            quantize=args.quantize,
            sign_key=args.sign_key,
            features=args.features,
            labels=_split(args.labels),
            model_class=args.model_class,
            model_kwargs=model_kwargs,
            feature_names=_split(args.feature_names),
            policy=ParityPolicy(args.tolerance, args.tree_row_share),
            progress=Progress(0, enabled=not args.quiet),
        )
    except ConversionError as err:
        print(f"edge-convert: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(manifest.model_dump_json(indent=2))
        return 0
    bundle = read_bundle(args.output)
    summary = describe_bundle(manifest, _sizes(bundle), signed=args.sign_key is not None)
    print(f"wrote {args.output}: {summary}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    private = args.output.with_name(args.output.name + ".key")
    public = args.output.with_name(args.output.name + ".pub")
    existing = [str(path) for path in (private, public) if path.exists()]
    if existing and not args.force:
        print(f"edge-convert: {', '.join(existing)} exists; --force overwrites", file=sys.stderr)
        return 1
    private_pem, public_pem = generate_keypair()
    try:
        descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(private_pem)
        os.chmod(private, 0o600)
        public.write_bytes(public_pem)
    except OSError as err:
        print(f"edge-convert: cannot write the key pair: {err}", file=sys.stderr)
        return 1
    print(f"wrote {private} (private: sign with it, keep it off devices) and {public} (public)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        bundle = read_bundle(args.bundle, load_public_key(args.public_key))
    except BundleError as err:
        print(f"edge-convert: verify failed: {err}", file=sys.stderr)
        return 1
    print(
        f"{args.bundle}: {bundle.manifest.label} signature matches {args.public_key}; "
        f"{len(bundle.manifest.files)} files match their sha256"
    )
    if not args.golden:
        return 0
    from converters.verify import run_golden
    from edge_agent.contracts.golden import GoldenError
    from edge_agent.errors import ModelError

    try:
        verdicts = run_golden(bundle)
    except (ModelError, GoldenError) as err:
        print(f"edge-convert: golden vectors cannot run: {err}", file=sys.stderr)
        return 1
    ok = True
    for model_format, verdict in verdicts.items():
        print(
            f"  golden {model_format}: {verdict.describe() if verdict else 'runtime not installed'}"
        )
        ok = ok and (verdict is None or verdict.passed)
    return 0 if ok else 1


def _inspect(args: argparse.Namespace) -> int:
    from converters.report import describe_bundle

    try:
        bundle = read_bundle(args.bundle)
    except BundleError as err:
        print(f"edge-convert: {err}", file=sys.stderr)
        return 1
    signed = bundle.signature is not None
    if args.json:
        sizes = _sizes(bundle)
        if bundle.signature is not None:
            sizes[SIGNATURE_FILE] = len(bundle.signature)
        document = {
            "manifest": bundle.manifest.model_dump(mode="json"),
            "signature_present": signed,
            "sizes": sizes,
        }
        print(json.dumps(document, indent=2))
        return 0
    print(f"{args.bundle}: {describe_bundle(bundle.manifest, _sizes(bundle), signed=signed)}")
    if signed:
        print("  (signature present: check it with edge-convert verify --public-key KEY)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"convert": _convert, "keygen": _keygen, "verify": _verify, "inspect": _inspect}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
