"""A small Prometheus text-format registry (histograms and counters) for one scorer process."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
CANDIDATE_BUCKETS = (10, 50, 100, 200, 500, 1000, 2000, 5000)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        self.name, self.help = name, help_text
        self.buckets = tuple(buckets)
        self.series: dict[tuple[tuple[str, str], ...], list[float]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items())) if labels else ()
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0.0] * (len(self.buckets) + 2)  # buckets, +Inf, sum
        counts[bisect.bisect_left(self.buckets, value)] += 1
        counts[-1] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.series.items()):
            cumulative = 0.0
            base = ",".join(f'{k}="{v}"' for k, v in key)
            sep = "," if base else ""
            for bound, c in zip((*self.buckets, "+Inf"), counts[:-1], strict=True):
                cumulative += c
                lines.append(f'{self.name}_bucket{{{base}{sep}le="{bound}"}} {cumulative:g}')
            lines.append(f"{self.name}_sum{{{base}}} {counts[-1]:.6f}")
            lines.append(f"{self.name}_count{{{base}}} {cumulative:g}")
        return lines


class Metrics:
    """Scorer metrics; gauges and counters owned by other objects are passed to :meth:`render`."""

    def __init__(self) -> None:
        self.latency = Histogram(
            "xmtf_request_duration_seconds", "Request latency by route and status.", LATENCY_BUCKETS
        )
        self.candidates = Histogram(
            "xmtf_rank_candidates", "Candidates per /v1/rank request.", CANDIDATE_BUCKETS
        )
        self.rejections: dict[str, int] = defaultdict(int)

    def reject(self, code: str) -> None:
        self.rejections[code] += 1

    def sync(self, gauges: dict[str, tuple[str, str, float]]) -> None:
        """Nothing to do: one process renders its own values (see :mod:`scorer.prom`)."""

    @staticmethod
    def process_exit() -> None:
        """Nothing to do (see :mod:`scorer.prom`)."""

    def render(self, gauges: dict[str, tuple[str, str, float]], info: dict[str, str]) -> str:
        """``gauges``: name -> (type, help, value); ``info``: labels of ``xmtf_model_info``."""
        lines = self.latency.render() + self.candidates.render()
        lines += [
            "# HELP xmtf_rejections_total Rejected requests by error code.",
            "# TYPE xmtf_rejections_total counter",
        ]
        lines += [
            f'xmtf_rejections_total{{code="{c}"}} {n}' for c, n in sorted(self.rejections.items())
        ]
        for name, (kind, help_text, value) in gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
        if info:
            labels = ",".join(f'{k}="{v}"' for k, v in info.items())
            lines += [
                "# HELP xmtf_model_info The served model version.",
                "# TYPE xmtf_model_info gauge",
                f"xmtf_model_info{{{labels}}} 1",
            ]
        return "\n".join(lines) + "\n"
