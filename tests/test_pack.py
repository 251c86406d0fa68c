"""Fused packs: many training runs as one batched network give each member exactly its solo result."""
from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

from ctgrid.data import DataConfig, load_dataset
from ctgrid.errors import ConfigError
from ctgrid.generators import GeneratorConfig
from ctgrid.models import ModelConfig
from ctgrid.training import TrainingConfig, train
from ctgrid.training.loop import PackMember, train_pack

TIMING = ["t_ce", "t_update"]


@pytest.fixture(scope="module")
def moons():
    return load_dataset(DataConfig(name="moons", n_train=150, n_val=30, n_test=30))


def _members(n: int, **common) -> list[PackMember]:
    """``n`` compatible runs differing in every scalar a pack may vary."""
    out = []
    for k in range(n):
        cfg = TrainingConfig(objective="full", nepochs=3, nce=40, batch_size=30, seed=k,
                             lambda_div=0.5 + 0.1 * k, lambda_reg=0.1 * (k + 1), lambda_adv=0.25 / (k + 1),
                             lr=1e-3 * (1 + k % 3), **common)
        gen = GeneratorConfig(name="ecco", maxiter=5, tau=0.6 + 0.05 * (k % 4), lambda_cost=0.001 * k,
                              lambda_energy=1.0 + k)
        out.append(PackMember(ModelConfig(), gen, cfg))
    return out


def _solo(dataset, m: PackMember, **kw):
    return train(dataset, m.model, m.generator, m.training, checkpoint_path=m.checkpoint_path, **kw)


def _same(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ha, hb = a.history.drop(columns=TIMING), b.history.drop(columns=TIMING)
    assert ha.equals(hb), (ha.compare(hb) if ha.shape == hb.shape else (ha.shape, hb.shape))
    assert (a.completed, a.epochs_done) == (b.completed, b.epochs_done)


def test_members_are_bit_identical_to_solo_runs_for_pack_sizes_1_3_8(moons):
    members = _members(8)
    solo = [_solo(moons, m) for m in members]
    for size in (1, 3, 8):
        for start in range(0, 8, size):
            for got, want in zip(train_pack(moons, members[start:start + size]), solo[start:start + size]):
                _same(got, want)
    assert all(r.history["n_ce"].iloc[-1] == 40 for r in solo)


def test_mixed_layouts_sgd_and_drop_take_the_grouped_path(moons):
    """Vanilla, adversarial-only and `drop` members in one pack: several layouts per mini-batch."""
    base = _members(4, optimizer="sgd")
    members = [replace(base[0], training=replace(base[0].training, objective="vanilla")),
               replace(base[1], training=replace(base[1].training, objective="adversarial")),
               replace(base[2], training=replace(base[2].training, nonconverged="drop")),
               base[3]]
    for got, m in zip(train_pack(moons, members), members):
        _same(got, _solo(moons, m))


def test_a_diverging_member_skips_alone_and_the_others_are_unaffected(moons):
    members = _members(3)
    members[1] = replace(members[1], training=replace(members[1].training, lr=1e30))
    packed = train_pack(moons, members)
    assert packed[1].history["skipped"].sum() > 0
    assert not all(bool(torch.isfinite(p).all()) for p in packed[1].model.parameters()) or \
        packed[1].history["loss"].isna().any()
    for k in (0, 2):
        _same(packed[k], _solo(moons, members[k]))
    _same(packed[1], _solo(moons, members[1]))


def test_a_run_without_finite_updates_stops_after_the_patience_and_a_pack_member_fails_alone(moons):
    members = [replace(m, training=replace(m.training, nepochs=8)) for m in _members(3)]
    members[1] = replace(members[1], training=replace(members[1].training, lr=1e30))
    solo = _solo(moons, members[1])
    streak = int(solo.history["loss"].isna()[::-1].cumprod().sum())
    assert solo.diverged and "consecutive epochs without a finite update" in solo.diverged
    assert streak == 3 and solo.epochs_done == len(solo.history) < 8      # stopped at the patience
    packed = train_pack(moons, members)
    assert packed[1].diverged and packed[0].diverged is None and packed[2].diverged is None
    for k in (0, 2):                                                       # the others: unaffected
        _same(packed[k], _solo(moons, members[k]))
    both = train_pack(moons, [members[1], replace(members[1], training=replace(members[1].training, seed=9))])
    assert all(r.diverged for r in both) and both[0].epochs_done < 8       # nothing left: the pack stops
    patient = replace(members[1], training=replace(members[1].training, nonfinite_patience=8))
    assert _solo(moons, patient).diverged is None and _solo(moons, patient).epochs_done == 8


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_a_diverged_member_stops_where_it_stops_alone_and_its_files_equal_its_solo_run(moons, tmp_path):
    """Patience 2 of 8 epochs: alone the run stops after 2 epochs without a finite update;
    in a pack it must stop there too — no NaN rows up to the pack's end, no later checkpoint."""
    members = [replace(m, training=replace(m.training, nepochs=8, nonfinite_patience=2),
                       checkpoint_path=tmp_path / f"pack{k}.pt") for k, m in enumerate(_members(3))]
    members[1] = replace(members[1], training=replace(members[1].training, lr=1e30))
    solo_member = replace(members[1], checkpoint_path=tmp_path / "solo.pt")
    rows: dict[int, list[dict]] = {0: [], 1: [], 2: []}
    packed = train_pack(moons, members, progress=lambda k, row: rows[k].append(row))
    solo_rows: list[dict] = []
    solo = _solo(moons, solo_member, progress=solo_rows.append)
    assert solo.diverged and solo.epochs_done == len(solo.history) < 8
    assert packed[0].epochs_done == packed[2].epochs_done == 8          # the pack went on
    _same(packed[1], solo)                                              # rows, weights, epochs
    assert packed[1].diverged == solo.diverged
    assert [r["epoch"] for r in rows[1]] == [r["epoch"] for r in solo_rows]   # the job log's lines
    a, b = _checkpoint(members[1].checkpoint_path), _checkpoint(solo_member.checkpoint_path)
    assert a["epoch"] == b["epoch"] == solo.epochs_done
    assert a["rng"] == b["rng"] and a["fingerprint"] == b["fingerprint"]
    _identical(a["model"], b["model"])
    _identical(a["optimizer"], b["optimizer"])
    ha = pd.DataFrame(a["history"]).drop(columns=TIMING)
    hb = pd.DataFrame(b["history"]).drop(columns=TIMING)
    assert ha.equals(hb)
    for k in (0, 2):
        _same(packed[k], _solo(moons, replace(members[k], checkpoint_path=None)))
    # resumed after the member had stopped (an interrupted pack): it stays stopped
    again = train_pack(moons, [replace(members[1], checkpoint_path=members[1].checkpoint_path)])
    _same(again[0], solo)


def _identical(a, b) -> None:
    """Nested state dicts equal bit for bit (NaN where the other has NaN)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _identical(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _identical(x, y)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    else:
        assert a == b


def test_an_interrupted_pack_resumes_like_an_uninterrupted_run_alone_or_packed(moons, tmp_path):
    members = [replace(m, checkpoint_path=tmp_path / f"m{k}.pt") for k, m in enumerate(_members(3))]
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) == 2          # after epoch 2

    first = train_pack(moons, members, stop=stop)
    assert [(r.completed, r.epochs_done) for r in first] == [(False, 2)] * 3
    resumed = train_pack(moons, members[:2])                         # two of them, as a pack
    alone = _solo(moons, members[2])                                  # the third alone
    for got, m in zip([*resumed, alone], members):
        _same(got, _solo(moons, replace(m, checkpoint_path=None)))


def test_incompatible_members_are_refused(moons):
    a, b = _members(2)
    with pytest.raises(ConfigError, match="training.nepochs"):
        train_pack(moons, [a, replace(b, training=replace(b.training, nepochs=4))])
    with pytest.raises(ConfigError, match="model"):
        train_pack(moons, [a, replace(b, model=ModelConfig(nhidden=16))])


def test_adult_members_match_solo_runs(data_dir):
    """Wider inputs (one-hot groups, 1 hidden layer of 32) through the batched kernels."""
    ds = load_dataset(DataConfig(name="adult", n_train=400, n_val=50, n_test=50), data_dir)
    members = [replace(m, training=replace(m.training, nepochs=2, batch_size=100, nce=60))
               for m in _members(3)]
    for got, m in zip(train_pack(ds, members), members):
        _same(got, _solo(ds, m))


def test_cnn_members_match_solo_runs(data_dir):
    """Architectures outside the batched fast path (LeNet on MNIST) run member by member, exactly."""
    ds = load_dataset(DataConfig(name="mnist", n_train=300, n_val=50, n_test=50), data_dir)
    members = [PackMember(ModelConfig(kind="cnn"), GeneratorConfig(name="ecco", maxiter=3),
                          TrainingConfig(objective="full", nepochs=1, nce=20, batch_size=50, seed=s,
                                         lambda_div=0.1 * (s + 1)))
               for s in range(2)]
    for got, m in zip(train_pack(ds, members), members):
        _same(got, _solo(ds, m))
