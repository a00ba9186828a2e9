"""Window builders: turn readings into the feature rows a model was trained on. Pure logic, no I/O.

Time comes in through the arguments (``now``), never from a clock read here, so that every
builder can be tested without waiting. Every choice a builder makes about a sample or a window
(late, out of order, bad quality, a missing tag filled or skipped) is reported through ``count``.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, get_args

from edge_agent.contracts.manifest import Aggregation, ModelManifest, WindowFeature
from edge_agent.errors import ConfigError, InputRejected
from edge_agent.sources.base import Quality, Reading, Sample

if TYPE_CHECKING:
    from edge_agent.config import WindowsConfig

__all__ = [
    "AGGREGATIONS",
    "FeatureWindowBuilder",
    "LatePolicy",
    "MissingPolicy",
    "RowWindowBuilder",
    "Window",
    "WindowBuilder",
    "WindowMode",
    "aggregate",
    "build_window_builder",
    "features_from_names",
]

WindowMode = Literal["tumbling", "sliding", "count", "snapshot"]
LatePolicy = Literal["drop", "current"]
MissingPolicy = Literal["skip", "last", "baseline"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)

Count = Callable[[str, int], None]
# Told the model features a row or a window had no value for (refused, skipped or filled), for
# the drift summaries' ``missing`` counts.
Missing = Callable[[list[str]], None]


def _ignore(name: str, amount: int) -> None:
    pass


def _ignore_missing(features: list[str]) -> None:
    pass


@dataclass(slots=True)
class Window:
    """One model input row for one asset, and the readings it was built from (to acknowledge)."""

    asset: str
    end: float  # seconds since the epoch: the window's end, or the reading's time
    values: list[float]  # in the model's feature order
    readings: list[Reading] = field(default_factory=list, repr=False)


class WindowBuilder(Protocol):
    """Builds windows from readings. Called from one task only; never blocks, never does I/O.

    A reading that ``add`` does not return inside a window is finished with once ``add`` returns
    (its samples are in the builder's state): the caller acknowledges it at once.
    """

    def add(self, reading: Reading, now: float) -> list[Window]:
        """Take one reading; return the windows it completed. Raise InputRejected to refuse it."""
        ...

    def poll(self, now: float) -> list[Window]:
        """Return windows that time alone completed (called periodically)."""
        ...


class RowWindowBuilder:
    """Each reading is one complete row: it must carry every feature. Extra tags are ignored."""

    def __init__(self, features: list[str], on_missing: Missing = _ignore_missing) -> None:
        if not features:
            raise ValueError("a model needs at least one feature")
        self.features = list(features)
        self._on_missing = on_missing

    def add(self, reading: Reading, now: float) -> list[Window]:
        values = {sample.tag: sample.value for sample in reading.samples}
        missing = [name for name in self.features if name not in values]
        if missing:
            self._on_missing(missing)
            raise InputRejected(
                "missing_feature",
                f"missing {', '.join(missing)} (the model needs {', '.join(self.features)})",
            )
        end = max(sample.ts for sample in reading.samples)
        return [Window(reading.asset, end, [values[name] for name in self.features], [reading])]

    def poll(self, now: float) -> list[Window]:
        return []


def features_from_names(names: Sequence[str]) -> list[WindowFeature]:
    """Read window features from model input names: ``vibration_rms`` is the rms of ``vibration``;
    a name without a known aggregation suffix is the last value of the tag of that name."""
    features = []
    for name in names:
        tag, _, suffix = name.rpartition("_")
        if tag and suffix in AGGREGATIONS:
            features.append(WindowFeature(name=name, tag=tag, aggregation=suffix))
        else:
            features.append(WindowFeature(name=name, tag=name, aggregation="last"))
    return features


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float]) -> float:
    mean = _mean(values)
    return math.sqrt(sum((v - mean) * (v - mean) for v in values) / len(values))


def _slope(points: Sequence[tuple[float, float]]) -> float:
    times = [ts for ts, _value in points]
    t_mean = _mean(times)
    v_mean = _mean([value for _ts, value in points])
    spread = sum((t - t_mean) * (t - t_mean) for t in times)
    if spread == 0:
        return 0.0
    return sum((t - t_mean) * (v - v_mean) for t, v in points) / spread


_OVER_VALUES: dict[str, Callable[[list[float]], float]] = {
    "last": lambda values: values[-1],
    "mean": _mean,
    "std": _std,
    "min": min,
    "max": max,
    "rms": lambda values: math.sqrt(sum(v * v for v in values) / len(values)),
    "p2p": lambda values: max(values) - min(values),
}


def aggregate(aggregation: str, points: Sequence[tuple[float, float]]) -> float:
    """One aggregation over ``(ts, value)`` points sorted by time (at least one point, except
    for ``count``). ``std`` is the population standard deviation; ``slope`` is the least-squares
    change per second (0 for a single point or a single instant)."""
    if aggregation == "count":
        return float(len(points))
    if aggregation == "slope":
        return _slope(points)
    try:
        over_values = _OVER_VALUES[aggregation]
    except KeyError:
        raise ValueError(f"unknown aggregation {aggregation!r}") from None
    return over_values([value for _ts, value in points])


@dataclass(slots=True)
class _Asset:
    """What the builder keeps per asset: samples per tag (time-sorted) and the last value seen."""

    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    last: dict[str, tuple[float, float]] = field(default_factory=dict)
    prior: dict[str, tuple[float, float]] = field(default_factory=dict)  # newest sample pruned
    next_start: float | None = None  # time windows: start of the oldest window not yet emitted
    watermark: float = -math.inf  # newest sample time seen
    triggers: int = 0  # count mode: trigger-tag samples since the last window
    closed_until: float = -math.inf  # count mode: end of the last window emitted


class FeatureWindowBuilder:
    """Feature windows per asset from tags that arrive at different rates.

    Modes:

    - ``tumbling`` / ``sliding``: windows ``[start, start + length_s)`` starting at multiples of
      ``hop_s`` (tumbling: ``hop_s = length_s``), in sample time. A window closes once a sample
      at or after ``end + allowed_lateness_s`` arrives for its asset, or once ``now`` passes that
      point (so a silent asset still gets its window). A window with no sample at all is not
      emitted (``windows.empty``); the first window of an asset may be partial.
    - ``count``: a window every ``count`` samples of ``trigger_tag``, over the samples of every
      tag up to that trigger sample.
    - ``snapshot``: on every sample of ``trigger_tag`` (or every reading without one), the latest
      value of every tag; features use ``last``.

    Policies, each counted: a sample older than the windows still open is ``late`` and is either
    dropped or put in the oldest open window (``late``); a sample of bad quality is dropped; a tag
    with no sample in a window (``missing``) skips the window, or takes the tag's last value if it
    is at most ``max_age_s`` older than the window end, or takes the feature's baseline mean.
    """

    def __init__(
        self,
        features: Sequence[WindowFeature],
        *,
        mode: WindowMode,
        length_s: float | None = None,
        hop_s: float | None = None,
        count: int | None = None,
        trigger_tag: str | None = None,
        allowed_lateness_s: float = 1.0,
        late: LatePolicy = "drop",
        missing: MissingPolicy = "skip",
        max_age_s: float = 60.0,
        baseline_means: dict[str, float] | None = None,
        use_uncertain: bool = True,
        max_samples_per_tag: int = 100_000,
        on_count: Count = _ignore,
        on_missing: Missing = _ignore_missing,
    ) -> None:
        if not features:
            raise ValueError("a model needs at least one feature")
        for feature in features:
            if feature.aggregation not in AGGREGATIONS:
                raise ValueError(f"feature {feature.name}: unknown aggregation")
        if mode in ("tumbling", "sliding"):
            if length_s is None or length_s <= 0:
                raise ValueError(f"a {mode} window needs length_s > 0")
            hop_s = length_s if mode == "tumbling" else hop_s
            if hop_s is None or hop_s <= 0:
                raise ValueError("a sliding window needs hop_s > 0")
        if mode == "count" and (count is None or count <= 0):
            raise ValueError("a count window needs count > 0")
        tags = [feature.tag for feature in features]
        if trigger_tag is not None and trigger_tag not in tags:
            raise ValueError(f"trigger_tag {trigger_tag} is not the tag of any feature")
        if mode == "count" and trigger_tag is None:
            trigger_tag = tags[0]
        baseline_means = baseline_means or {}
        if missing == "baseline":
            absent = [f.name for f in features if f.name not in baseline_means]
            if absent:
                raise ValueError(f"missing = baseline, but the baseline lacks {', '.join(absent)}")
        self.features = list(features)
        self.mode = mode
        self.length_s = length_s or 0.0
        self.hop_s = hop_s or 0.0
        self.count = count or 0
        self.trigger_tag = trigger_tag
        self.allowed_lateness_s = allowed_lateness_s
        self.late = late
        self.missing = missing
        self.max_age_s = max_age_s
        self.baseline_means = dict(baseline_means)
        self.use_uncertain = use_uncertain
        self.max_samples_per_tag = max_samples_per_tag
        self._count = on_count
        self._on_missing = on_missing
        self._tags = set(tags)
        self._assets: dict[str, _Asset] = {}

    # ---------------------------------------------------------------------------- interface

    def add(self, reading: Reading, now: float) -> list[Window]:
        state = self._assets.setdefault(reading.asset, _Asset())
        windows: list[Window] = []
        triggered = False
        for sample in reading.samples:
            if sample.tag not in self._tags:
                continue  # a tag no feature uses
            if not self._usable(sample):
                continue
            if self.mode in ("tumbling", "sliding"):
                self._add_timed(state, sample)
            else:
                self._remember(state, sample.tag, sample.ts, sample.value)
                if sample.tag == self.trigger_tag:
                    if self.mode == "snapshot":
                        windows += self._snapshot(reading.asset, state, sample.ts)
                    else:
                        windows += self._count_trigger(reading.asset, state, sample.ts)
                triggered = True
        if self.mode == "snapshot" and self.trigger_tag is None and triggered:
            end = max(sample.ts for sample in reading.samples)
            windows += self._snapshot(reading.asset, state, end)
        if self.mode in ("tumbling", "sliding"):
            windows += self._close(reading.asset, state, state.watermark)
        if self.mode == "snapshot":
            for window in windows:
                window.readings.append(reading)
        return windows

    def poll(self, now: float) -> list[Window]:
        if self.mode not in ("tumbling", "sliding"):
            return []
        windows: list[Window] = []
        for asset, state in self._assets.items():
            windows += self._close(asset, state, now)
        return windows

    # ------------------------------------------------------------------------------ samples

    def _usable(self, sample: Sample) -> bool:
        if sample.quality == Quality.BAD or (
            sample.quality == Quality.UNCERTAIN and not self.use_uncertain
        ):
            self._count(f"samples.quality_{sample.quality.value}", 1)
            return False
        if not math.isfinite(sample.value) or not math.isfinite(sample.ts):
            self._count("samples.non_finite", 1)
            return False
        return True

    def _remember(self, state: _Asset, tag: str, ts: float, value: float) -> None:
        """Keep the newest value of a tag (an older sample arriving late does not replace it)."""
        previous = state.last.get(tag)
        if previous is None or ts >= previous[0]:
            state.last[tag] = (ts, value)
        elif self.mode == "snapshot":  # the other modes count it as they file the sample
            self._count("samples.out_of_order", 1)
        if self.mode == "count":
            points = state.samples.setdefault(tag, [])
            if ts <= state.closed_until:
                self._late(points, (state.closed_until, value))
            else:
                self._insert(points, (ts, value))

    def _insert(self, points: list[tuple[float, float]], point: tuple[float, float]) -> None:
        if points and point[0] < points[-1][0]:
            self._count("samples.out_of_order", 1)
            insort(points, point)
        else:
            points.append(point)
        if len(points) > self.max_samples_per_tag:
            del points[0]
            self._count("samples.overflow", 1)

    def _late(self, points: list[tuple[float, float]], moved: tuple[float, float]) -> None:
        if self.late == "drop":
            self._count("samples.late_dropped", 1)
        else:
            self._count("samples.late_moved", 1)
            self._insert(points, moved)

    # ------------------------------------------------------------------------- time windows

    def _first_start(self, ts: float) -> float:
        """Start of the earliest window (on the hop grid) that still contains ``ts``."""
        return (math.floor((ts - self.length_s) / self.hop_s) + 1) * self.hop_s

    def _add_timed(self, state: _Asset, sample: Sample) -> None:
        self._remember(state, sample.tag, sample.ts, sample.value)
        points = state.samples.setdefault(sample.tag, [])
        if state.next_start is None:
            state.next_start = self._first_start(sample.ts)
        if sample.ts < state.next_start:
            # Every window this sample belongs to has been emitted already.
            self._late(points, (state.next_start, sample.value))
        else:
            self._insert(points, (sample.ts, sample.value))
        state.watermark = max(state.watermark, sample.ts)

    def _close(self, asset: str, state: _Asset, clock: float) -> list[Window]:
        windows: list[Window] = []
        while state.next_start is not None:
            start = state.next_start
            end = start + self.length_s
            if clock < end + self.allowed_lateness_s:
                break
            inside = {
                tag: [p for p in points if start <= p[0] < end]
                for tag, points in state.samples.items()
            }
            if any(inside.values()):
                window = self._build(asset, inside, end, state.prior)
                if window is not None:
                    windows.append(window)
                state.next_start = start + self.hop_s
            else:
                self._count("windows.empty", 1)
                later = [p[0] for points in state.samples.values() for p in points if p[0] >= end]
                # Jump over the silent stretch to the first window holding a newer sample.
                state.next_start = (
                    max(start + self.hop_s, self._first_start(min(later))) if later else None
                )
            keep_from = state.next_start if state.next_start is not None else math.inf
            for tag, points in state.samples.items():
                while points and points[0][0] < keep_from:
                    state.prior[tag] = points.pop(0)
        return windows

    # ------------------------------------------------------------------ count and snapshot

    def _count_trigger(self, asset: str, state: _Asset, ts: float) -> list[Window]:
        state.triggers += 1
        if state.triggers < self.count:
            return []
        state.triggers = 0
        inside = {tag: [p for p in points if p[0] <= ts] for tag, points in state.samples.items()}
        for tag, points in state.samples.items():
            state.samples[tag] = [p for p in points if p[0] > ts]
        state.closed_until = ts
        window = self._build(asset, inside, ts, state.last)
        return [window] if window is not None else []

    def _snapshot(self, asset: str, state: _Asset, ts: float) -> list[Window]:
        inside = {tag: [point] for tag, point in state.last.items() if point[0] <= ts}
        window = self._build(asset, inside, ts, state.last, snapshot=True)
        return [window] if window is not None else []

    # ------------------------------------------------------------------------------ features

    def _build(
        self,
        asset: str,
        inside: dict[str, list[tuple[float, float]]],
        end: float,
        prior: dict[str, tuple[float, float]],
        *,
        snapshot: bool = False,
    ) -> Window | None:
        """The feature row of one window, with the missing-tag policy applied; None to skip.

        ``prior`` holds each tag's newest sample from before the window, for the ``last`` policy.
        """
        values: list[float] = []
        filled: list[str] = []
        for feature in self.features:
            points = inside.get(feature.tag) or []
            if snapshot and points and end - points[-1][0] > self.max_age_s:
                points = []  # too old to stand for "now"
            if points or feature.aggregation == "count":
                values.append(aggregate(feature.aggregation, points))
                continue
            value = self._fill(feature, end, prior.get(feature.tag))
            if value is None:
                self._count(f"windows.skipped_missing.{feature.tag}", 1)
                self._on_missing([feature.name])
                return None
            values.append(value)
            filled.append(feature.name)
        if filled:
            self._on_missing(filled)
        if not all(math.isfinite(value) for value in values):
            self._count("windows.non_finite", 1)  # finite samples whose aggregate overflowed
            return None
        if filled:
            self._count(f"windows.filled_{self.missing}", 1)
        self._count("windows.built", 1)
        return Window(asset, end, values)

    def _fill(
        self, feature: WindowFeature, end: float, last: tuple[float, float] | None
    ) -> float | None:
        if self.missing == "baseline":
            return self.baseline_means[feature.name]
        if self.missing == "last" and last is not None and end - last[0] <= self.max_age_s:
            return aggregate(feature.aggregation, [last])
        return None


def build_window_builder(
    config: WindowsConfig,
    manifest: ModelManifest,
    baseline_means: dict[str, float] | None = None,
    on_count: Count = _ignore,
    on_missing: Missing = _ignore_missing,
) -> WindowBuilder:
    """The builder for a model: the config's choices, else the bundle's window spec, else rows.

    The features are put in the model's input order; a feature list that does not name exactly
    the model's inputs is a ConfigError.
    """
    spec = manifest.window
    mode = config.mode or (spec.mode if spec is not None else "row")
    names = manifest.feature_names
    if mode == "row":
        return RowWindowBuilder(names, on_missing)
    features = config.features or (spec.features if spec is not None else None)
    if features is None:
        features = features_from_names(names)
    by_name = {feature.name: feature for feature in features}
    if sorted(by_name) != sorted(names) or len(features) != len(names):
        raise ConfigError(
            f"window features {sorted(by_name)} do not match the model inputs {names}",
            key="windows.features",
        )
    try:
        return FeatureWindowBuilder(
            [by_name[name] for name in names],
            mode=mode,
            length_s=config.length_s or (spec.length_s if spec else None),
            hop_s=config.hop_s or (spec.hop_s if spec else None),
            count=config.count or (spec.count if spec else None),
            trigger_tag=config.trigger_tag,
            allowed_lateness_s=config.allowed_lateness_s,
            late=config.late,
            missing=config.missing,
            max_age_s=config.max_age_s,
            baseline_means=baseline_means,
            use_uncertain=config.use_uncertain,
            max_samples_per_tag=config.max_samples_per_tag,
            on_count=on_count,
            on_missing=on_missing,
        )
    except ValueError as err:
        raise ConfigError(str(err), key="windows") from err
