"""Probe: are the points a crash leaves stored also paid? (issue 14, item 4)

Four workspaces ingest through one client thread each while the service is killed with
SIGKILL `--kills` times and restarted; then, per workspace, it compares the points stored
with the items billed. With `--hold-s 0` (default) the kills land at random moments, as a
crash would; with `--hold-s 0.2` every write is held open for that long after it lands and
each kill lands right after one (the test `tests/reliability/test_paid_crash.py`).

    PYTHONPATH=$PWD .venv/bin/python scripts/probe_paid_writes.py [--code-dir DIR]

`--code-dir` runs the service (and the probe's database set-up) from another checkout's
`vectorsvc` package, e.g. the code before a change:

    git archive <commit> vectorsvc embedders | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before:$PWD .venv/bin/python scripts/probe_paid_writes.py \
        --code-dir /tmp/before

Prints a table and writes the numbers to `--out` (JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: see --code-dir

from tests.reliability.test_paid_crash import kill_during_ingest  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--hold-s", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=20260)
    parser.add_argument("--code-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("probe_paid_writes.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="probe-paid-") as tmp:
        outcomes, server, ledgers = kill_during_ingest(
            Path(tmp), kills=args.kills, hold_s=args.hold_s, seed=args.seed, code_dir=args.code_dir
        )
        server.stop()
    uncertain = sum(ledger.uncertain_batches for ledger in ledgers.values())
    rows = [dataclasses.asdict(o) for o in outcomes]
    total = {k: sum(r[k] for r in rows) for k in ("acked", "sent", "stored", "billed", "lost")}
    header = f"{'workspace':<10}{'acked':>8}{'sent':>8}{'stored':>8}{'billed':>8}{'unpaid':>8}"
    print(header)
    for r in [*rows, {"name": "total", **total}]:
        print(
            f"{r['name']:<10}{r['acked']:>8}{r['sent']:>8}{r['stored']:>8}{r['billed']:>8}"
            f"{r['stored'] - r['billed']:>8}"
        )
    print(
        f"kills: {args.kills}, hold: {args.hold_s}s, batches with no answer: {uncertain}, "
        f"acknowledged items lost: {total['lost']}"
    )
    args.out.write_text(
        json.dumps(
            {
                "kills": args.kills,
                "hold_s": args.hold_s,
                "seed": args.seed,
                "code_dir": str(args.code_dir) if args.code_dir else None,
                "uncertain_batches": uncertain,
                "workspaces": rows,
                "total": total,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
