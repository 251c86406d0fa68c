"""The pack-aware cost model and the tail's split (ctgrid.parallel.plan.balance): what the
scheduler expects a pack to cost, which packs it splits for the workers, and that a split
changes no result (an MPI run with and without it, compared file by file)."""
from __future__ import annotations

import json
import textwrap

import pyarrow.parquet as pq
import pytest

from ctgrid.grid import parse_grid
from ctgrid.grid.packs import PACK_MARGINAL, member_costs
from ctgrid.parallel.plan import balance, make_plan, schedule
from ctgrid.store import ResultStore

from test_mpi import mpi_run
from test_scheduler import SMALL_EVAL, _comparable, assert_same_results


def _plan(tmp_path, text: str, pack_size: int = 16):
    grid = parse_grid(textwrap.dedent(text))
    store = ResultStore.for_grid(tmp_path, grid.name)
    jobs = grid.jobs()
    return jobs, make_plan(store, jobs, retry_failed=False, pack_size=pack_size)


#: twelve compatible CT jobs (one pack of 12 on a CPU) and nothing else
TWELVE = """\
    name: twelve
    data: {name: moons}
    training: {objective: full, lambda_div: [0.1, 0.5, 1.0], lambda_reg: [0.1, 0.25, 0.5, 1.0]}
    evaluation: {enabled: false}
    """


def test_a_member_costs_its_share_of_the_pack_by_hand(tmp_path):
    jobs, _ = _plan(tmp_path, TWELVE)
    job = next(iter(jobs.values()))
    train, evaluation = job.expected_cost_parts()
    assert evaluation == 0 and train == job.expected_cost()
    f = PACK_MARGINAL["search"]                       # ECCo (the default generator)
    assert member_costs([job]) == [job.expected_cost()]   # a pack of one: the job alone
    assert member_costs([job] * 4) == pytest.approx([train * (f + (1 - f) / 4)] * 4)
    vanilla = next(iter(_plan(tmp_path, TWELVE.replace("objective: full", "objective: vanilla"))[0].values()))
    assert member_costs([vanilla] * 2) == pytest.approx(
        [vanilla.expected_cost() * (PACK_MARGINAL["plain"] + (1 - PACK_MARGINAL["plain"]) / 2)] * 2)


def test_schedule_hands_each_pack_to_the_first_free_worker():
    costs = {"a": 5.0, "b": 3.0, "c": 2.0, "d": 2.0}
    assert schedule([["a"], ["b"], ["c"], ["d"]], costs, 2) == [(0, 5), (0, 3), (3, 5), (5, 7)]
    assert schedule([["a", "b"], ["c"]], costs, 3) == [(0, 8), (0, 2)]


def test_one_pack_and_idle_workers_split_into_halves_by_job_id_each_job_once(tmp_path):
    jobs, plan = _plan(tmp_path, TWELVE)
    assert [len(p) for p in plan.packs] == [12]
    for workers, sizes in ((2, [6, 6]), (4, [3, 3, 3, 3])):
        out = balance(plan, jobs, workers)
        assert sorted(map(len, out.packs), reverse=True) == sizes and out.splits == len(sizes) - 1
        assert sorted(j for p in out.packs for j in p) == sorted(plan.todo) == sorted(out.todo)
        for pack in out.packs:   # halves of halves of the id-sorted pack: contiguous runs of ids
            start = plan.packs[0].index(pack[0])
            assert pack == plan.packs[0][start:start + len(pack)]
        span = max(end for _, end in schedule(out.packs, out.costs, workers))
        assert span < max(end for _, end in schedule(plan.packs, plan.costs, workers))
        assert out.costs == pytest.approx({j: c for p in out.packs
                                           for j, c in zip(p, member_costs([jobs[j] for j in p]))})


def test_one_worker_or_an_even_plan_changes_nothing(tmp_path):
    jobs, plan = _plan(tmp_path, TWELVE)
    assert balance(plan, jobs, 1) is plan
    for pack_size, workers in ((6, 2), (3, 2), (3, 4)):   # equal packs, as many as / twice the workers
        jobs, plan = _plan(tmp_path, TWELVE, pack_size=pack_size)
        out = balance(plan, jobs, workers)
        assert out.packs == plan.packs and out.costs == plan.costs and out.splits == 0


#: four compatible CT jobs: one pack of 4, which two workers share better as two packs of 2
TAIL = textwrap.dedent(f"""\
    name: tail
    data: {{name: moons, n_train: 120, n_val: 30, n_test: 40}}
    generator: {{name: ecco, maxiter: 5}}
    training: {{objective: full, nepochs: 3, nce: 20, lambda_reg: [0.1, 0.5], lambda_div: [0.1, 0.5]}}
    {SMALL_EVAL}
    """)


@pytest.mark.slow
def test_the_tail_split_changes_no_result_file_by_file(tmp_path):
    grid = tmp_path / "tail.yaml"
    grid.write_text(TAIL)
    split, whole = tmp_path / "split", tmp_path / "whole"
    for results, extra in ((split, ()), (whole, ("--no-tail-split",))):
        proc = mpi_run(3, grid, results, *extra)
        assert proc.returncode == 0, proc.stderr
    a, b = ResultStore(split / "tail"), ResultStore(whole / "tail")
    sizes = {s: sorted(s.job(j).done_record()["pack_size"] for j in s.job_ids()) for s in (a, b)}
    assert sizes == {a: [2, 2, 2, 2], b: [4, 4, 4, 4]}, "the split happened, and only where asked"
    assert_same_results(a, b)
    for job_id in a.job_ids():
        names = sorted(p.name for p in a.job(job_id).dir.iterdir())
        assert names == sorted(p.name for p in b.job(job_id).dir.iterdir()), job_id
        for name in names:
            x, y = a.job(job_id).dir / name, b.job(job_id).dir / name
            if name == "done.json":   # equal but for timings, ranks and the pack it trained in
                drop = {"started", "finished", "seconds", "train_seconds", "eval_seconds", "write_seconds", "rank",
                        "pack_size", "files", "host"}
                rx, ry = (({k: v for k, v in json.loads(p.read_text()).items() if k not in drop}) for p in (x, y))
                for r in (rx, ry):   # the command line differs by --no-tail-split and --results
                    r["provenance"].pop("command")
                assert rx == ry, job_id
            elif name.endswith(".parquet"):
                tx, ty = pq.read_table(x), pq.read_table(y)
                if name == "history.parquet":   # its t_* columns are timings
                    tx, ty = (t.drop([c for c in t.column_names if c.startswith("t_")]) for t in (tx, ty))
                assert tx.equals(ty), (job_id, name)
                mx, my = (_metadata(t) for t in (tx, ty))
                assert mx == my, (job_id, name)
            elif name not in ("log.txt", "model.pt"):   # model.pt: _comparable's weights, above
                assert x.read_bytes() == y.read_bytes(), (job_id, name)
        assert not _comparable(a, job_id)["history"].empty


def _metadata(table) -> dict:
    """A Parquet file's key-value metadata, its provenance without the command line."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if "ctgrid.provenance" in meta:
        record = json.loads(meta["ctgrid.provenance"])
        record.pop("command")
        meta["ctgrid.provenance"] = record
    return meta
