"""CurrMask masking and the EXP3 teacher, checked against hand-computed cases from the official code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headvec.rl.masking import (
    Exp3Teacher,
    MixedProg,
    arm_pool,
    block_mask,
    block_positions,
    make_curriculum,
    n_masked,
    random_mask,
)


def runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True as (start, length)."""
    out, start = [], None
    for i, v in enumerate([*row.tolist(), False]):
        if v and start is None:
            start = i
        if not v and start is not None:
            out.append((start, i - start))
            start = None
    return out


@pytest.mark.parametrize(
    "length,ratio,expected", [(32, 0.15, 5), (32, 0.95, 31), (128, 0.55, 71), (10, 0.35, 4)]
)
def test_masked_count_follows_the_repo_formula(length, ratio, expected):
    # L - int(L * (1 - ratio)), float arithmetic as in the repo: 32*0.85 = 27.2 -> 27 kept, 5 masked
    assert n_masked(length, ratio) == expected
    g = torch.Generator().manual_seed(0)
    for block in (1, 2, 5, 20):
        mask = block_mask(16, length, ratio, block, g)
        assert mask.sum(1).tolist() == [expected] * 16


def test_block_positions_skip_the_first_token_of_each_period():
    # b = 4, offset 1, L = 14: ceil(14/4) - 1 = 3 blocks at 1+{1,2,3}, 5+{1,2,3}, 9+{1,2,3}
    assert block_positions(14, 4, 1) == [[2, 3, 4], [6, 7, 8], [10, 11, 12]]
    # offset 3: the last block is clipped at L
    assert block_positions(14, 4, 3) == [[4, 5, 6], [8, 9, 10], [12, 13]]
    assert block_positions(8, 20, 0) == []  # block longer than the sequence: no blocks at all


def test_block_masks_are_whole_blocks_plus_at_most_one_partial_block():
    g = torch.Generator().manual_seed(1)
    length, block = 64, 8
    for ratio in (0.15, 0.35, 0.55):
        mask = block_mask(32, length, ratio, block, g)
        for row in mask:
            lengths = sorted(n for _, n in runs(row))
            # every run is inside one (b-1)-token block: never longer than b-1
            assert max(lengths) <= block - 1
            # all but at most one run are complete blocks
            assert sum(1 for n in lengths if n != block - 1) <= 1


def test_runs_start_at_the_shared_offset():
    g = torch.Generator().manual_seed(2)
    mask = block_mask(8, 40, 0.35, 5, g)  # 14 tokens: 3 full 4-token blocks + 2 of a fourth
    starts = {s % 5 for row in mask for s, _ in runs(row)}
    assert len(starts) == 1  # one offset per batch


def test_budget_beyond_the_blocks_masks_lowest_leftovers_first():
    # L = 10, b = 5: one block (offset o): positions o+1..o+4; ratio .95 masks 10 - int(0.5) = 10 tokens
    g = torch.Generator().manual_seed(3)
    mask = block_mask(4, 10, 0.95, 5, g)
    assert mask.all()
    # ratio .75 masks 10 - int(2.5) = 8: the 4-token block and the 4 lowest other positions
    mask = block_mask(4, 10, 0.75, 5, torch.Generator().manual_seed(3))
    offset = int(torch.randint(0, 5, (1,), generator=torch.Generator().manual_seed(3)))
    blk = set(range(offset + 1, offset + 5))
    left = [p for p in range(10) if p not in blk]
    expected = sorted(blk | set(left[:4]))
    for row in mask:
        assert torch.nonzero(row).flatten().tolist() == expected


def test_block_size_one_is_random_masking():
    a = block_mask(8, 30, 0.55, 1, torch.Generator().manual_seed(5))
    b = random_mask(8, 30, 0.55, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # and random masking is not contiguous: some row has more than 3 runs
    assert max(len(runs(r)) for r in a) > 3


def test_arm_pool_is_block_sizes_times_ratios():
    arms = arm_pool()
    assert len(arms) == 100 and arms[0] == (1, 0.15) and arms[-1] == (20, 0.95)


def test_exp3_percentile_normalisation():
    history = [0.0, 1.0, 2.0, 3.0, 4.0]  # P20 = 0.8, P80 = 3.2
    assert Exp3Teacher.normalise(0.5, history) == -1.0
    assert Exp3Teacher.normalise(4.0, history) == 1.0
    assert Exp3Teacher.normalise(2.0, history) == pytest.approx(0.0)
    assert Exp3Teacher.normalise(3.2, history) == pytest.approx(1.0)
    assert Exp3Teacher.normalise(1.4, history) == pytest.approx(2 * (1.4 - 0.8) / 2.4 - 1)


def test_exp3_update_is_importance_weighted():
    teacher = Exp3Teacher(arms=[(1, 0.15), (2, 0.15), (3, 0.15), (4, 0.15)])
    assert np.allclose(teacher.probabilities, 0.25)
    assert teacher.update(2, 0.1) is None  # one reward: no update yet
    assert np.all(teacher.log_weights == 0)
    reward = teacher.update(2, 0.5)  # history [0.1, 0.5]: 0.5 > P80 -> +1
    assert reward == 1.0
    # w += eta * r / (p * K) = 0.2 * 1 / (0.25 * 4)
    assert teacher.log_weights[2] == pytest.approx(0.2)
    soft = np.exp([0, 0, 0.2, 0]) / np.exp([0, 0, 0.2, 0]).sum()
    assert np.allclose(teacher.probabilities, 0.8 * soft + 0.05)
    teacher.update(0, -1.0)  # lowest so far -> -1, arm 0 loses weight
    assert teacher.log_weights[0] < 0
    assert teacher.probabilities.sum() == pytest.approx(1.0)


def test_exp3_learns_the_arm_that_pays():
    rng = np.random.default_rng(0)
    teacher = Exp3Teacher(arms=[(b, 0.5) for b in range(1, 6)])
    for _ in range(400):
        arm = teacher.sample(rng)
        teacher.update(arm, (1.0 if arm == 3 else 0.0) + 0.1 * rng.standard_normal())
    assert int(np.argmax(teacher.probabilities)) == 3
    assert teacher.probabilities.min() >= 0.2 / 5 - 1e-12  # epsilon floor


def test_mixed_prog_phases_match_numpy_exclusive_bounds():
    curriculum = MixedProg(max_block=20)
    assert [curriculum.upper(s, 100) for s in (0, 30, 60, 90)] == [5, 10, 15, 20]
    inverse = MixedProg(max_block=20, inverse=True)
    assert [inverse.upper(s, 100) for s in (0, 30, 60, 90)] == [20, 15, 10, 5]
    rng = np.random.default_rng(0)
    blocks = {curriculum.choose(0, 100, rng)[0] for _ in range(200)}
    assert blocks == {1, 2, 3, 4}


def test_currmask_curriculum_keeps_an_arm_for_an_interval_and_rewards_progress():
    curriculum = make_curriculum("currmask", max_block=4, interval=10)
    rng = np.random.default_rng(0)
    first = curriculum.choose(0, 100, rng)
    assert all(curriculum.choose(s, 100, rng) == first for s in range(1, 10))
    curriculum.feedback(0, 1.0)
    curriculum.feedback(10, 0.8)  # progress 0.2
    curriculum.feedback(20, 0.5)  # progress 0.3: above P80 of [0.2, 0.3] -> +1
    assert [round(t["raw"], 6) for t in curriculum.trace] == [0.2, 0.3]
    assert curriculum.trace[-1]["reward"] == 1.0
