"""Human-readable summaries of a bundle: what ``convert`` prints when done and ``inspect`` shows."""

from __future__ import annotations

from edge_agent.contracts.manifest import FeatureSpec, ModelManifest, OutputSpec, ParityReport

__all__ = ["describe_bundle", "parity_lines", "size_text"]


def size_text(size: int) -> str:
    for unit in ("B", "kB", "MB"):
        if size < 1000 or unit == "MB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return f"{size} B"  # pragma: no cover - the loop always returns


def _feature(spec: FeatureSpec) -> str:
    details = [spec.unit] if spec.unit else []
    if spec.valid_min is not None or spec.valid_max is not None:
        low = "" if spec.valid_min is None else f"{spec.valid_min:g}"
        high = "" if spec.valid_max is None else f"{spec.valid_max:g}"
        details.append(f"{low}..{high}")
    return spec.name + (f" [{', '.join(details)}]" if details else "")


def _output(spec: OutputSpec) -> str:
    labels = f": {', '.join(spec.labels)}" if spec.labels else ""
    return f"{spec.name} ({spec.kind}{labels})"


def parity_lines(report: ParityReport) -> list[str]:
    """The parity certificate in a few lines, disagreeing rows listed (the first 20)."""
    verdict = "passed" if report.passed else "FAILED"
    errors = [
        f"{name} max error {error:.2g} (tolerance {report.tolerance.get(name, 0):.2g})"
        for name, error in report.max_abs_error.items()
    ]
    if report.label_agreement is not None:
        errors.append(f"labels agree on {report.label_agreement:.2%}")
    lines = [f"parity {report.format or ''}: {verdict} on {report.rows} rows; {'; '.join(errors)}"]
    if report.disagreeing_count:
        shown = ", ".join(str(row) for row in report.disagreeing_rows[:20])
        more = " ..." if report.disagreeing_count > 20 else ""
        lines.append(
            f"  {report.disagreeing_count} disagreeing rows (allowed "
            f"{report.allowed_disagreeing_rows}): {shown}{more}"
        )
    return lines


def describe_bundle(
    manifest: ModelManifest, sizes: dict[str, int], *, signed: bool | None = None
) -> str:
    """A few lines a person reads: model, inputs, outputs, parity, quantization, files."""
    signature = {True: "signed", False: "unsigned", None: ""}[signed]
    lines = [
        f"{manifest.label} from {manifest.source_framework}"
        f" ({', '.join(f'{k} {v}' for k, v in manifest.framework_versions.items())})"
        + (f", {signature}" if signature else ""),
        f"  formats: {', '.join(manifest.formats)}; opset {manifest.opset}; "
        f"quantization {manifest.quantization}; converter {manifest.converter_version}",
        f"  inputs: {', '.join(_feature(spec) for spec in manifest.inputs)}",
        f"  outputs: {', '.join(_output(spec) for spec in manifest.outputs)}",
    ]
    if manifest.window is not None:
        lines.append(f"  window: {manifest.window.mode}, {len(manifest.window.features)} features")
    reports = list(manifest.parity_by_format.values()) or (
        [manifest.parity] if manifest.parity else []
    )
    for report in reports:
        lines.extend(f"  {line}" for line in parity_lines(report))
    for q in manifest.quantization_reports:
        changes = "; ".join(f"{n} max change {v:.2g}" for n, v in q.max_abs_change.items())
        agreement = (
            f"; labels as float model on {q.label_agreement:.2%}"
            if q.label_agreement is not None
            else ""
        )
        lines.append(
            f"  quantization {q.format} {q.method}: {size_text(q.float_bytes)} -> "
            f"{size_text(q.quantized_bytes)}; {changes}{agreement}"
        )
    files = ", ".join(f"{name} {size_text(size)}" for name, size in sorted(sizes.items()))
    lines.append(f"  files: {files}")
    return "\n".join(lines)
