"""headvec.rl on the point mass: data format, CurrMask model and training, PDT/ODT losses and loops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from headvec.errors import DataError, HeadvecError
from headvec.rl.currmask import (
    MaskedModelConfig,
    MaskedTrajectoryModel,
    Planner,
    PretrainConfig,
    goal_planning,
    load_pretrained,
    pretrain,
    sincos_positions,
    skill_prompting,
)
from headvec.rl.data import TrajectoryDataset, generate, normalised_score
from headvec.rl.envs import PointMass, make_env
from headvec.rl.masking import block_mask
from headvec.rl.pdt import (
    PDTConfig,
    Sampler,
    SequencePolicy,
    TrainConfig,
    gaussian_kl,
    losses,
    posterior,
    run,
    tanh_gaussian_log_prob,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pointmass_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("pm")
    generate("pointmass", out, behaviour="scripted", random_episodes=10, rollout_episodes=12, seed=0)
    return out


def test_generator_writes_datasets_and_references(pointmass_data):
    refs = json.loads((pointmass_data / "references.json").read_text())
    expert = TrajectoryDataset.load(pointmass_data / "expert.npz")
    random = TrajectoryDataset.load(pointmass_data / "random.npz")
    assert refs["best_behaviour_return"] > refs["random_return"] + 10  # the scripted expert is much better
    assert expert.returns.mean() > random.returns.mean() + 10
    e = expert.episodes[0]
    assert e.observations.shape == (51, 4) and e.actions.shape == (50, 2) and e.states.shape == (51, 5)
    assert expert.meta["kind"] == "expert" and expert.meta["env_id"] == "pointmass"
    assert normalised_score(refs["random_return"], refs) == pytest.approx(0.0)
    assert normalised_score(refs["best_behaviour_return"], refs) == pytest.approx(100.0)


def test_stored_states_replay_the_episode(pointmass_data):
    e = TrajectoryDataset.load(pointmass_data / "replay.npz").episodes[3]
    env = PointMass()
    env.reset(0)
    assert np.allclose(env.set_state(e.states[10]), e.observations[10])
    step = env.step(e.actions[10])
    assert np.allclose(step.observation, e.observations[11], atol=1e-6)
    assert step.reward == pytest.approx(e.rewards[10], abs=1e-6)


def test_reruns_skip_finished_stages(pointmass_data):
    before = (pointmass_data / "expert.npz").stat().st_mtime_ns
    generate(
        "pointmass", pointmass_data, behaviour="scripted", random_episodes=10, rollout_episodes=12, seed=0
    )
    assert (pointmass_data / "expert.npz").stat().st_mtime_ns == before


def test_bad_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="headvec rl data"):
        TrajectoryDataset.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"not a headvec\.rl dataset"):
        TrajectoryDataset.load(tmp_path / "junk.npz")
    with pytest.raises(HeadvecError, match="unknown environment"):
        make_env("Hoper-v5")
    with pytest.raises(HeadvecError, match="no scripted expert"):
        generate("Hopper-v5", tmp_path, behaviour="scripted")


# ---------------------------------------------------------------- CurrMask model


def test_sincos_positions():
    p = sincos_positions(6, 8)
    assert p.shape == (6, 8)
    assert torch.allclose(p[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert p[3, 0] == pytest.approx(math.sin(3.0))


def tiny_model(causal: bool = False, loss: str = "total") -> MaskedTrajectoryModel:
    torch.manual_seed(0)
    return MaskedTrajectoryModel(
        MaskedModelConfig(4, 2, horizon=6, d_model=16, n_heads=2, causal=causal, loss=loss)
    )


def test_encoder_never_sees_masked_tokens():
    model = tiny_model().eval()
    states, actions = torch.randn(3, 6, 4), torch.rand(3, 6, 2) * 2 - 1
    mask = block_mask(3, 12, 0.55, 3, torch.Generator().manual_seed(0))
    out = model(states, actions, mask)
    # change every masked input: predictions must not move
    s2, a2 = states.clone(), actions.clone()
    s2[mask[:, 0::2]] += 5.0
    a2[mask[:, 1::2]] = -a2[mask[:, 1::2]]
    out2 = model(s2, a2, mask)
    assert torch.allclose(out[0], out2[0], atol=1e-5) and torch.allclose(out[1], out2[1], atol=1e-5)
    # and changing a visible one does move them
    s3 = states.clone()
    s3[~mask[:, 0::2]] += 5.0
    assert not torch.allclose(model(s3, actions, mask)[1], out[1], atol=1e-3)


def test_gpt_is_causal():
    model = tiny_model(causal=True).eval()
    states, actions = torch.randn(2, 6, 4), torch.rand(2, 6, 2)
    _, pred_a = model(states, actions)
    s2 = states.clone()
    s2[:, 4:] += 3.0  # change the future from step 4 on
    _, pred_a2 = model(s2, actions)
    assert torch.allclose(pred_a[:, :4], pred_a2[:, :4], atol=1e-5)
    assert not torch.allclose(pred_a[:, 4], pred_a2[:, 4], atol=1e-3)


def test_losses_match_hand_computation():
    states, actions = torch.randn(2, 6, 4), torch.rand(2, 6, 2) * 2 - 1
    mask = block_mask(2, 12, 0.35, 4, torch.Generator().manual_seed(1))
    for mode in ("total", "masked"):
        model = tiny_model(loss=mode).eval()
        loss, parts = model.loss(states, actions, mask)
        ps, pa = model(states, actions, mask)
        target = states / states.norm(dim=-1, keepdim=True)  # L2-normalised state targets
        es, ea = ((ps - target) ** 2).mean(-1), ((pa - actions) ** 2).mean(-1)
        if mode == "total":
            expected = es.mean() + ea.mean()
        else:
            ms, ma = mask[:, 0::2].float(), mask[:, 1::2].float()
            expected = (es * ms).sum() / ms.sum() + (ea * ma).sum() / ma.sum()
        assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
        assert parts["state"] + parts["action"] == pytest.approx(float(loss.detach()), rel=1e-5)


def small_pretrain(steps: int, curriculum: str = "currmask") -> PretrainConfig:
    return PretrainConfig(
        curriculum=curriculum, steps=steps, batch_size=16, interval=5, save_every=10, probe_batches=2
    )


def test_pretraining_resumes_to_the_same_result(pointmass_data, tmp_path):
    data = TrajectoryDataset.load(pointmass_data / "replay.npz")
    cfg = MaskedModelConfig(4, 2, horizon=8, d_model=16, n_heads=2, n_enc_layers=1)
    straight = pretrain(data, tmp_path / "a", small_pretrain(20), cfg, progress=False)
    pretrain(data, tmp_path / "b", small_pretrain(10), MaskedModelConfig(**vars(cfg)), progress=False)
    resumed = pretrain(
        data, tmp_path / "b", small_pretrain(20), MaskedModelConfig(**vars(cfg)), progress=False
    )
    for (name, p), q in zip(straight["model"].named_parameters(), resumed["model"].parameters(), strict=True):
        assert torch.equal(p, q), name
    assert straight["log"]["probe"] == resumed["log"]["probe"]
    meta = json.loads((tmp_path / "b" / "state.json").read_text())
    trace = meta["curriculum"]["trace"]
    assert len(trace) == 4 and len(trace[-1]["probabilities"]) == 8 * 5  # arms: blocks 1..8 x 5 ratios


def test_pretraining_learns_and_the_model_plans(pointmass_data, tmp_path):
    data = TrajectoryDataset.load(pointmass_data / "replay.npz")
    cfg = MaskedModelConfig(4, 2, horizon=8, d_model=32, n_heads=2, n_enc_layers=1)
    result = pretrain(data, tmp_path / "m", small_pretrain(150, "maskdp"), cfg, progress=False)
    probe = result["log"]["probe"]
    assert probe[-1][1] < 0.6 * probe[0][1]
    model, meta = load_pretrained(tmp_path / "m")
    planner = Planner(model, meta["state_mean"], meta["state_std"])
    expert = TrajectoryDataset.load(pointmass_data / "expert.npz")
    prompted = skill_prompting(planner, PointMass(), expert, context=3, horizon=10, n_prompts=3)
    assert len(prompted) == 3 and all(np.isfinite(r["return"]) for r in prompted)
    goals = goal_planning(planner, PointMass(), expert, n_goals=3, gap=2, n_trials=3)
    assert all(len(g["per_goal"]) == 3 for g in goals)


def test_goal_planning_rejects_goals_beyond_the_window(pointmass_data, tmp_path):
    planner = Planner(tiny_model(), np.zeros(4), np.ones(4))
    expert = TrajectoryDataset.load(pointmass_data / "expert.npz")
    with pytest.raises(HeadvecError, match="window longer"):
        goal_planning(planner, PointMass(), expert, n_goals=5, gap=3)


# ---------------------------------------------------------------- PDT


def test_gaussian_kl_and_tanh_log_prob_match_torch():
    mu_q, ls_q, mu_p, ls_p = (
        torch.randn(4, 3),
        torch.randn(4, 3) * 0.3,
        torch.randn(4, 3),
        torch.randn(4, 3) * 0.3,
    )
    q, p = torch.distributions.Normal(mu_q, ls_q.exp()), torch.distributions.Normal(mu_p, ls_p.exp())
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(gaussian_kl(mu_q, ls_q, mu_p, ls_p), expected, atol=1e-5)
    squashed = torch.distributions.TransformedDistribution(
        torch.distributions.Independent(torch.distributions.Normal(mu_q, ls_q.exp()), 1),
        [torch.distributions.TanhTransform()],
    )
    a = torch.tanh(torch.randn(4, 3) * 0.5)
    assert torch.allclose(tanh_gaussian_log_prob(a, mu_q, ls_q), squashed.log_prob(a), atol=1e-3)


def test_pdt_policy_is_causal_and_reads_the_z_token():
    torch.manual_seed(0)
    model = SequencePolicy(PDTConfig(4, 2, d_model=16, dropout=0.0, context=5)).eval()
    s, a, z = torch.randn(1, 5, 4), torch.rand(1, 5, 2), torch.randn(1, 5, 16)
    mu, _ = model.action_distribution(s, a, z)
    a2 = a.clone()
    a2[:, 2] += 1.0  # the action at step 2 must not inform its own prediction, only later ones
    mu2, _ = model.action_distribution(s, a2, z)
    assert torch.allclose(mu[:, :3], mu2[:, :3], atol=1e-5)
    assert not torch.allclose(mu[:, 3], mu2[:, 3], atol=1e-4)
    z2 = z.clone()
    z2[:, 1] += 1.0
    assert not torch.allclose(model.action_distribution(s, a, z2)[0][:, 1], mu[:, 1], atol=1e-4)


def test_future_alignment(pointmass_data):
    data = TrajectoryDataset.load(pointmass_data / "expert.npz")
    rng = np.random.default_rng(0)
    weights = np.full(len(data), 1 / len(data))
    for alignment, n_futures in (("repo", 1), ("per-step", 4)):
        cfg = PDTConfig(4, 2, context=4, future_len=3, d_model=16, dropout=0.0, future_alignment=alignment)
        batch = Sampler(cfg, np.zeros(4), np.ones(4)).sample(data.episodes, weights, 8, rng)
        assert batch.future_states.shape == (8, n_futures, 3, 4)
        torch.manual_seed(0)
        mu, _ = posterior(SequencePolicy(cfg).eval(), batch)
        assert mu.shape == (8, 4, 16)
        if (
            alignment == "repo"
        ):  # K=4, F=3: steps 0,1 -> position 0; step 2 -> 1; step 3 -> 2 (the whole future)
            assert torch.allclose(mu[:, 0], mu[:, 1]) and not torch.allclose(mu[:, 2], mu[:, 3])
        else:  # per-step: step j's future starts right after it
            row = batch.valid[0].nonzero().flatten()
            j = int(row[0])
            if j + 1 < 4:
                assert torch.allclose(batch.future_states[0, j, 0], batch.states[0, j + 1])


def test_pdt_loss_parts_and_prior_gets_no_gradient_into_the_encoder(pointmass_data):
    data = TrajectoryDataset.load(pointmass_data / "replay.npz")
    cfg = PDTConfig(4, 2, context=4, future_len=4, d_model=16, dropout=0.0)
    torch.manual_seed(0)
    model = SequencePolicy(cfg)
    batch = Sampler(cfg, np.zeros(4), np.ones(4)).sample(
        data.episodes, np.full(len(data), 1 / len(data)), 8, np.random.default_rng(0)
    )
    _loss, parts = losses(model, batch, with_return=True)
    assert set(parts) == {"kl_standard", "kl_prior", "return_nll", "action_nll", "entropy"}
    # KL(sg q || p) trains the prior only: its gradient w.r.t. the future encoder is zero
    mu_q, logstd_q = posterior(model, batch)
    mu_p, logstd_p = model.prior(batch.states)
    kl = gaussian_kl(mu_q.detach(), logstd_q.detach(), mu_p, logstd_p).sum()
    kl.backward()
    assert model.future_mu.weight.grad is None and model.prior_mu.weight.grad is not None


@pytest.mark.parametrize("method", ["pdt", "odt"])
def test_online_loop_runs_and_writes_its_curve(pointmass_data, tmp_path, method):
    data = TrajectoryDataset.load(pointmass_data / "replay.npz")
    refs = json.loads((pointmass_data / "references.json").read_text())
    cfg = TrainConfig(pretrain_steps=20, batch_size=16, online_samples=150, online_warmup_samples=50,
                      updates_per_iter=3, eval_every_samples=50, eval_episodes=1, n_z_samples=8,
                      return_warmup_updates=3, save_every=10)  # fmt: skip
    model = {"context": 4, "future_len": 4, "eval_context": 3, "d_model": 16}
    result = run(method, data, tmp_path / method, cfg, model, refs, progress=False)
    samples = [c["samples"] for c in result["curve"]]
    assert samples[0] == 0 and samples[-1] >= 150 and samples == sorted(samples)
    saved = json.loads((tmp_path / method / "curve.json").read_text())
    assert saved["method"] == method and len(saved["curve"]) == len(samples)
    assert (tmp_path / method / "finetuned.safetensors").exists()


def test_offline_pretraining_resumes_to_the_same_weights(pointmass_data, tmp_path):
    data = TrajectoryDataset.load(pointmass_data / "replay.npz")
    model = {"context": 4, "future_len": 4, "d_model": 16}

    def cfg(steps: int) -> TrainConfig:  # offline only (no online samples)
        return TrainConfig(
            pretrain_steps=steps, batch_size=8, eval_episodes=1, save_every=10, online_samples=0
        )

    straight = run("pdt", data, tmp_path / "a", cfg(20), model, progress=False)["model"]
    run("pdt", data, tmp_path / "b", cfg(10), model, progress=False)  # a run stopped at step 10, rerun
    resumed = run("pdt", data, tmp_path / "b", cfg(20), model, progress=False)["model"]
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    other = run(
        "pdt",
        data,
        tmp_path / "c",
        TrainConfig(pretrain_steps=20, batch_size=8, eval_episodes=1, online_samples=0, seed=1),
        model,
        progress=False,
    )
    assert not torch.equal(other["model"].action_mu.weight, straight.action_mu.weight)
