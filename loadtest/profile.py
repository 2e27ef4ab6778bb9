"""Profile the scorer under ``/v1/rank`` load with py-spy; print the top entries.

``python -m loadtest.profile [--n 500] [--seconds 15] [--native]`` builds a K = 6 model (or
reuses ``--models``), starts a throwaway Redis and the scorer (logging on), drives it at
concurrency 1 with the benchmark's bodies and samples the scorer with ``py-spy record`` (install
it with the ``dev`` extra; it needs ptrace permission). Prints the functions with the most own
samples and the most total samples (own + callees), and writes the raw collapsed stacks.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from loadtest.bench import HOST, MAIN_K, redis_server, scorer
from loadtest.bodies import make_bodies
from loadtest.build_models import STATE_DIM, task_names
from loadtest.client import encode_request, run_sync


def summarise(collapsed: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    lines = [f"{samples} samples", "", "| own % | function |", "|---|---|"]
    lines += [f"| {100 * c / samples:.1f} | `{f}` |" for f, c in own.most_common(top)]
    lines += ["", "| total % | function |", "|---|---|"]
    lines += [f"| {100 * c / samples:.1f} | `{f}` |" for f, c in total.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.profile")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--native", action="store_true", help="include native frames")
    p.add_argument("--models", type=Path, help="reuse model dirs built by the benchmark")
    p.add_argument("--out", type=Path, default=Path("results/profile.txt"))
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory(prefix="xmtf-profile-") as tmp_s:
        tmp = Path(tmp_s)
        models = args.models
        if models is None:
            models = tmp / "models"
            subprocess.run(
                [sys.executable, "-m", "loadtest.build_models", str(models), str(MAIN_K)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        bodies = make_bodies(args.n, task_names(MAIN_K), STATE_DIM)
        with (
            redis_server(tmp) as (redis_url, _),
            scorer(models / f"k{MAIN_K}", redis_url, 1, tmp / "scorer.log") as s,
        ):
            reqs = [encode_request(HOST, s.port, "/v1/rank", b) for b in bodies]
            run_sync(HOST, s.port, reqs, 500)
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    run_sync(HOST, s.port, reqs, 200)

            t = threading.Thread(target=load, daemon=True)
            t.start()
            raw = tmp / "stacks.txt"
            cmd = [
                spy,
                "record",
                "--pid",
                str(s.pids()[0]),
                "--duration",
                str(args.seconds),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--output",
                str(raw),
            ]
            # --native needs the process paused while sampling; pure Python frames do not
            cmd.append("--native" if args.native else "--nonblocking")
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            stop.set()
            t.join()
            text = summarise(raw, args.top)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
            shutil.copy(raw, args.out.with_suffix(".stacks"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
