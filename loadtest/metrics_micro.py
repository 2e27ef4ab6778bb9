"""Micro-benchmark: what the rank path pays for its metrics (one latency and one candidates
observation per request), in-process registry vs prometheus-client multiprocess mode.

``python -m loadtest.metrics_micro`` prints one line per registry: microseconds per request
(best of 5 repeats of 100,000), and the difference.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import timeit


def main(n: int = 100_000, repeat: int = 5) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix="xmtf-metrics-bench-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # before prometheus_client is imported
    try:
        from scorer.metrics import Metrics
        from scorer.prom import MultiprocMetrics

        out = {}
        for name, m in (("in-process", Metrics()), ("multiprocess", MultiprocMetrics())):

            def request(m: Metrics | MultiprocMetrics = m) -> None:
                m.latency.observe(0.0012, route="/v1/rank", status="200")
                m.candidates.observe(300)

            best = min(timeit.repeat(request, number=n, repeat=repeat)) / n
            out[name] = best * 1e6
            print(f"metrics per rank request, {name:>12}: {best * 1e6:.2f} us")
        print(f"multiprocess mode costs {out['multiprocess'] - out['in-process']:.2f} us more")
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
