"""The documentation site builds offline with `mkdocs build --strict` (a warning, a broken link or an API
entry that does not resolve fails the build), fetches no web fonts, and renders the API reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_mkdocs_build_strict_offline(tmp_path):
    unreachable = "http://127.0.0.1:9"  # anything fetched at build time fails
    env = {
        **os.environ,
        "HTTP_PROXY": unreachable,
        "HTTPS_PROXY": unreachable,
        "http_proxy": unreachable,
        "https_proxy": unreachable,
        "NO_PROXY": "",
        "no_proxy": "",
        "NO_MKDOCS_2_WARNING": "1",
    }
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr

    home = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in home  # theme font: false
    methods = (site / "reference" / "methods" / "index.html").read_text()
    assert "SparseAttentionVectors" in methods and "MultimodalTaskVector" in methods
    assert ":func:" not in methods  # Sphinx roles in docstrings become inline code
    rewards = (site / "reference" / "rewards" / "index.html").read_text()
    assert "ActivationRewardModel" in rewards and "as_judge" in rewards
    architecture = (site / "architecture" / "index.html").read_text()
    assert 'class="mermaid"' in architecture
    for page in ("guide/sav", "results/sav", "results/mtv", "results/reward-models", "benchmarks", "testing"):
        assert (site / page / "index.html").is_file(), page
