"""`headvec rl`: the comparisons end to end on the point mass (seconds), and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from headvec.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_rl_pipeline_on_the_point_mass(tmp_path):
    data = tmp_path / "pm"
    result = runner.invoke(
        app,
        [
            "rl",
            "data",
            "pointmass",
            "--out",
            str(data),
            "--behaviour",
            "scripted",
            "--random-episodes",
            "6",
            "--rollout-episodes",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    refs = json.loads((data / "references.json").read_text())
    assert refs["best_behaviour_return"] > refs["random_return"]
    out = tmp_path / "cm"
    result = runner.invoke(
        app,
        [
            "rl",
            "compare-currmask",
            str(data),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--methods",
            "currmask,gpt",
            "--seeds",
            "0,1",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"currmask", "gpt"} and summary["gpt"]["skill_return"]["n"] == 2
    assert (out / "currmask_arm_probabilities.png").exists() and (out / "currmask_downstream.png").exists()
    out = tmp_path / "pdt"
    result = runner.invoke(
        app,
        [
            "rl",
            "compare-pdt",
            str(data),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--methods",
            "pdt,odt",
            "--seeds",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert {"pdt", "odt", "dt (offline only)"} <= set(summary)
    assert (out / "pdt_online.png").exists()


def test_rl_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["rl", "data", "Hoper-v5", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown environment 'Hoper-v5'" in result.output
    result = runner.invoke(
        app,
        ["rl", "compare-currmask", str(tmp_path), "--out", str(tmp_path / "o"), "--methods", "currmask,bert"],
    )
    assert result.exit_code == 2 and "unknown curricula ['bert']" in result.output
    result = runner.invoke(app, ["rl", "pretrain", str(tmp_path / "none.npz"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no dataset at" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_kill_9_and_rerun_gives_the_same_model(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    data = tmp_path / "pm"
    runner.invoke(app, ["rl", "data", "pointmass", "--out", str(data), "--behaviour", "scripted"])
    args = [
        str(data / "replay.npz"),
        "--horizon",
        "8",
        "--d-model",
        "16",
        "--batch-size",
        "8",
        "--steps",
        "200",
        "--interval",
        "10",
        "--save-every",
        "20",
    ]
    assert runner.invoke(app, ["rl", "pretrain", *args, "--out", str(tmp_path / "straight")]).exit_code == 0
    command = [
        sys.executable,
        "-m",
        "headvec.cli",
        "rl",
        "pretrain",
        *args,
        "--out",
        str(tmp_path / "killed"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "state.json"
    deadline = time.time() + 60
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads(state.read_text())["step"] < 200  # killed mid-run
    assert runner.invoke(app, ["rl", "pretrain", *args, "--out", str(tmp_path / "killed")]).exit_code == 0
    a = load_file(str(tmp_path / "straight" / "state.safetensors"))
    b = load_file(str(tmp_path / "killed" / "state.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))
