"""CurrMask's masking schemes, the arm pool, the baseline curricula and the EXP3 teacher.

Reproduces ``agent/mask_methods.py`` and ``agent/curriculum.py`` of yaotang23/CurrMask (HEAD d85290f):

- :func:`random_mask` (MaskDP): per sample, a random ``L - int(L(1-ratio))`` of the ``L`` tokens.
- :func:`block_mask`: one random offset ``o`` in ``0..b-1`` per batch; block ``k`` is the ``b-1``
  consecutive tokens ``o + k*b + 1 .. o + k*b + b-1`` (position ``o + k*b`` itself is never in a block),
  ``ceil(L/b) - 1`` blocks clipped at ``L``; blocks are shuffled per sample and masked in that order (the
  last one may be partial); if the budget exceeds the blocks, the remaining tokens are masked lowest
  position first. ``b`` counts tokens, not timesteps; ``b = 1`` is :func:`random_mask`.
- :class:`Exp3Teacher`: EXP3 over (block size, ratio) arms with rewards = learning progress on a probe,
  normalised by the 20th/80th percentiles of all rewards so far.

Masks are boolean ``[N, L]`` tensors, ``True`` = masked (hidden from the encoder, predicted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from headvec.errors import HeadvecError

MASK_RATIOS = (0.15, 0.35, 0.55, 0.75, 0.95)


def n_masked(length: int, ratio: float) -> int:
    """How many of ``length`` tokens ratio ``ratio`` masks: ``L - int(L * (1 - ratio))`` as in the repo."""
    return length - int(length * (1 - ratio))


def random_mask(
    batch: int, length: int, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """MaskDP's token-wise random mask: each row masks exactly :func:`n_masked` random tokens."""
    noise = torch.rand(batch, length, generator=generator)
    order = torch.argsort(noise, dim=1)  # the last n_masked positions in this order are masked
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask.scatter_(1, order[:, length - n_masked(length, ratio) :], True)
    return mask


def block_positions(length: int, block: int, offset: int) -> list[list[int]]:
    """The token positions of each block (in block order) for block size ``block`` and ``offset``."""
    n_blocks = (length + block - 1) // block - 1
    blocks = [[offset + k * block + j for j in range(1, block)] for k in range(n_blocks)]
    return [[p for p in b if p < length] for b in blocks]


def block_mask(
    batch: int, length: int, ratio: float, block: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """CurrMask's block-wise mask (``fixed_seq_masking``); see the module docstring for the exact rule."""
    if block < 1:
        raise HeadvecError(f"block size must be >= 1, got {block}")
    if block == 1:
        return random_mask(batch, length, ratio, generator)
    offset = int(torch.randint(0, block, (1,), generator=generator))
    blocks = block_positions(length, block, offset)
    in_blocks = {p for b in blocks for p in b}
    leftover = [p for p in range(length) if p not in in_blocks]
    budget = n_masked(length, ratio)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    if blocks:
        shuffles = torch.argsort(torch.rand(batch, len(blocks), generator=generator), dim=1)
    for row in range(batch):
        order = [p for k in (shuffles[row].tolist() if blocks else []) for p in blocks[k]] + leftover
        mask[row, order[:budget]] = True
    return mask


def arm_pool(max_block: int = 20, ratios: Sequence[float] = MASK_RATIOS) -> list[tuple[int, float]]:
    """CurrMask's arms: every (block size, mask ratio), block sizes 1..``max_block`` (100 arms by default)."""
    return [(b, r) for b in range(1, max_block + 1) for r in ratios]


@dataclass
class Exp3Teacher:
    """EXP3 over ``arms`` on learning-progress rewards, as in CurrMask's ``TeacherExp3``.

    ``probabilities = (1 - epsilon) softmax(w) + epsilon / K``; after each round, the raw reward (the
    probe-loss decrease) is normalised against all rewards so far (<P20 -> -1, >P80 -> +1, linear in
    between) and ``w[arm] += eta * reward / (p[arm] * K)``. No update until two rewards are seen.
    """

    arms: list[tuple[int, float]]
    eta: float = 0.2
    epsilon: float = 0.2
    log_weights: np.ndarray = field(default=None)  # type: ignore[assignment]
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.log_weights is None:
            self.log_weights = np.zeros(len(self.arms))

    @property
    def probabilities(self) -> np.ndarray:
        w = self.log_weights - self.log_weights.max()
        soft = np.exp(w) / np.exp(w).sum()
        return (1 - self.epsilon) * soft + self.epsilon / len(self.arms)

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.arms), p=self.probabilities))

    @staticmethod
    def normalise(reward: float, history: Sequence[float]) -> float:
        low, high = np.percentile(history, 20), np.percentile(history, 80)
        if reward < low:
            return -1.0
        if reward > high:
            return 1.0
        if high == low:  # the repo divides by zero here; the reward sits exactly at both percentiles
            return 0.0
        return float(2 * (reward - low) / (high - low) - 1)

    def update(self, arm: int, raw_reward: float) -> float | None:
        """Record ``raw_reward`` for ``arm``; returns the normalised reward used (None before 2 rewards)."""
        self.history.append(float(raw_reward))
        if len(self.history) < 2:
            return None
        reward = self.normalise(raw_reward, self.history)
        probability = self.probabilities[arm]
        self.log_weights[arm] += self.eta * reward / (probability * len(self.arms))
        return reward


class Curriculum:
    """Chooses the (block size, ratio) of each training batch. ``step`` runs 0..``total``-1."""

    name = "base"

    def choose(self, step: int, total: int, rng: np.random.Generator) -> tuple[int, float]:
        raise NotImplementedError

    def feedback(self, step: int, probe_loss: float) -> None:
        """Probe loss measured at ``step`` (only CurrMask uses it)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class RandomMasking(Curriculum):
    """MaskDP: token-wise random masking, ratio drawn per batch from the five ratios."""

    name = "maskdp"

    def __init__(self, ratios: Sequence[float] = MASK_RATIOS) -> None:
        self.ratios = tuple(ratios)

    def choose(self, step: int, total: int, rng: np.random.Generator) -> tuple[int, float]:
        return 1, float(rng.choice(self.ratios))


class Mixed(Curriculum):
    """Mixed: ratio ~ U(ratios), block ~ U{1..max_block}."""

    name = "mixed"

    def __init__(self, max_block: int = 20, ratios: Sequence[float] = MASK_RATIOS) -> None:
        self.max_block, self.ratios = max_block, tuple(ratios)

    def choose(self, step: int, total: int, rng: np.random.Generator) -> tuple[int, float]:
        return int(rng.integers(1, self.max_block + 1)), float(rng.choice(self.ratios))


class MixedProg(Curriculum):
    """Mixed-prog: block ~ U{1..m-1} with m growing over four equal phases (5, 10, 15, 20 at max 20;
    numpy's exclusive upper bound as in the repo). ``inverse=True`` gives Mixed-inv."""

    def __init__(
        self, max_block: int = 20, ratios: Sequence[float] = MASK_RATIOS, inverse: bool = False
    ) -> None:
        self.max_block, self.ratios, self.inverse = max_block, tuple(ratios), inverse
        self.name = "mixed-inv" if inverse else "mixed-prog"

    def upper(self, step: int, total: int) -> int:
        phase = min(3, int(4 * step / max(total, 1)))
        if self.inverse:
            phase = 3 - phase
        return max(2, (phase + 1) * self.max_block // 4)

    def choose(self, step: int, total: int, rng: np.random.Generator) -> tuple[int, float]:
        return int(rng.integers(1, self.upper(step, total))), float(rng.choice(self.ratios))


class CurrMaskCurriculum(Curriculum):
    """CurrMask: an :class:`Exp3Teacher` picks an arm, used for ``interval`` steps; the probe-loss
    decrease over the interval is its reward."""

    name = "currmask"

    def __init__(self, max_block: int = 20, ratios: Sequence[float] = MASK_RATIOS, interval: int = 100,
                 eta: float = 0.2, epsilon: float = 0.2) -> None:  # fmt: skip
        self.teacher = Exp3Teacher(arm_pool(max_block, ratios), eta=eta, epsilon=epsilon)
        self.interval = interval
        self.arm: int | None = None
        self.last_probe: float | None = None
        self.trace: list[dict] = []  # per round: step, arm, raw and normalised reward, probabilities

    def choose(self, step: int, total: int, rng: np.random.Generator) -> tuple[int, float]:
        if self.arm is None or step % self.interval == 0:
            self.arm = self.teacher.sample(rng)
        return self.teacher.arms[self.arm]

    def feedback(self, step: int, probe_loss: float) -> None:
        if self.last_probe is not None and self.arm is not None:
            raw = self.last_probe - probe_loss
            normalised = self.teacher.update(self.arm, raw)
            self.trace.append({"step": step, "arm": self.arm, "raw": raw, "reward": normalised,
                               "probabilities": self.teacher.probabilities.round(5).tolist()})  # fmt: skip
        self.last_probe = probe_loss

    def state_dict(self) -> dict:
        return {"log_weights": self.teacher.log_weights.tolist(), "history": self.teacher.history,
                "arm": self.arm, "last_probe": self.last_probe, "trace": self.trace}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.teacher.log_weights = np.asarray(state["log_weights"], dtype=float)
        self.teacher.history = list(state["history"])
        self.arm, self.last_probe, self.trace = state["arm"], state["last_probe"], list(state["trace"])


CURRICULA = ("currmask", "maskdp", "mixed", "mixed-prog", "mixed-inv", "gpt")


def make_curriculum(name: str, max_block: int = 20, interval: int = 100) -> Curriculum:
    if name == "currmask":
        return CurrMaskCurriculum(max_block, interval=interval)
    if name == "maskdp":
        return RandomMasking()
    if name == "mixed":
        return Mixed(max_block)
    if name in ("mixed-prog", "mixed-inv"):
        return MixedProg(max_block, inverse=name == "mixed-inv")
    raise HeadvecError(f"unknown masking curriculum {name!r}; use one of {', '.join(CURRICULA[:-1])}")
