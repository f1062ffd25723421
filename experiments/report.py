"""Write EXPERIMENTS.md and its plots from experiments/results/*.json.

python experiments/report.py
"""

from __future__ import annotations

import json

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import RESULTS, ROOT, load

from carrystate.config import load_config
from carrystate.report import steps_axis

PLOTS = ROOT / "experiments" / "plots"


def _fmt_mib(v) -> str:
    return "—" if v is None else f"{v:.1f}"


def _save_plot(fig, name: str, alt: str) -> list[str]:
    """Write `fig` to plots/<name>.png and return the markdown that shows it."""
    fig.tight_layout()
    fig.savefig(PLOTS / f"{name}.png", dpi=100)
    plt.close(fig)
    return ["", f"![{alt}](plots/{name}.png)", ""]


def staleness_section(rows) -> list[str]:
    PLOTS.mkdir(parents=True, exist_ok=True)
    lines = [
        "## Carried state after an update: staleness against learning rate and epochs",
        "",
        "After every update, 32 sampled segments had their start state recomputed by replaying the agent's "
        "earlier rows of the rollout with the new weights (and, by the same code, with the rollout's "
        "weights). Columns are medians over all iterations of a run: `distance` = "
        "‖s_new − s_old‖ / max(‖s_old‖, ‖s_new‖), "
        "`KL first/last` = KL(π(·|s_new) ‖ π(·|s_old)) at the segment's first and last step, `ΔV first/last` "
        "= R2D2's |V(s_old) − V(s_new)| / max|V|. `eval` is the final policy's mean return over 300 fresh "
        "episodes (T-maze: = success rate). One seed per setting (seed 1).",
        "",
        "| task | setting | distance | KL first | KL last | ΔV first | ΔV last | eval | steps | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['setting']} | {r['state_distance']:.3f} | {r['kl_first']:.2e} | "
            f"{r['kl_last']:.2e} | {r['value_gap_first']:.3f} | {r['value_gap_last']:.2e} | "
            f"{r['eval_return']:.3f} | {r['steps']:,} | {r['wall_s']:.0f} |"
        )
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, task in zip(axes, ("tmaze", "cartpole_novel")):
        for r in rows:
            if r["task"] != task or "+" in r["setting"]:
                continue
            pts = [(c["step"], c["memory/kl_first"]) for c in r["curve"] if c.get("memory/kl_first") is not None]
            ax.semilogy([p[0] for p in pts], [max(p[1], 1e-9) for p in pts], label=r["setting"], lw=0.8)
        ax.set_title(f"{task}: KL at a segment's first step,\nstored vs fresh state", fontsize=10)
        ax.set_xlabel("agent-steps")
        steps_axis(ax)
        ax.set_ylabel("KL(π(·|s_new) ‖ π(·|s_old))")
        ax.legend(fontsize=7)
    return lines + _save_plot(fig, "staleness", "staleness")


def long_reach_section(rows) -> list[str]:
    PLOTS.mkdir(parents=True, exist_ok=True)
    lines = [
        "## A 256-step dependency at bptt_horizon 64: gradient_horizon 64 against episode",
        "",
        "Passive T-maze with a 256-step corridor (episodes of 258 steps), 32 agents, 1,024-step rollouts "
        "(16 segments of 64 per agent), minibatches of 8,192 steps, 4 epochs, LSTM 64, γ = 0.999. With "
        "`episode`, gradients run through all 16 segments of an agent's rollout (activation checkpointing "
        "per segment). `learner MiB` is the peak memory growth of one minibatch's forward+backward (8,192 steps, "
        "LSTM 64, no resets), measured as peak resident-set growth in a fresh process "
        "(`benchmarks/memory.py`); `full backprop MiB` is the same chains without checkpointing.",
        "",
        "| gradient_horizon | seed | success (200 fresh episodes) | steps | wall s | SPS | learner MiB | full "
        "backprop MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['gradient_horizon']} | {r['seed']} | {r['eval_success']:.3f} | {r['steps']:,} | "
            f"{r['wall_s']:.0f} | {r['sps']:,.0f} | {r['learner_MiB']:.1f} | "
            f"{_fmt_mib(r.get('full_backprop_MiB'))} |"
        )
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in rows:
        pts = [(s, v) for s, v in r["curve"] if v is not None]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            label=f"gradient_horizon {r['gradient_horizon']} (seed {r['seed']})",
        )
    ax.set_xlabel("agent-steps")
    steps_axis(ax)
    ax.set_ylabel("success rate in rollouts")
    ax.set_title("T-maze, corridor 256, bptt_horizon 64")
    ax.legend(fontsize=7)
    return lines + _save_plot(fig, "long_reach", "long reach")


def seeds_section(rows) -> list[str]:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "### More seeds for the most stale T-maze setting (update_epochs 16)",
        "",
        "Script: `python experiments/staleness_seeds.py`. Success of the final policy on 300 fresh episodes "
        "(400k agent-steps); seed 1 is the run in the table above.",
        "",
        "| start state | " + " | ".join(f"seed {s}" for s in seeds) + " | median KL first (per seed) |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for m in modes:
        cells = [
            next((f"{r['eval_success']:.2f}" for r in rows if r["mode"] == m and r["seed"] == s), "—") for s in seeds
        ]
        kls = ", ".join(f"{r['kl_first']:.1e}" for r in rows if r["mode"] == m)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {kls} |")
    return lines + [""]


def cartpole_section(rows) -> list[str]:
    lines = [
        "## CartPole without velocity: carrystate against sb3-contrib RecurrentPPO",
        "",
        "Script: `python experiments/cartpole_vs_sb3.py`. Same machine, same budget of 100k agent-steps, 8 envs each. "
        "carrystate uses `configs/cartpole_novel.yaml`; sb3-contrib uses the rl-baselines3-zoo hyperparameters for "
        "CartPoleNoVel-v1 (VecNormalize, a separate critic LSTM, lr and clip annealed linearly). The score is "
        "the final policy's mean return over 100 fresh episodes (sampled actions); the maximum is 500.",
        "",
        "| trainer | seed | final return | wall s | agent-steps/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['trainer']} | {r['seed']} | {r['eval_return']:.1f} | {r['wall_s']:.0f} | {r['sps']:,.0f} |")
    by = {}
    for r in rows:
        by.setdefault(r["trainer"], []).append(r)
    lines.append("")
    for name, rs in by.items():
        v = np.array([r["eval_return"] for r in rs])
        lines.append(
            f"- {name}: {v.mean():.1f} ± {v.std():.1f} over {len(v)} seeds, "
            f"{np.mean([r['sps'] for r in rs]):,.0f} agent-steps/s"
        )
    if not all(r.get("curve") for r in rows):
        return lines + [""]
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for (name, rs), colour in zip(by.items(), ("tab:blue", "tab:orange")):
        for i, r in enumerate(rs):
            ax.plot(
                [c[0] for c in r["curve"]],
                [c[1] for c in r["curve"]],
                color=colour,
                lw=0.8,
                label=name if i == 0 else None,
            )
    ax.set_xlabel("agent-steps")
    steps_axis(ax)
    ax.set_ylabel("mean episodic return per batch")
    ax.set_title("CartPole without velocity")
    ax.legend(fontsize=7)
    return lines + _save_plot(fig, "cartpole_vs_sb3", "cartpole learning curves")


def _mean_std(vals) -> str:
    v = np.asarray(vals, float)
    return f"{v.mean():.2f} ± {v.std():.2f}" if len(v) else "—"


def sweep_section(rows) -> list[str]:
    lengths = sorted({r["length"] for r in rows})
    horizons = sorted({r["bptt_horizon"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    cell = lambda L, h: [r["eval_success"] for r in rows if r["length"] == L and r["bptt_horizon"] == h]  # noqa: E731
    lines = [
        "## T-maze sweep: corridor length against bptt_horizon",
        "",
        "Passive T-maze, fixed corridor length L per run, 32 agents, 8,192-step rollouts, 2,048-step "
        "minibatches, 4 epochs, LSTM 64, γ = 0.995, the stored start state carried across segment boundaries. "
        f"Success rate of the final policy on 300 fresh episodes after {rows[0]['steps']:,} agent-steps "
        f"(chance: 0.5), mean ± std over seeds {', '.join(map(str, seeds))}; the per-seed values follow.",
        "",
        "| L | "
        + " | ".join(f"bptt {h}" for h in horizons)
        + " | "
        + " | ".join(f"bptt {h} per seed" for h in horizons)
        + " |",
        "|---|" + "---|" * 2 * len(horizons),
    ]
    for L in lengths:
        lines.append(
            f"| {L} | "
            + " | ".join(_mean_std(cell(L, h)) for h in horizons)
            + " | "
            + " | ".join(" / ".join(f"{v:.2f}" for v in cell(L, h)) for h in horizons)
            + " |"
        )
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for h in horizons:
        m = [np.mean(cell(L, h)) for L in lengths]
        sd = [np.std(cell(L, h)) for L in lengths]
        ax.errorbar(lengths, m, yerr=sd, fmt="o-", capsize=3, label=f"bptt_horizon {h}")
    ax.axhline(0.5, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("corridor length L")
    ax.set_ylabel(f"success rate (mean ± std, {len(seeds)} seeds)")
    ax.legend()
    return lines + _save_plot(fig, "tmaze_sweep", "tmaze sweep")


def popgym_section(rows) -> list[str]:
    envs = list(dict.fromkeys(r["env"] for r in rows))
    trainers = list(dict.fromkeys(r["trainer"] for r in rows))
    budget = rows[0]["budget"]
    pick = lambda e, t: [r for r in rows if r["env"] == e and r["trainer"] == t]  # noqa: E731
    lines = [
        "## POPGym: carrystate against sb3-contrib RecurrentPPO",
        "",
        "Script: `python experiments/popgym_vs_sb3.py`. Equal settings for both: one LSTM of 128 units shared by "
        "actor and critic, one 64-unit layer (carrystate: before the LSTM; sb3: after it, its default), 64 envs × "
        "64 steps per batch (carrystate: 64-step segments), minibatch 1,024, 4 epochs, lr 1e-3, entropy 0.01, "
        "γ 0.99, λ 0.95. Both see the previous action (sb3 through POPGym's own PreviousAction + Flatten "
        f"wrappers). Budget: {budget:,} agent-steps per run (POPGym's paper used 10–15M with full-episode "
        "backpropagation). Score: MMER, the maximum over training of the mean episodic return per batch, as "
        "POPGym scores (returns lie in [-1, 1]; a random policy gets about -0.5 on the Repeat tasks). `last 10%` "
        "is the mean of the per-batch returns over the last tenth of training, which a single lucky batch "
        "cannot lift. The random policy's steps/s is env stepping alone. "
        "Agent-steps per second are medians over seeds; runs were made one at a time, beside one other "
        "experiment on the second core.",
        "",
        "| env | "
        + " | ".join(f"{t} MMER" for t in trainers)
        + " | "
        + " | ".join(f"{t} per seed" for t in trainers)
        + " | "
        + " | ".join(f"{t} last 10%" for t in trainers)
        + " | "
        + " | ".join(f"{t} steps/s" for t in trainers)
        + " |",
        "|---|" + "---|" * 4 * len(trainers),
    ]
    last = lambda r: np.mean([v for _, v in r["curve"][-max(1, len(r["curve"]) // 10) :]])  # noqa: E731
    for e in envs:
        lines.append(
            f"| {e} | "
            + " | ".join(_mean_std([r["mmer"] for r in pick(e, t)]) for t in trainers)
            + " | "
            + " | ".join(" / ".join(f"{r['mmer']:.2f}" for r in pick(e, t)) for t in trainers)
            + " | "
            + " | ".join(_mean_std([last(r) for r in pick(e, t)]) for t in trainers)
            + " | "
            + " | ".join(f"{np.median([r['sps'] for r in pick(e, t)]):,.0f}" if pick(e, t) else "—" for t in trainers)
            + " |"
        )
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(envs), figsize=(4 * len(envs), 3.4), squeeze=False)
    colours = dict(zip(trainers, ("tab:blue", "tab:orange", "tab:green")))
    for ax, e in zip(axes[0], envs):
        for t in trainers:
            for i, r in enumerate(pick(e, t)):
                ax.plot(
                    [c[0] for c in r["curve"]],
                    [c[1] for c in r["curve"]],
                    color=colours[t],
                    lw=0.7,
                    alpha=0.8,
                    label=t if i == 0 else None,
                )
        ax.set_title(e, fontsize=9)
        ax.set_xlabel("agent-steps")
        steps_axis(ax)
        ax.set_ylabel("mean episodic return per batch")
        ax.legend(fontsize=7)
    return lines + _save_plot(fig, "popgym", "popgym learning curves")


# MettaGrid result sets, oldest first: (results name, what was run)
# (results files, label): a run whose seeds were split over two processes has one file per process
METTAGRID_RUNS = [
    (("mettagrid_arena",), "mean/max-pooled token encoder (before issue 16), norm_reward off"),
    (("mettagrid_arena_bag",), "EmbeddingBag token encoder (issue 16), norm_reward off"),
    (
        ("mettagrid_arena_bag_normrew",),
        "EmbeddingBag token encoder, norm_reward on (--set trainer.norm_reward=true)",
    ),
    (
        ("mettagrid_arena_cpp", "mettagrid_arena_cpp_b"),
        "same encoder, summed in C++ (issue 16, 12-01), norm_reward off",
    ),
    (("mettagrid_arena_bf16",), "the same at trainer.precision=bf16 (issue 26, 12-07)"),
]


def mettagrid_section(rows) -> list[str]:
    runs = [
        (label, sorted((r for name in names for r in load(name, [])), key=lambda r: r["seed"]))
        for names, label in METTAGRID_RUNS
    ]
    runs = [(label, data) for label, data in runs if data]
    lines = [
        "## MettaGrid arena, 24 agents per map",
        "",
        "Script: `python experiments/mettagrid_arena.py [--name NAME] [--set key=value ...]` with "
        "`configs/mettagrid_arena.yaml`: 8 maps of 25×25 with "
        "24 agents each (192 agent rows), token observations through the token encoder, LSTM 128, 49,152-step "
        "batches, 64-step segments, 2 epochs; two batches of 4 maps alternate (double buffering), each stepped in "
        "worker processes as the config said at the time of the run (1 per batch now). `return` is the mean "
        "episodic return per agent (1,000-step episodes) of a policy on 192 "
        "fresh agent-episodes: the untrained policy first, then the trained one. The curve shows the mean reward "
        "per agent-step of each rollout batch (×1,000 = a per-episode rate); all maps reset together every "
        "1,000 steps, so consecutive batches see different phases of an episode and the raw curve cycles, "
        "which the 4-batch mean (one episode) smooths. Seeds 1–3 in every run; the runs differ only in what "
        "the first column says. agent-steps/s are of runs made beside other work on this 2-core machine (the "
        "benchmark in BENCHMARKS.md measures speed). There is no published arena "
        "number to compare with at this map size: Metta's own runs use its own maps and billions of steps.",
        "",
        "| run | seed | agent-steps | untrained return | trained return | trained / untrained | reward/agent-step, "
        "first 5 batches | last 5 batches | wall s | agent-steps/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, data in runs:
        for r in data:
            c = [p["charts/reward_per_agent_step"] for p in r.get("curve", [])]
            if not c:
                continue
            final = r.get("final_return", float("nan"))
            lines.append(
                f"| {label} | {r['seed']} | {r['steps']:,} | {r['untrained_return']:.2f} | {final:.2f} | "
                f"{final / r['untrained_return']:.1f}× | {np.mean(c[:5]):.4f} | {np.mean(c[-5:]):.4f} | "
                f"{r['wall_s']:.0f} | {r['sps']:,.0f} |"
            )
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), sharey=True, squeeze=False)
    for ax, (label, data) in zip(axes[0], runs):
        for r, colour in zip(data, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
            steps = np.array([p["step"] for p in r.get("curve", [])])
            vals = np.array([p["charts/reward_per_agent_step"] for p in r.get("curve", [])])
            ax.plot(steps, vals, lw=0.5, alpha=0.35, color=colour)
            if len(vals) >= 4:  # 4 batches = one 1,000-step episode: the maps reset together, so batches cycle
                ax.plot(
                    steps[3:],
                    np.convolve(vals, np.ones(4) / 4, "valid"),
                    lw=1.2,
                    color=colour,
                    label=f"seed {r['seed']}",
                )
        ax.set_xlabel("agent-steps")
        steps_axis(ax)
        ax.set_title(label, fontsize=8)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("reward per agent-step (4-batch mean bold)")
    return lines + _save_plot(fig, "mettagrid_arena", "mettagrid arena learning curves, before and after")


# (arm, results source) -> label; arms trained by experiments/mettagrid_vs_pufferlib.py, carrystate's copied
VS_PUFFER_LABELS = {
    ("carrystate", "mettagrid_arena_cpp"): "carrystate as shipped (token encoder, LSTM gate biases 0)",
    ("carrystate", "mettagrid_arena_cpp_b"): "carrystate as shipped (token encoder, LSTM gate biases 0)",
    ("carrystate", "mettagrid_arena_chrono"): "carrystate, policy.chrono_tmax=128 (chrono LSTM gates)",
    ("carrystate", "trained here"): "carrystate as shipped",
    ("carrystate_mlp", "trained here"): "carrystate, policy.encoder=mlp (LSTM gate biases 0, as shipped)",
    ("puffer_ours", "trained here"): "PufferLib 3 at carrystate's PPO settings",
    ("puffer_metta", "trained here"): "PufferLib 3, issue 27's metta.ini recipe",
}


def _per_rollout_mean(rows, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Agent-steps and the mean over `rows` of `key` at each rollout (rows cut to the shortest curve)."""
    n = min(len(r["curve"]) for r in rows)
    return np.array([p["step"] for p in rows[0]["curve"][:n]]), np.mean(
        [[p[key] for p in r["curve"][:n]] for r in rows], axis=0
    )


def _first_length(row) -> float:
    """Mean length of the episodes that ended in the first rollout of `row` where any ended."""
    return next(p["episode_length"] for p in row["curve"] if p.get("episode_length") is not None)


def mettagrid_vs_pufferlib_section(rows) -> list[str]:
    arena = [r for r in rows if r["arm"] != "puffer_cartpole"]
    cartpole = sorted((r for r in rows if r["arm"] == "puffer_cartpole"), key=lambda r: r["seed"])
    groups: dict[str, list[dict]] = {}
    for r in arena:
        groups.setdefault(VS_PUFFER_LABELS.get((r["arm"], r["source"]), f"{r['arm']} ({r['source']})"), []).append(r)
    lines = [
        "## MettaGrid arena: carrystate beside PufferLib 3, learning (issue 27, item 4)",
        "",
        "Script: `python experiments/mettagrid_vs_pufferlib.py ARM --seeds 1 2 3` for ARM in `puffer_cartpole "
        "--seeds 1 --steps 10000000`, `puffer_metta`, `puffer_ours`, `carrystate_mlp` (PufferLib arms under "
        "PufferLib 3.0.23's interpreter, which the script re-runs itself with), and `carrystate --import "
        "mettagrid_arena_cpp mettagrid_arena_cpp_b` and `carrystate --import mettagrid_arena_chrono`, which copy "
        "runs of `experiments/mettagrid_arena.py` (as shipped; `--set policy.chrono_tmax=128`) rather than "
        "training them again (results in "
        "`experiments/results/mettagrid_vs_pufferlib.json`). Every arm trains on the arena of "
        "`configs/mettagrid_arena.yaml` (8 maps × 24 agents, 49,152 agent-steps per rollout, 102 rollouts = "
        "5,013,504 agent-steps). The measure is the same for both trainers: total reward of a rollout over its "
        "agent-steps (for PufferLib, the env's raw rewards counted where its trainer receives them), ×1,000 in "
        "the table; `last 10%` is its mean over the last 10 rollouts, `first 5` over the first five. "
        "carrystate's arms use its token encoder or its MLP on the flattened tokens (which normalises them by "
        "running mean and variance, carrystate's default for non-token encoders) and its LSTM 128 with the "
        "config's gate biases of 0; PufferLib's arms use PufferLib's own "
        "trainer (`pufferlib.pufferl.PuffeRL`, V-trace advantages, LSTM state zeroed at each rollout and each "
        "64-step segment) with mettagrid's PufferLib default policy (flattened tokens / 255 → Linear 128 + GELU → "
        "LSTM 128). `puffer_ours` takes carrystate's settings (Adam lr 1e-3 eps 1e-5, 2 epochs, 6,144-step "
        "minibatches, γ 0.99, λ 0.95, clip 0.2, value clip 0.2, vf 0.5, ent 0.01, grad norm 0.5, uniform "
        "minibatches: prio_alpha 0); `puffer_metta` issue 27's recipe (Adam lr 3e-4 cosine-annealed, clip 0.1, "
        "ent 0.0021, γ 0.977, λ 0.916, vf 0.44, value clip 0.1, prio_alpha 0) with PufferLib's default.ini for "
        "the rest (1 epoch, grad norm 1.5, β1 0.95, eps 1e-12) and carrystate's batch geometry. The metta.ini "
        "files we could read hold other swept values (pufferlib 3.0.0 on PyPI: Adam lr 0.0034, clip 0.49, "
        "γ 0.997, λ 0.955, vf 4.6, prio_alpha 0.1), so this arm follows the issue's numbers. One run at a "
        "time, one torch thread, beside other work on this 2-core machine: seconds are not speeds.",
        "",
        "| arm | seed | agent-steps | reward per 1,000 agent-steps, first 5 | last 10% | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for label, rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        for r in rs:
            first = np.mean([p["reward_per_agent_step"] for p in r["curve"][:5]])
            lines.append(
                f"| {label} | {r['seed']} | {r['steps']:,} | {1000 * first:.1f} | {1000 * r['last10']:.1f} | "
                f"{r['wall_s']:.0f} |"
            )
        lines.append(f"| {label} | **mean** | | | **{1000 * np.mean([r['last10'] for r in rs]):.1f}** | |")
    if cartpole:
        lines += [
            "",
            "Driver check (`puffer_cartpole`): the same driver code on PufferLib's native CartPole "
            "(`pufferlib.ocean`, built from the pufferlib 3.0.0 source; episodes capped at 200 steps) with its "
            "shipped config (default.ini + ocean/cartpole.ini: Muon lr 0.05 annealed, γ 0.95, 4,096 envs, "
            "262,144-step rollouts, LSTM policy), mean length of the episodes that ended in each rollout: "
            + "; ".join(
                f"seed {r['seed']}: first rollout {_first_length(r):.1f}, last 10% "
                f"{r['last10']:.1f} of 200 after {r['steps']:,} steps ({r['wall_s']:.0f} s)"
                for r in cartpole
            )
            + ".",
        ]
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2 if cartpole else 1, figsize=(13 if cartpole else 8, 4.2), squeeze=False)
    ax = axes[0][0]
    for (label, rs), colour in zip(groups.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for r in rs:
            ax.plot([p["step"] for p in r["curve"]], [1000 * p["reward_per_agent_step"] for p in r["curve"]],
                    lw=0.5, alpha=0.3, color=colour)  # fmt: skip
        steps, mean = _per_rollout_mean(rs, "reward_per_agent_step")
        if len(mean) >= 4:  # 4 rollouts = one 1,000-step episode: the maps reset together, so rollouts cycle
            ax.plot(steps[3:], 1000 * np.convolve(mean, np.ones(4) / 4, "valid"), lw=1.6, color=colour,
                    label=f"{label} (seeds {', '.join(str(r['seed']) for r in rs)})")  # fmt: skip
    ax.set_xlabel("agent-steps")
    steps_axis(ax)
    ax.set_ylabel("reward per 1,000 agent-steps")
    ax.set_title("MettaGrid arena: per-seed rollouts light, seed mean (4-rollout mean) bold", fontsize=9)
    ax.legend(fontsize=7)
    if cartpole:
        ax = axes[0][1]
        for r in cartpole:
            pts = [p for p in r["curve"] if p.get("episode_length") is not None]
            ax.plot([p["step"] for p in pts], [p["episode_length"] for p in pts], label=f"seed {r['seed']}")
        ax.set_xlabel("agent-steps")
        steps_axis(ax)
        ax.set_ylabel("mean episode length per rollout (cap 200)")
        ax.set_title("driver check: PufferLib 3 on its CartPole, shipped config", fontsize=9)
        ax.legend(fontsize=7)
    return lines + _save_plot(fig, "mettagrid_vs_pufferlib", "MettaGrid arena, carrystate beside PufferLib 3")


MINIGRID_RUNS = (
    ("minigrid_memory_gru", "GRU (the config)"),
    ("minigrid_memory_none", "memoryless, policy.core=none"),
)


def minigrid_section(rows) -> list[str]:
    runs = [(label, load(name)) for name, label in MINIGRID_RUNS]
    runs = [(label, data) for label, data in runs if data]
    lines = [
        "## MiniGrid-MemoryS7 from its config, against a memoryless control (issue 15)",
        "",
        "Script: `python experiments/minigrid_memory.py --core gru` and `--core none` (two processes side by side, "
        "one torch thread each). `configs/minigrid_memory.yaml`: MiniGrid's Dict observation with no user code "
        "(the 7×7×3 grid of object, colour and state ids through a per-channel embedding and a small CNN, the "
        "direction through an embedding, the mission text dropped), 16 envs × 128 steps per batch, 64-step "
        "segments. The control is the same network with `policy.core=none` (a feed-forward layer where the "
        "recurrent core was). A success is an episode that ends at the matching object (a positive return; a "
        "wrong object or the 245-step limit scores 0). `eval` is the final policy on 300 fresh episodes "
        "(`carrystate.evaluate`, what `carrystate eval` runs), actions sampled; `last 10%` the mean success "
        "rate of the training batches in the last tenth of training. `cue in view` / `cue behind`: success on "
        "300 more fresh episodes (through `carrystate.load`'s Agent on the raw env), split by the start: a quarter "
        "of episodes start beside the cue, which is then in view at the first step; the others start with it "
        "behind the agent, which has to turn round to see it. `first batch at ≥ 90%`: the agent-steps at the "
        "first training batch whose ended episodes succeeded 90% of the time or more. Seeds 1–3, fixed before "
        "any run; the config's core (GRU) was chosen on one-seed probes of seed 1, listed under "
        '"Issue 15" in "What the numbers say".',
        "",
        "| policy | seed | agent-steps | eval success | eval return | last 10% success | cue in view | cue behind "
        "| first batch at ≥ 90% | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, data in runs:
        for r in sorted(data, key=lambda r: r["seed"]):
            if "eval_success" not in r:
                continue
            rates = [(p["step"], p["charts/success_rate"]) for p in r["curve"] if "charts/success_rate" in p]
            first = next((f"{step:,}" for step, rate in rates if rate >= 0.9), "never")
            lines.append(
                f"| {label} | {r['seed']} | {r['steps']:,} | {r['eval_success']:.1%} | {r['eval_return']:.3f} | "
                f"{r['last10_success']:.1%} | {r['success_cue_in_view']:.1%} ({r['episodes_cue_in_view']}) | "
                f"{r['success_cue_behind']:.1%} ({r['episodes_cue_behind']}) | {first} | {r['wall_s']:.0f} |"
            )
    for label, data in runs:
        done = [r for r in data if "eval_success" in r]
        if done:
            lines.append(
                f"| {label}, mean | | | {np.mean([r['eval_success'] for r in done]):.1%} | "
                f"{np.mean([r['eval_return'] for r in done]):.3f} | "
                f"{np.mean([r['last10_success'] for r in done]):.1%} | "
                f"{np.mean([r['success_cue_in_view'] for r in done]):.1%} | "
                f"{np.mean([r['success_cue_behind'] for r in done]):.1%} | | |"
            )
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, data), colour in zip(runs, ("tab:blue", "tab:gray"), strict=False):
        for r, style in zip(sorted(data, key=lambda r: r["seed"]), ("-", "--", ":", "-."), strict=False):
            pts = [(p["step"], p["charts/success_rate"]) for p in r.get("curve", []) if "charts/success_rate" in p]
            if len(pts) >= 5:
                x, y = np.array(pts).T
                ax.plot(
                    x[4:],
                    np.convolve(y, np.ones(5) / 5, "valid"),
                    color=colour,
                    ls=style,
                    lw=1,
                    label=f"{label}, seed {r['seed']}",
                )
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.set_xlabel("agent-steps")
    steps_axis(ax)
    ax.set_ylabel("success rate of the batch (5-batch mean)")
    ax.legend(fontsize=7)
    return lines + _save_plot(fig, "minigrid_memory", "MiniGrid-MemoryS7 success rate, GRU and memoryless")


def settings_ablation_section(rows) -> list[str]:
    lines = [
        "## Learning settings, one change at a time (issue 13)",
        "",
        "Script: `python experiments/settings_ablation.py`. Seeds 1–5, fixed before any tuning, every seed shown. "
        "T-maze: the default config (400k agent-steps), score = success rate on 300 fresh episodes. CartPole "
        "without velocity: `configs/cartpole_novel.yaml` (100k agent-steps), score = mean return on 100 fresh "
        "episodes (maximum 500). Each row changes one thing against the chosen settings.",
        "",
        "| task | setting | mean | min | per seed (1–5) |",
        "|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        for setting in dict.fromkeys(r["setting"] for r in rows if r["task"] == task):
            rs = sorted((r for r in rows if r["task"] == task and r["setting"] == setting), key=lambda r: r["seed"])
            v = [r["score"] for r in rs]
            fmt = ".2f" if task == "tmaze" else ".0f"
            lines.append(
                f"| {task} | {setting} | {np.mean(v):{fmt}} | {min(v):{fmt}} | "
                + " / ".join(f"{x:{fmt}}" for x in v)
                + " |"
            )
    return lines + [""]


def tmaze_memory_section(rows) -> list[str]:
    lines = [
        "## Passive T-maze with long corridors at bptt_horizon 64 (issue 13)",
        "",
        "Script: `python experiments/tmaze_memory.py`. Corridors of exactly L steps between the cue and the "
        "junction, 32 agents, 8,192-step rollouts (4 segments of 64 per agent), minibatches of 2,048, 4 epochs, "
        "LSTM 64, γ 0.995, 2M agent-steps per run, seeds 1–5. Score: success on 300 fresh episodes (chance 50%). "
        "Target: ≥ 95% on at least 4 of 5 seeds. `before issue 13` is the old defaults (no reward or observation "
        "normalisation); `defaults` the current ones; the last row adds a forget-gate bias of 1 and gradients "
        "through the whole rollout (`trainer.gradient_horizon=episode`).",
        "",
        "| setting | L | seeds ≥ 95% | mean success | per seed (1–5) | s per run |",
        "|---|---|---|---|---|---|",
    ]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    lengths = sorted(set(r["length"] for r in rows))
    for setting in settings:
        for L in lengths:
            rs = sorted((r for r in rows if r["setting"] == setting and r["length"] == L), key=lambda r: r["seed"])
            if not rs:
                continue
            v = [r["eval_success"] for r in rs]
            lines.append(
                f"| {setting} | {L} | {sum(x >= 0.95 for x in v)} of {len(v)} | {np.mean(v):.2f} | "
                + " / ".join(f"{x:.2f}" for x in v)
                + f" | {np.mean([r['wall_s'] for r in rs]):.0f} |"
            )
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.6), squeeze=False)
    colours = dict(zip(settings, ("tab:grey", "tab:blue", "tab:orange", "tab:green")))
    for ax, L in zip(axes[0], lengths):
        for setting in settings:
            for i, r in enumerate(r for r in rows if r["setting"] == setting and r["length"] == L):
                ax.plot(
                    [c[0] for c in r["curve"]],
                    [c[1] for c in r["curve"]],
                    color=colours[setting],
                    lw=0.7,
                    label=setting if i == 0 else None,
                )
        ax.set_title(f"T-maze, corridor L = {L}, bptt_horizon 64")
        ax.set_xlabel("agent-steps")
        steps_axis(ax)
        ax.set_ylabel("success rate per batch")
        ax.legend(fontsize=7)
    return lines + _save_plot(fig, "tmaze_memory", "T-maze long-corridor learning curves")


def popgym_5m_section(rows) -> list[str]:
    # the same script with --set policy.core=gru: --name popgym_5m_gru (seeds 1-4, the default Adam) and
    # --name popgym_5m_gru_b (seeds 4-5, started while Adam was fused by default: it rounds differently)
    # and --config configs/popgym_repeat_previous.yaml: --name popgym_5m_window (seeds 1-3) and
    # popgym_5m_window_b (seeds 4-5), two processes side by side
    fused = [{**r, "variant": "fused Adam"} for r in load("popgym_5m_gru_b", [])]
    window = load("popgym_5m_window", []) + load("popgym_5m_window_b", [])
    rows = rows + load("popgym_5m_gru", []) + fused + window

    def policy(r):
        config = r.get("config", "configs/popgym.yaml")
        return (
            r["trainer"]
            + (f", `{config}`" if config != "configs/popgym.yaml" else "")
            + "".join(f", {o}" for o in r.get("overrides", []))
            + (f" ({r['variant']})" if "variant" in r else "")
        )

    def core(r):
        # configs/popgym.yaml held an LSTM (zero biases) when these rows were run (GRU rows name the override);
        # another config names its own core
        if "config" not in r or r["config"] == "configs/popgym.yaml":
            return "GRU" if "policy.core=gru" in r.get("overrides", []) else "LSTM"
        return load_config(ROOT / r["config"], r.get("overrides", [])).policy.core

    envs = list(dict.fromkeys(r["env"] for r in rows))
    ours = [r for r in rows if r["trainer"] == "carrystate"]
    budget = max((r["budget"] for r in ours), default=0)
    lines = [
        "## POPGym Medium tasks at 5M agent-steps (issue 13)",
        "",
        "Script: `python experiments/popgym_vs_sb3.py --steps 5000000 --seeds 1 2 3 4 5 --envs RepeatPreviousMedium "
        "RepeatFirstMedium --trainers carrystate --name popgym_5m` (and `--steps 200000 --trainers random` for the "
        "random policy; `--set policy.core=gru --name popgym_5m_gru` for the GRU rows: seeds 1–4 in one process "
        "with the default Adam, seeds 4–5 in a second one started while Adam was fused by default "
        "(`trainer.fused_adam` now), which rounds differently, so seed 4 appears twice; "
        "`--envs RepeatPreviousMedium --config configs/popgym_repeat_previous.yaml --name popgym_5m_window` for "
        "the window core, seeds 1–3 and 4–5 in two processes side by side). carrystate with "
        "`configs/popgym.yaml` (or the config the policy column names) plus the overrides it names, "
        f"{budget:,} agent-steps per "
        "run, seeds 1–5. Score: the mean of the per-batch mean episodic returns over the last 10% of training "
        "(`last 10%`), beside MMER (the maximum over batches, POPGym's score), and, where recorded, the final "
        "policy's mean return on 100 fresh episodes (`carrystate.evaluate`, what `carrystate eval` runs; actions "
        "sampled). Returns lie in [-1, 1]; the random "
        "row is uniformly random actions. Target: `last 10%` clearly above the random policy on every seed.",
        "",
        "| env | policy | last 10% per seed (seed: value) | last 10% mean | MMER mean | fresh episodes per seed | "
        "steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    last = lambda r: float(np.mean([v for _, v in r["curve"][-max(1, len(r["curve"]) // 10) :]]))  # noqa: E731
    for e in envs:
        for name in dict.fromkeys(policy(r) for r in rows if r["env"] == e):
            rs = sorted((r for r in rows if r["env"] == e and policy(r) == name), key=lambda r: r["seed"])
            v = [last(r) for r in rs]
            lines.append(
                f"| {e} | {name} | "
                + " / ".join(f"{r['seed']}: {x:.2f}" for r, x in zip(rs, v))
                + f" | {np.mean(v):.2f} | {np.mean([r['mmer'] for r in rs]):.2f} | "
                + (" / ".join(f"{r['eval']:.2f}" for r in rs) if all("eval" in r for r in rs) else "")
                + f" | {np.median([r['sps'] for r in rs]):,.0f} |"
            )
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.4), squeeze=False)
    for ax, e in zip(axes[0], envs):
        for r in (r for r in rows if r["env"] == e and r["trainer"] == "carrystate"):
            kind = core(r)
            ax.plot(
                [c[0] for c in r["curve"]],
                [c[1] for c in r["curve"]],
                lw=0.6,
                ls={"LSTM": ":", "GRU": "-", "window": "--"}[kind],
                label=f"{kind} seed {r['seed']}",
            )
        rand = [last(r) for r in rows if r["env"] == e and r["trainer"] == "random"]
        if rand:
            ax.axhline(np.mean(rand), color="k", ls="--", lw=1, label="random policy")
        ax.set_title(f"POPGym {e}")
        ax.set_xlabel("agent-steps")
        steps_axis(ax)
        ax.set_ylabel("mean episodic return per batch")
        ax.legend(fontsize=5, ncol=2)
    return lines + _save_plot(fig, "popgym_5m", "POPGym 5M learning curves") + popgym_probes_section()


def popgym_probes_section() -> list[str]:
    rows = load("popgym_probes", [])
    if not rows:
        return []
    lines = [
        "### What was tried on the Medium tasks (one seed each)",
        "",
        "Script: `python experiments/popgym_probes.py ENV STEPS 1 NAME:overrides ...`. Probes on seed 1 only, "
        "to choose what to run on five seeds; `last 10%` and the quarters are means of the per-batch returns, "
        "`eval` the final policy on 50 fresh episodes. The 1M window probes ran two at a time.",
        "",
        "| env | overrides on configs/popgym.yaml | agent-steps | last 10% | by quarter of training | eval | steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['env']} | {', '.join(r['overrides']) or '(none)'} | {r['steps']:,} | {r['last10']:.2f} | "
            + " / ".join(f"{q:.2f}" for q in r["quarters"])
            + f" | {r['eval']:.2f} | {r['sps']:,.0f} |"
        )
    return lines + [""]


def staleness_with_seeds_section(rows) -> list[str]:
    seeds = load("staleness_seeds")
    return staleness_section(rows) + (seeds_section(seeds) if seeds else [])


def lstm_memory_section(rows) -> list[str]:
    targets = {
        "popgym_first": ("last 10% ≥ 0.8 on ≥ 4 of 5", lambda r: r["last10"] >= 0.8),
        "minigrid": ("≥ 95% success on 300 fresh episodes, seeds 1–3", lambda r: r["eval_success"] >= 0.95),
        "tmaze128": ("≥ 95% on ≥ 4 of 5", lambda r: r["eval_success"] >= 0.95),
        "tmaze256": ("≥ 95% on ≥ 3 of 5", lambda r: r["eval_success"] >= 0.95),
        "cartpole": ("mean ≥ 475 over seeds 1–5, none below 400", lambda r: r["eval_return"] >= 400),
    }
    lines = [
        "## The LSTM on memory tasks: what makes it learn (issue 27)",
        "",
        "Script: `python experiments/lstm_memory.py TASK --settings NAME ... [--name FILE]` (results in "
        "`experiments/results/lstm_memory.json`). Each task is a shipped config at its "
        "budget plus the setting's overrides: `popgym_first` is `configs/popgym.yaml` on RepeatFirstMedium (5M), "
        "`tmaze128` is `configs/tmaze_long.yaml` with zero gate biases before the setting (2M), "
        "`tmaze192` the same at L = 192 (item 3; rows that name `trainer.gradient_horizon=64` cut every gradient at "
        "segment boundaries, the others run it through the whole rollout), `tmaze256` the same at L = 256 with "
        "`experiments/long_reach.py`'s rollouts (32,768 agent-steps, "
        "8,192-step minibatches, lr 1e-3, γ 0.999; still `bptt_horizon` 64 and `gradient_horizon=episode`, 5M), "
        "`minigrid` is `configs/minigrid_memory.yaml` with the LSTM in place of its GRU (3M), `cartpole` is "
        "`configs/cartpole_novel.yaml` (100k). `lstm_chronoN` is `policy.core=lstm policy.chrono_tmax=N` (chrono "
        "initialisation: forget-gate biases log U(1, N − 1), input-gate biases their negative; the LSTM's default "
        "since issue 27, with N = 128), `lstm_chrono128_log` spreads log(u) evenly over [0, log 127] instead "
        "(`policy.chrono_spread=log`), `lstm` is the LSTM with every bias at 0 (`policy.chrono_tmax=0`, the old "
        "default; its 2M `popgym_first` row is the baseline of item 1's one-change probes on seed 1, the rows that "
        "name one more setting), `ln_lstm` the layer-normalised LSTM cell of `experiments/ln_lstm.py` (a core of a "
        "user's own; zero biases) and `ln_lstm_chrono128` the same with chrono gates. "
        "`score` is the "
        "final policy on fresh episodes (`carrystate.evaluate`: 100 for POPGym and CartPole, returns; 300 for "
        "the T-maze, success), `last 10%` the mean per-batch return over the last tenth of training. Runs made "
        "two or three at a time on this 2-core machine beside other work, so seconds are not speeds. Seeds fixed "
        "before any run; every run made is listed.",
        "",
        "| task | setting | agent-steps | target | seeds at target | score per seed | mean score | last 10% per seed "
        "| s per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["task"], r["setting"], r["budget"], tuple(r["extra"])) for r in rows))
    for task, setting, budget, extra in keys:
        same = (task, setting, budget, extra)
        rs = sorted((r for r in rows if (r["task"], r["setting"], r["budget"], tuple(r["extra"])) == same),
                    key=lambda r: r["seed"])  # fmt: skip
        target, hit = targets.get(task, ("(item 3: no target)", lambda r: r["eval_success"] >= 0.95))
        named = setting + "".join(f", {e}" for e in extra)
        lines.append(
            f"| {task} | {named} | {budget:,} | {target} | {sum(map(hit, rs))} of {len(rs)} | "
            + " / ".join(f"{r['seed']}: {r['score']:.2f}" for r in rs)
            + f" | {np.mean([r['score'] for r in rs]):.2f} | "
            + " / ".join(f"{r['last10']:.2f}" for r in rs if r["last10"] is not None)
            + f" | {np.mean([r['wall_s'] for r in rs]):.0f} |"
        )
    return lines + [""]


def cartpole_sweep_section(data) -> list[str]:
    names = list(dict.fromkeys(k for t in data["trials"] for k in t["params"]))
    lines = [
        "## A sweep of CartPole without velocity, and its best config against the shipped one (issue 25)",
        "",
        "Commands: `carrystate sweep configs/cartpole_novel.yaml --out SWEEP_DIR` (the config's own `sweep` section: "
        "TPE over the settings below, 12 trials, seeds 101 and 102 per trial, each scored by its final policy on 100 "
        "fresh episodes, median pruning on the training return), then `python experiments/sweep_cartpole.py "
        "SWEEP_DIR`, which trains the sweep's `best.yaml` (kept as `experiments/results/sweep_cartpole_best.yaml`) "
        "and the shipped config on seeds 1–5 and scores each on 100 fresh episodes. Trials ran one at a time beside "
        "other work on this 2-core machine, so seconds are not speeds.",
        "",
        "| trial | state | " + " | ".join(f"`{n}`" for n in names) + " | score | seed 101 | seed 102 | s |",
        "|---" * (5 + len(names)) + "|",
    ]
    fmt = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    for t in data["trials"]:
        lines.append(
            f"| {t['number']} | {t['state']} | "
            + " | ".join(fmt(t["params"].get(n)) for n in names)
            + f" | {fmt(t['value'])} | {fmt(t['seeds'].get('seed_101'))} | {fmt(t['seeds'].get('seed_102'))} | "
            + f"{fmt(t['seconds'] and round(t['seconds']))} |"
        )
    lines += [
        "",
        "| config | return per seed (1–5) | mean | lowest | target (mean ≥ 475, none below 400) |",
        "|---|---|---|---|---|",
    ]
    names = {"best": "the sweep's best.yaml", "shipped": "shipped when the sweep ran (chrono gates off)"}
    for config in ("best", "shipped"):
        rs = sorted((r for r in data["rows"] if r["config"] == config), key=lambda r: r["seed"])
        if not rs:
            continue
        vals = [r["eval_return"] for r in rs]
        met = "met" if np.mean(vals) >= 475 and min(vals) >= 400 and len(vals) == 5 else "not met"
        lines.append(
            f"| {names[config]} | " + " / ".join(f"{v:.1f}" for v in vals) + f" | {np.mean(vals):.1f} | "
            f"{min(vals):.1f} | {met} |"
        )
    plots = [("history", "each trial's score and the best so far"), ("importances", "what each setting explains")]
    plots.append(("curves", "each trial's running objective, as the pruner saw it"))
    for name, alt in plots:  # the sweep's own report.html plots, copied from its folder
        if (PLOTS / f"sweep_cartpole_{name}.png").exists():
            lines += ["", f"![{alt}](plots/sweep_cartpole_{name}.png)"]
    return lines + [""]


def lstm_gru_reach_section(rows) -> list[str]:
    lags = [1, 4, 16, 32, 63]
    lines = [
        "## Gradient reach and staleness of the LSTM and the GRU on RepeatFirstMedium (issue 27)",
        "",
        "Script: `python experiments/lstm_gru_reach.py` (results in `experiments/results/lstm_gru_reach.json`): "
        "`configs/popgym.yaml` on RepeatFirstMedium with 8,192-step rollouts (two segments per agent, so the staleness "
        "diagnostic has a previous segment to replay), seed 1, 2M agent-steps, with the LSTM's gate biases at zero, "
        "the LSTM with its default chrono gates, and the GRU; staleness measured on 32 segments after every update. "
        "Gradient reach (`carrystate probe`'s measure) is the mean norm of the gradient of an agent's last-step loss "
        "with respect to the observation k steps earlier, through the training unroll, on fresh rollouts, for the "
        "policy as built and as trained; the table gives it relative to lag 0 (k = 63 is the segment's first "
        "step). `state distance`, `kl first` and `value gap first` are the medians over training of "
        "`memory/state_distance`, `memory/kl_first` and `memory/value_gap_first`.",
        "",
        "| core | score | last 10% | reach / reach at lag 0, as built: "
        + " / ".join(f"k={k}" for k in lags)
        + " | as trained | state distance | kl first | value gap first |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rel = lambda curve: " / ".join(f"{curve[k] / curve[0]:.0e}" for k in lags)  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['core']} | {r['eval_return']:.2f} | {r['last10']:.2f} | {rel(r['reach_before'])} | "
            f"{rel(r['reach_after'])} | {r['state_distance']:.3f} | {r['kl_first']:.1e} | {r['value_gap_first']:.3f} |"
        )
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, key, title in zip(axes, ("reach_before", "reach_after"), ("as built", "after 2M agent-steps")):
        for r in rows:
            curve = np.array(r[key])
            ax.semilogy(np.arange(len(curve)), curve / curve[0], label=r["core"])
        ax.set_xlabel("lag k (steps back from the segment's last step)")
        ax.set_title(title)
    axes[0].set_ylabel("gradient reach / reach at lag 0")
    axes[0].legend(fontsize=8)
    return lines + _save_plot(fig, "lstm_gru_reach", "gradient reach of the three cores")


def precision_section(rows) -> list[str]:
    lines = [
        "## bf16 against fp32: replay against rollout, and learning (issue 26)",
        "",
        "Script: `python experiments/bf16_exactness.py` (results in `experiments/results/bf16_exactness.json`). "
        "Policies of the shipped size (MLP encoder, hidden 128, one and two layers; fresh weights, every other pattern "
        "with the heads scaled to a trained policy's logits and values, ×100 and ×10), 16 agents × 4 "
        "segments of 64 steps, each step ending an agent's episode with probability 1/40, 10 end patterns per row: "
        "the largest |replay − rollout| of the taken actions' log-probs and of the values, absolute and over the "
        "largest |entry| compared, and of the start states (a segment's replayed end state against the start state "
        "stored for the agent's next segment) over the largest state entry. `packed` and `triton` refuse bf16.",
        "",
        "| precision | core | unroll | log-prob gap | value gap | value gap / max value | state gap / max state |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['core']} | {r['unroll']} | {r['logprob']:.1e} | {r['value']:.1e} | "
            f"{r['value_rel']:.1e} | {r['state_rel']:.1e} |"
        )
    # the bf16 rows of the first runs; the rerun of the same seeds on later code (`--name lstm_memory_bf16_rerun`)
    # gets a row of its own beside the same fp32 seeds
    rerun = load("lstm_memory_bf16_rerun", [])
    first = load_all("lstm_memory", skip=("lstm_memory_bf16_rerun",))
    learn = [(r, "fp32") for r in first if not r["extra"]]
    learn += [(r, "bf16") for r in first if r["extra"] == ["trainer.precision=bf16"]]
    arena = [(r, "fp32") for n in ("mettagrid_arena_cpp", "mettagrid_arena_cpp_b") for r in load(n, [])]
    arena += [(r, "bf16") for r in load("mettagrid_arena_bf16", [])]
    bf16_tasks = {(r["task"], r["setting"], r["budget"]) for r, p in learn if p == "bf16"}
    table = []
    for task, setting, budget in sorted(bf16_tasks):
        same = (task, setting, budget)
        per = {
            p: sorted(
                (r for r, q in learn if q == p and (r["task"], r["setting"], r["budget"]) == same),
                key=lambda r: r["seed"],
            )  # fmt: skip
            for p in ("fp32", "bf16")
        }
        table.append((f"{task} ({setting}, {budget:,})", per, lambda r: r["score"]))
        again = sorted((r for r in rerun if (r["task"], r["setting"], r["budget"]) == same), key=lambda r: r["seed"])
        if again:
            table.append((f"{task} ({setting}, {budget:,}), bf16 rerun at e6d5136", {**per, "bf16": again},
                          lambda r: r["score"]))  # fmt: skip
    if any(p == "bf16" for _, p in arena):
        per = {p: sorted((r for r, q in arena if q == p), key=lambda r: r["seed"]) for p in ("fp32", "bf16")}
        table.append(("MettaGrid arena (shipped, 5,013,504): trained / untrained return", per,
                      lambda r: r["final_return"] / r["untrained_return"]))  # fmt: skip
    if table:
        lines += [
            "",
            "Learning, same seeds (`experiments/lstm_memory.py TASK --set trainer.precision=bf16 --name "
            "lstm_memory_bf16`, the rerun with `--name lstm_memory_bf16_rerun`, `experiments/mettagrid_arena.py "
            "--set trainer.precision=bf16 --name mettagrid_arena_bf16`); the fp32 rows are the runs of the same "
            "config listed in the sections above. "
            "Score: fresh episodes (CartPole return, T-maze success), MettaGrid trained over untrained return.",
            "",
            "| task | fp32 per seed | fp32 mean | bf16 per seed | bf16 mean |",
            "|---|---|---|---|---|",
        ]
        for name, per, score in table:
            cells = []
            for p in ("fp32", "bf16"):
                vals = [score(r) for r in per[p]]
                cells += [" / ".join(f"{r['seed']}: {v:.2f}" for r, v in zip(per[p], vals)),
                          f"{np.mean(vals):.2f}" if vals else ""]  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def load_all(prefix: str, skip: tuple[str, ...] = ()) -> list:
    """The rows of every results file named `prefix*.json` (experiments run side by side write one each), but for
    the files named in `skip`."""
    rows = []
    for path in sorted(RESULTS.glob(f"{prefix}*.json")):
        if path.stem not in skip:
            rows += json.loads(path.read_text())
    return rows


# result name, the script named above its section (None: the section names its own), the section
SECTIONS = [
    ("staleness", "staleness.py", staleness_with_seeds_section),
    ("long_reach", "long_reach.py", long_reach_section),
    ("tmaze_sweep", "tmaze_sweep.py", sweep_section),
    ("settings_ablation", None, settings_ablation_section),
    ("tmaze_memory", None, tmaze_memory_section),
    ("cartpole_vs_sb3", None, cartpole_section),
    ("popgym_5m", None, popgym_5m_section),
    ("popgym_vs_sb3", None, popgym_section),
    ("mettagrid_arena", None, mettagrid_section),
    ("mettagrid_vs_pufferlib", None, mettagrid_vs_pufferlib_section),
    ("minigrid_memory_gru", None, minigrid_section),
    ("lstm_memory", None, lstm_memory_section),
    ("sweep_cartpole", None, cartpole_sweep_section),
    ("lstm_gru_reach", None, lstm_gru_reach_section),
    ("bf16_exactness", None, precision_section),
]


def main():
    lines = [
        "# Experiments",
        "",
        "Each table is produced by the script named in its section (`experiments/*.py`) on this project's "
        "2-core CPU machine (one torch thread per run) on 2026-11-26 (the issue 13, 15 and 16 sections on "
        "2026-11-30, the issue 25, 26 and 27 sections on 2026-12-07), then rendered by `python "
        "experiments/report.py`. Raw numbers: "
        '`experiments/results/*.json`. The findings follow the tables, under "What the numbers say", and open '
        "with a table of where carrystate is ahead, level or behind sb3-contrib's RecurrentPPO.",
        "",
    ]
    for name, script, section in SECTIONS:
        rows = load_all(name) if name == "lstm_memory" else load(name)
        if rows:
            lines += ([f"Script: `python experiments/{script}`.", ""] if script else []) + section(rows)
    notes = ROOT / "experiments" / "findings.md"
    if notes.exists():
        lines += [notes.read_text()]
    (ROOT / "EXPERIMENTS.md").write_text("\n".join(lines))
    print("wrote EXPERIMENTS.md")


if __name__ == "__main__":
    main()
