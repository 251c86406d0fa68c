"""``ctgrid verify RESULTS [--full] [--repair]``: are the done jobs' files what their ``done.json`` recorded?

Exit codes: 0 every done job's files are intact, 1 some are damaged or missing (also with
``--repair``, which sets those jobs' ``done.json`` aside so that the next ``ctgrid run``
re-runs them), 2 bad input (no results directory; ``--repair`` on a directory a live run
holds). Reads files only and never imports torch (:mod:`ctgrid.integrity` does the checks).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..integrity import JobCheck
    from ..store import ResultStore


def add_verify_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("verify", help="check the done jobs' files against their done.json (sizes; --full: hashes)",
                       description=("Check every done job of RESULTS (a RESULTS/<grid name> directory, or a "
                                    "results root holding several) against the sizes its done.json recorded "
                                    "(--full: also the SHA-256 of every file) and list the damaged or missing "
                                    "files in one table. Exit codes: 0 intact, 1 damaged files found, "
                                    "2 bad input. Never imports torch."))
    p.add_argument("results", type=Path, metavar="RESULTS", help="results directory")
    p.add_argument("--full", action="store_true",
                   help="also hash every recorded file (reads all of them; finds same-size damage)")
    p.add_argument("--repair", action="store_true",
                   help="move each damaged job's done.json aside (done.damaged.<time>.json) so that the "
                        "next ctgrid run re-runs exactly those jobs (takes the results directory's lock)")
    p.set_defaults(func=run)
    return p


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _check(store: ResultStore, args: argparse.Namespace) -> list[JobCheck]:
    """The store's done jobs checked; with ``--repair`` under its lock, damaged ones set aside."""
    from ..integrity import check_store
    if not args.repair:
        return check_store(store, full=args.full)
    store.check_no_links()   # --repair writes: only where a run would
    with store.lock():
        checks = check_store(store, full=args.full)
        for check in checks:
            if check.damaged:
                store.job(check.job_id).set_aside_done()
    return checks


def run(args: argparse.Namespace) -> int:
    from ..store import find_stores
    stores = find_stores(args.results)
    rows: list[tuple[str, ...]] = []
    n_damaged = n_done = 0
    how = "sizes and SHA-256 checked" if args.full else "sizes checked"
    for store in stores:
        checks = _check(store, args)
        damaged = [c for c in checks if c.damaged]
        unrecorded = sum(1 for c in checks if not c.recorded and not c.damaged)
        n_done, n_damaged = n_done + len(checks), n_damaged + len(damaged)
        note = (f"; {unrecorded} record no files (done.json of an earlier ctgrid): done, only their Parquet "
                f"footers checked" if unrecorded else "")
        print(f"{store.root}: {len(checks)} done jobs, {how}: {len(damaged)} damaged{note}")
        rows += [(store.root.name, c.job_id, p.file, p.text) for c in damaged for p in c.problems]
    if rows:
        header = ("grid", "job", "file", "problem")
        lines = _table(rows if len(stores) > 1 else [r[1:] for r in rows], header if len(stores) > 1 else header[1:])
        print("\n".join(lines))
    if not n_damaged:
        print(f"ctgrid verify: all {n_done} done jobs intact")
        return 0
    if args.repair:
        print(f"ctgrid verify: set aside the done.json of {n_damaged} damaged job(s) (done.damaged.<time>.json); "
              f"the next ctgrid run of the grid re-runs them")
    else:
        print(f"ctgrid verify: {n_damaged} damaged job(s); 'ctgrid verify {args.results} --repair' sets their "
              f"done.json aside so that the next ctgrid run re-runs them")
    return 1
