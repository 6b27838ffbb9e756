"""Policy distillation on MinAtar: regular (KL) vs Sobolev (KL + teacher JVPs) students.

    python bench/paper/distillation.py --quick     # ~1 min: breakout, N in {300, 1000}, 1 seed
    python bench/paper/distillation.py             # full: 5 games x N in {1k, 10k, 50k} x 2 seeds

Needs ``minatar`` (``pip install -e .[bench]``) and the DQN teachers made by
``minatar_teacher.py`` (committed in ``bench/paper/teachers/``; a missing one is trained here
with ``--teacher-steps``). Per game: the teacher plays epsilon-greedy to collect a pool of
states and, from other episodes, a test set; students (a ReLU MLP on the flat observation,
smaller than the teacher) are trained on N states of the pool, either on
``KL(pi_teacher || pi_student)`` alone (``regular``) or on that KL plus the Sobolev term
``beta * mse(J_student v, J_teacher v)`` on the logits, with K random unit directions v per
state (``sobolev``: ``sk.sobolev_loss(student, x, None, teacher=..., return_outputs=True)``).

Metrics: test KL(teacher || student), test action agreement (argmax), and the student's mean
score over greedy episodes. Writes ``paper_distillation.csv``, ``paper_distillation.md`` and
``paper_distillation.png``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from minatar_teacher import (
    GAMES,
    TEACHERS,
    greedy,
    load_teacher,
    make_env,
    observe,
    play,
    train_teacher,
)
from paper_common import (
    RESULTS,
    Stopwatch,
    group,
    markdown_table,
    pm,
    pyplot,
    read_csv,
    setup_cpu,
    write_csv,
)

import sobolev_kernels as sk

COLUMNS = ["game", "n_train", "method", "seed", "test_kl", "test_agreement", "student_score",
           "teacher_score"]  # fmt: skip
METHODS = ["regular", "sobolev"]


class TeacherLogits(torch.nn.Module):
    """Teacher policy logits ``(Q - mean_a Q) / tau`` on flat rows (B, d) -> (B, A).

    Centred so their JVPs carry no softmax-irrelevant common shift.
    """

    def __init__(self, q_net: torch.nn.Module, tau: float) -> None:
        super().__init__()
        self.q_net, self.tau = q_net, tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q_net(x)
        return (q - q.mean(dim=1, keepdim=True)) / self.tau


def temperature(q_net: torch.nn.Module, states: torch.Tensor, relative: float) -> float:
    """``relative`` times the spread of the teacher's centred Q-values over ``states``.

    Q-values scale with each game's rewards; a temperature relative to their spread gives
    policies of similar sharpness in every game (0.1: the greedy action has p ~ 0.7).
    """
    with torch.no_grad():
        q = q_net(states)
    return relative * (q - q.mean(dim=1, keepdim=True)).std().item()


def collect_states(q_net, game: str, n: int, seed: int, epsilon: float) -> torch.Tensor:
    """(n, d) states visited by the epsilon-greedy teacher, in random order."""
    env, rng = make_env(game, seed), random.Random(seed)
    actions = env.minimal_action_set()
    states = []
    while len(states) < n:
        env.reset()
        for _ in range(1000):
            obs = observe(env)
            states.append(obs)
            if rng.random() < epsilon:
                a = rng.randrange(len(actions))
            else:
                with torch.no_grad():
                    a = int(q_net(obs[None]).argmax())
            _, done = env.act(actions[a])
            if done or len(states) >= n:
                break
    x = torch.stack(states)
    return x[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def kl_teacher_student(p_log: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(p || softmax(student_logits)); p_log is log p (B, A)."""
    return (p_log.exp() * (p_log - F.log_softmax(student_logits, dim=1))).sum(1).mean()


def train_student(
    x: torch.Tensor, teacher: TeacherLogits, method: str, args: argparse.Namespace, seed: int
) -> sk.SobolevMLP:
    torch.manual_seed(seed)
    student = sk.SobolevMLP(x.shape[1], args.width, teacher.q_net.head[-1].out_features,
                            num_layers=3, activation="relu")  # fmt: skip
    opt = torch.optim.Adam(student.parameters(), lr=args.lr)
    with torch.no_grad():
        p_log = F.log_softmax(teacher(x), dim=1)
    gen = torch.Generator().manual_seed(seed)
    directions = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(args.steps):
        idx = torch.randint(len(x), (min(args.batch, len(x)),), generator=gen)
        xb = x[idx]
        if method == "regular":
            loss = kl_teacher_student(p_log[idx], student(xb))
        else:
            sobolev, f = sk.sobolev_loss(
                student, xb, None, teacher=teacher, num_directions=args.directions,
                beta=args.beta, generator=directions, return_outputs=True,
            )  # fmt: skip
            loss = kl_teacher_student(p_log[idx], f) + sobolev
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return student.eval()


def evaluate(student, teacher, x_test, game: str, episodes: int, seed: int) -> dict:
    with torch.no_grad():
        t_logits, s_logits = teacher(x_test), student(x_test)
        kl = kl_teacher_student(F.log_softmax(t_logits, dim=1), s_logits).item()
        agree = (t_logits.argmax(1) == s_logits.argmax(1)).float().mean().item()
    score = play(make_env(game, 50_000 + seed), greedy(student), episodes, random.Random(seed))
    return dict(test_kl=kl, test_agreement=agree, student_score=score)


def get_teacher(game: str, args: argparse.Namespace):
    path = args.teachers / f"{game}.pt"
    if not path.exists():
        path = args.out / "teachers" / f"{game}.pt"
        print(f"no teacher for {game} in {args.teachers}: training one ({args.teacher_steps} "
              f"steps) into {path}", flush=True)  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(train_teacher(game, args.teacher_steps, seed=0), path)
    return load_teacher(path)


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    clock = Stopwatch(len(args.games) * len(args.n_train) * args.seeds, "distillation")
    for game in args.games:
        q_net, meta = get_teacher(game, args)
        for p in q_net.parameters():
            p.requires_grad_(False)
        pool = collect_states(q_net, game, max(args.n_train), seed=1, epsilon=args.epsilon)
        x_test = collect_states(q_net, game, args.n_test, seed=2, epsilon=args.epsilon)
        teacher = TeacherLogits(q_net, temperature(q_net, pool, args.tau)).eval()
        teacher_score = play(make_env(game, 50_000), greedy(q_net), args.episodes, random.Random(0))
        for n in args.n_train:
            for seed in range(args.seeds):
                for method in METHODS:
                    student = train_student(pool[:n], teacher, method, args, seed)
                    metrics = evaluate(student, teacher, x_test, game, args.episodes, seed)
                    rows.append(dict(game=game, n_train=n, method=method, seed=seed,
                                     teacher_score=teacher_score) | metrics)  # fmt: skip
                clock.tick(f"{game} N={n} seed={seed}: " + "; ".join(
                    f"{r['method']} KL {r['test_kl']:.4f} agree {r['test_agreement']:.3f} "
                    f"score {r['student_score']:.1f}" for r in rows[-2:]
                ) + f" (teacher {teacher_score:.1f})")  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    header = ["game", "N", "teacher score"]
    for metric in ("KL", "agreement", "score"):
        header += [f"{m} {metric}" for m in METHODS]
    by_case = group(rows, ["game", "n_train", "method"])
    body = []
    for game, n in dict.fromkeys((r["game"], r["n_train"]) for r in rows):
        cells = [by_case[(game, n, m)] for m in METHODS]
        line = [game, n, f"{float(cells[0][0]['teacher_score']):.2f}"]
        for key in ("test_kl", "test_agreement", "student_score"):
            line += [pm([float(r[key]) for r in c]) for c in cells]
        body.append(line)
    return markdown_table(header, body)


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    games = list(dict.fromkeys(r["game"] for r in rows))
    by_case = group(rows, ["game", "method"])
    fig, axes = plt.subplots(2, len(games), figsize=(3.6 * len(games), 6.4), squeeze=False)
    for col, game in enumerate(games):
        for method in METHODS:
            per_n = group(by_case[(game, method)], ["n_train"])
            ns = sorted(per_n, key=lambda k: int(k[0]))
            for row, key in enumerate(("test_kl", "test_agreement")):
                values = [[float(r[key]) for r in per_n[n]] for n in ns]
                mean = [sum(v) / len(v) for v in values]
                ax = axes[row, col]
                (line,) = ax.plot([int(n[0]) for n in ns], mean, marker="o", label=method)
                for n, v in zip(ns, values):
                    ax.scatter([int(n[0])] * len(v), v, s=8, alpha=0.4, color=line.get_color())
                ax.set_xscale("log")
                ax.set_xlabel("training states N")
        axes[0, col].set_title(game)
        axes[0, col].set_yscale("log")
    axes[0, 0].set_ylabel("test KL(teacher || student)")
    axes[1, 0].set_ylabel("test action agreement")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="breakout, small N, 1 seed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    parser.add_argument("--teachers", type=Path, default=TEACHERS)
    parser.add_argument("--teacher-steps", type=int, default=None)
    parser.add_argument("--games", nargs="+", default=None, choices=GAMES)
    parser.add_argument("--n-train", nargs="+", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="Adam steps per student")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=64, help="student hidden width")
    parser.add_argument("--tau", type=float, default=0.1, help="policy temperature, relative")
    parser.add_argument("--beta", type=float, default=0.03, help="weight of the Sobolev term")
    parser.add_argument("--directions", type=int, default=1, help="K random directions")
    parser.add_argument("--epsilon", type=float, default=0.05, help="exploration when collecting")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per score")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table-only", action="store_true", help="re-render from the CSV")
    parser.add_argument(
        "--keep-other-games", action="store_true",
        help="keep the CSV's rows of games not run now (run the games one at a time)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    setup_cpu(args.threads)
    quick = args.quick
    args.games = args.games or (["breakout"] if quick else GAMES)
    args.n_train = args.n_train or ([300, 1000] if quick else [1_000, 10_000, 50_000])
    args.n_test = args.n_test or (1000 if quick else 5000)
    args.seeds = args.seeds or (1 if quick else 2)
    args.steps = args.steps or (200 if quick else 2000)
    args.episodes = args.episodes or (2 if quick else 5)
    args.teacher_steps = args.teacher_steps or (3000 if quick else 100_000)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "paper_distillation.csv"

    if not args.table_only:
        kept = []
        if args.keep_other_games and csv_path.exists():
            kept = [r for r in read_csv(csv_path) if r["game"] not in args.games]
        write_csv(csv_path, COLUMNS, kept + run(args))
    rows = read_csv(csv_path)
    (args.out / "paper_distillation.md").write_text(table(rows))
    print(table(rows))
    plot(rows, args.out / "paper_distillation.png")


if __name__ == "__main__":
    main()
