"""Drift across the fleet: merged summaries scored against each model's baseline, worst first.

Merging and scores are the agents' own (``edge_agent.contracts.drift``): PSI (natural log, fixed
epsilon), Jensen-Shannon distance, the KS statistic from the binned CDFs and the mean shift in
baseline standard deviations; levels use each bundle's thresholds. The drift gate
of a rollout compares the new version's mean PSI on the devices that took it with the previous
version's, over the same span of time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from pydantic import ValidationError

from edge_agent.contracts.baseline import Distribution
from edge_agent.contracts.drift import level, merge_summaries, score
from edge_agent.contracts.manifest import DriftThresholds
from edge_agent.contracts.payloads import FeatureSummary
from fleet.registry import DriftRecord, Registry, RolloutRecord

__all__ = ["DriftRow", "drift_gate", "drift_report", "scores"]


@dataclass(frozen=True)
class DriftRow:
    """One feature (or output) of one model version, merged over devices and windows."""

    model: str
    version: str
    name: str
    kind: str  # feature or output
    devices: int
    windows: int
    count: int
    psi: float | None
    js: float | None
    ks: float | None
    mean_shift: float | None
    mean: float
    level: str  # ok, warn, alert, or "no baseline"


def scores(summary: FeatureSummary, baseline: dict[str, object] | None) -> dict[str, float]:
    """PSI, JS, KS and mean shift of ``summary`` against one stored baseline distribution, with
    the agents' own arithmetic (``edge_agent.contracts.drift.score``)."""
    if baseline is None:
        return {}
    try:
        distribution = Distribution.model_validate(baseline)
    except ValidationError:
        return {}
    return score(summary, distribution)


def _level(psi: float | None, thresholds: DriftThresholds) -> str:
    if psi is None:
        return "no baseline"
    return level({"psi": psi}, thresholds)


def _rows(registry: Registry, records: list[DriftRecord]) -> list[DriftRow]:
    groups: dict[tuple[str, str, str, str], list[tuple[str, FeatureSummary]]] = defaultdict(list)
    for record in records:
        for kind, stored in (("feature", record.features), ("output", record.outputs)):
            items = json.loads(stored) if isinstance(stored, str) else stored
            for name, values in items.items():
                key = (record.model, record.model_version, kind, name)
                groups[key].append((record.device, FeatureSummary.model_validate(values)))
    baselines: dict[tuple[str, str], dict[str, object] | None] = {}
    thresholds: dict[tuple[str, str], DriftThresholds] = {}
    rows = []
    for (model, version, kind, name), entries in groups.items():
        if (model, version) not in baselines:
            found = registry.model(model, version)
            baselines[(model, version)] = found.baseline if found is not None else None
            limits = found.manifest.get("drift_thresholds") if found is not None else None
            thresholds[(model, version)] = (
                DriftThresholds.model_validate(limits)
                if isinstance(limits, dict)
                else DriftThresholds()
            )
        baseline = baselines[(model, version)] or {}
        section = baseline.get("features" if kind == "feature" else "outputs")
        reference = section.get(name) if isinstance(section, dict) else None
        try:
            merged = merge_summaries(summary for _device, summary in entries)
        except ValueError:
            continue  # summaries from different baselines under one version: not comparable
        if merged is None:
            continue
        found_scores = scores(merged, reference if isinstance(reference, dict) else None)
        rows.append(
            DriftRow(
                model=model,
                version=version,
                name=name,
                kind=kind,
                devices=len({device for device, _ in entries}),
                windows=len(entries),
                count=merged.count,
                psi=found_scores.get("psi"),
                js=found_scores.get("js"),
                ks=found_scores.get("ks"),
                mean_shift=found_scores.get("mean_shift"),
                mean=merged.mean,
                level=_level(found_scores.get("psi"), thresholds[(model, version)]),
            )
        )
    rows.sort(key=lambda row: (-(row.psi if row.psi is not None else -1.0), row.model, row.name))
    return rows


def drift_report(
    registry: Registry,
    *,
    model: str | None = None,
    site: str | None = None,
    since: float | None = None,
) -> list[DriftRow]:
    """Every feature and output of every matching model version, worst PSI first."""
    return _rows(registry, registry.drift(model=model, site=site, since=since))


def _mean_psi(rows: list[DriftRow]) -> float | None:
    values = [row.psi for row in rows if row.psi is not None and row.kind == "feature"]
    return sum(values) / len(values) if values else None


def drift_gate(
    registry: Registry, rollout: RolloutRecord, devices: list[str], margin: float
) -> str | None:
    """Why the new version drifts more than the previous one by over ``margin``, or None.

    The new version is judged on ``devices`` (those that took it); the previous versions on every
    device still running them, since the rollout started. With no data on either side the gate
    passes: it cannot tell, and the other gates still hold.
    """
    records = registry.drift(model=rollout.model, since=rollout.created)
    new = _mean_psi(
        _rows(
            registry,
            [r for r in records if r.model_version == rollout.version and r.device in devices],
        )
    )
    old = _mean_psi(_rows(registry, [r for r in records if r.model_version != rollout.version]))
    if new is None or old is None:
        return None
    if new > old + margin:
        return (
            f"drift: mean PSI {new:.3f} on {rollout.model}@{rollout.version} against {old:.3f} "
            f"on the previous version (margin {margin:g})"
        )
    return None
