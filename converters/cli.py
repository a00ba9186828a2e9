"""``edge-convert``: convert a trained model into a model bundle for the edge agent."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.contracts.bundle import BundleError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-convert",
        description=(
            "Convert a trained model to ONNX, prove it answers like the original on reference "
            "rows, and pack it into a versioned, optionally signed model bundle. "
            "Loading a pickle runs code: use this on a workstation, never on a device."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    convert = commands.add_parser(
        "convert",
        help="convert MODEL (a joblib/pickle of a scikit-learn estimator or pipeline) to a bundle",
        description="Convert a model and write a bundle.",
    )
    convert.add_argument("model", type=Path, help="the trained model file")
    convert.add_argument(
        "--reference",
        type=Path,
        required=True,
        help="CSV of reference rows, header naming features",
    )
    convert.add_argument("-o", "--output", type=Path, required=True, help="the bundle to write")
    convert.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    convert.add_argument("--version", required=True, help="model version: 7 or 1.4.2")
    convert.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign with")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from converters.api import ConversionError, convert

    try:
        manifest = convert(
            args.model,
            args.reference,
            name=args.name,
            version=args.version,
            output=args.output,
            sign_key=args.sign_key,
        )
    except (ConversionError, BundleError, ValueError) as err:
        print(f"edge-convert: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {manifest.label}, inputs {', '.join(manifest.feature_names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
