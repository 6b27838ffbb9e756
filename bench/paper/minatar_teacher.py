"""Train a small DQN teacher per MinAtar game (the distillation experiment's teachers).

    python bench/paper/minatar_teacher.py --games breakout --steps 3000 --out /tmp/teachers
    python bench/paper/minatar_teacher.py          # 5 games x 100k steps, ~4 min/game/core

Deliberately small so it trains on one CPU core in minutes: the network is MinAtar's own DQN
(one 3x3 conv of 16 channels, 128 hidden units), but the budget is 100k environment steps
(the committed teachers: breakout 100k, the other four ``--steps 30000``) instead of the
millions of frames of MinAtar's baselines, so the teachers are far from the best known scores.
That is fine here: distillation measures how well a student matches its teacher, not how well
the teacher plays. Each teacher is saved as ``<game>.pt`` (fp32 state dict, about 0.5 MB).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path

import numpy as np
import torch
from paper_common import Stopwatch, setup_cpu
from torch import nn

GAMES = ["breakout", "space_invaders", "seaquest", "asterix", "freeway"]
TEACHERS = Path(__file__).resolve().parent / "teachers"
MAX_EPISODE_STEPS = 1000  # caps evaluation and data collection (freeway alone runs 2500)


def make_env(game: str, seed: int):
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # minatar warns about seaborn on import
    import minatar

    env = minatar.Environment(game)
    env.seed(seed)
    return env


class QNetwork(nn.Module):
    """MinAtar's DQN: conv 3x3 (16) -> 128 -> actions, on flat (B, 10*10*C) observations.

    Taking the flat layout (the environment's (10, 10, C) order) lets the same rows feed the
    MLP student and the teacher's JVPs.
    """

    def __init__(self, channels: int, actions: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, 16, kernel_size=3)
        self.head = nn.Sequential(nn.Linear(16 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 10, 10, self.channels).permute(0, 3, 1, 2)
        return self.head(torch.relu(self.conv(x)).flatten(1))


def observe(env) -> torch.Tensor:
    """The state as a flat float row (d = 10 * 10 * C)."""
    return torch.from_numpy(np.asarray(env.state(), dtype=np.float32).reshape(-1))


def load_teacher(path: Path) -> tuple[QNetwork, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(blob["meta"])
    net = QNetwork(meta["channels"], len(meta["actions"]))
    net.load_state_dict(blob["state_dict"])
    return net.eval(), meta


def greedy(net: torch.nn.Module):
    """The policy ``obs -> argmax_a net(obs)[a]`` (an action index)."""

    def policy(obs: torch.Tensor) -> int:
        with torch.no_grad():
            return int(net(obs[None]).argmax())

    return policy


def play(env, policy, episodes: int, rng: random.Random, epsilon: float = 0.0) -> float:
    """Mean undiscounted return of ``policy(obs) -> action index`` over ``episodes``."""
    actions = env.minimal_action_set()
    total = 0.0
    for _ in range(episodes):
        env.reset()
        for _ in range(MAX_EPISODE_STEPS):
            if rng.random() < epsilon:
                a = rng.randrange(len(actions))
            else:
                a = policy(observe(env))
            reward, done = env.act(actions[a])
            total += reward
            if done:
                break
    return total / episodes


def train_teacher(game: str, steps: int, seed: int, clock: Stopwatch | None = None) -> dict:
    """DQN with a replay buffer, Huber loss, Adam and a target network (Mnih et al. 2015)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    env = make_env(game, seed)
    actions = env.minimal_action_set()
    channels = env.state_shape()[2]
    net = QNetwork(channels, len(actions))
    target = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    capacity, batch, gamma = min(steps, 100_000), 32, 0.99
    warmup, target_every, explore = min(2_000, steps // 4), 1_000, max(1, int(0.4 * steps))
    obs_buf = torch.zeros(capacity, 100 * channels, dtype=torch.bool)
    next_buf = torch.zeros_like(obs_buf)
    act_buf = torch.zeros(capacity, dtype=torch.long)
    rew_buf = torch.zeros(capacity)
    done_buf = torch.zeros(capacity)

    env.reset()
    obs, returns, episode_return, episode_len = observe(env), [], 0.0, 0
    for step in range(steps):
        epsilon = max(0.05, 1.0 - 0.95 * step / explore)
        if rng.random() < epsilon:
            a = rng.randrange(len(actions))
        else:
            with torch.no_grad():
                a = int(net(obs[None]).argmax())
        reward, done = env.act(actions[a])
        episode_return += reward
        episode_len += 1
        next_obs = observe(env)
        i = step % capacity
        obs_buf[i], next_buf[i], act_buf[i] = obs.bool(), next_obs.bool(), a
        rew_buf[i], done_buf[i] = reward, float(done)
        obs = next_obs
        if done or episode_len >= MAX_EPISODE_STEPS:
            returns.append(episode_return)
            env.reset()
            obs, episode_return, episode_len = observe(env), 0.0, 0

        if step >= warmup:
            idx = torch.randint(min(step + 1, capacity), (batch,))
            with torch.no_grad():
                q_next = target(next_buf[idx].float()).max(1).values
                y = rew_buf[idx] + gamma * (1 - done_buf[idx]) * q_next
            q = net(obs_buf[idx].float()).gather(1, act_buf[idx, None])[:, 0]
            loss = nn.functional.smooth_l1_loss(q, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if step % target_every == 0:
            target.load_state_dict(net.state_dict())
        if clock is not None and (step + 1) % max(1, steps // 10) == 0:
            recent = returns[-20:] or [0.0]
            print(f"  {game} step {step + 1}: mean return (last 20 episodes) "
                  f"{sum(recent) / len(recent):.2f}", flush=True)  # fmt: skip

    net.eval()
    score = play(make_env(game, seed + 1), greedy(net), 10, rng)
    meta = dict(game=game, channels=channels, actions=list(actions), steps=steps, seed=seed,
                greedy_score_10_episodes=score)  # fmt: skip
    return {"state_dict": net.state_dict(), "meta": json.dumps(meta)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--games", nargs="+", default=GAMES, choices=GAMES)
    parser.add_argument("--steps", type=int, default=100_000, help="environment steps per game")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=TEACHERS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_cpu(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch(len(args.games), "teacher")
    for game in args.games:
        blob = train_teacher(game, args.steps, args.seed, clock)
        torch.save(blob, args.out / f"{game}.pt")
        clock.tick(f"{game}: {blob['meta']}")


if __name__ == "__main__":
    main()
