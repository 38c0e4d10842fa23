"""The lab's ``llm-gateway`` commands, registered through entry points (group ``llm_gateway.commands``,
declared in ``pyproject.toml``): ``profile``, ``train``, ``evaluate``, ``local-stack``, ``make-variant``,
``heal-variant``.

Each is a :class:`LabCommand` (the shape :class:`gateway.cli.Command` expects): a help line, its
arguments, and a ``run`` that imports the work only when the command runs, so ``llm-gateway --help``
stays quick and loading this module costs nothing but argparse.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LabCommand:
    """One ``llm-gateway`` subcommand: ``help`` (one line), ``arguments`` (adds its options to the
    subparser), ``action`` (runs it on the parsed arguments, returns the exit status)."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    action: Callable[[argparse.Namespace], int]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        self.arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        return int(self.action(args))


def _one_blas_thread(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``action`` with BLAS limited to one thread: the router's matrices are tiny, and a BLAS spinning
    threads on every core fights the vLLM servers beside it (`train` on 690 prompts took 5 min 8 s with
    OpenBLAS's default threads next to the busy local stack, 23 s with one)."""

    def run(args: argparse.Namespace) -> int:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return action(args)

    return run


# -- profile --------------------------------------------------------------------------------------


def _profile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway base URL")
    p.add_argument("--arms", required=True, help="comma-separated arm names")
    p.add_argument("--tasks", default="gsm8k,mmlu,humaneval,mtbench", help="comma-separated prompt sets")
    p.add_argument("--per-task", type=int, default=50, help="prompts per task (a fixed sample per seed)")
    p.add_argument(
        "--split", choices=["all", "train", "test"], default="all", help="which split of each task's prompts"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt sample (the same seed, the same prompts)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="concurrent requests per arm; 1 with --backend-metrics: one request at a time in all, and "
        "each row records its own spec-decode draft/accepted tokens",
    )
    p.add_argument("--max-tokens", type=int, default=256, help="max_tokens of every profiled request")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--out", required=True, help="JSONL file (appended; finished pairs are skipped)")
    p.add_argument(
        "--backend-metrics", help="NAME=URL,... of vLLM backends to read spec-decode counters from (optional)"
    )


def _profile(args: argparse.Namespace) -> int:
    from lab.profiling import profile_command

    return profile_command(args)


profile = LabCommand(
    "measure every arm on offline prompt sets through the gateway (resumable)", _profile_arguments, _profile
)


# -- train, evaluate ------------------------------------------------------------------------------


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", nargs="+", help="profile JSONL file(s) from `llm-gateway profile`")
    p.add_argument(
        "--from-log", metavar="LOG", help="decision log (routing.decision_log): learn from served requests too"
    )
    p.add_argument("--feedback", metavar="FEEDBACK", help="ratings (feedback.path) joined to --from-log by request id")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split and the cross-validation folds")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (grouped by prompt)")
    p.add_argument(
        "--encoder",
        choices=["minilm", "none"],
        default="none",
        help="prompt embedding: none (cheap prompt features only, ~0.1 ms per routed request, like the shipped "
        "default artifact) or minilm (adds a MiniLM embedding, about 8 ms; needs the 'minilm' extra)",
    )


def _train(args: argparse.Namespace) -> int:
    from lab.train import train_command

    return train_command(args)


train = LabCommand(
    "fit the learned router's predictors from profiles and/or logged traffic; write an artifact",
    _train_arguments,
    _one_blas_thread(_train),
)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", nargs="+", required=True, help="profile JSONL file(s) to evaluate on")
    p.add_argument("--artifact", required=True, help="the trained router artifact directory (or a shipped name)")
    p.add_argument("--out", required=True, help="directory for evaluation{,-cv}.{json,md,png}")
    p.add_argument(
        "--cv", type=int, default=0, metavar="K", help="also K-fold cross-validate over every profiled prompt"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split and the cross-validation folds")


def _evaluate(args: argparse.Namespace) -> int:
    from lab.evaluate import evaluate_command

    return evaluate_command(args)


evaluate = LabCommand(
    "score a router artifact on held-out profiled prompts", _evaluate_arguments, _one_blas_thread(_evaluate)
)


# -- local-stack ----------------------------------------------------------------------------------


def _local_stack_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="deploy/local/gateway.yaml", help="the gateway's YAML configuration")
    p.add_argument("--backends", default="deploy/local/backends.yaml", help="the vLLM-CPU servers to start (YAML)")
    p.add_argument(
        "--servers", help="comma-separated backend names to start (default: all in --backends); bring arms up in turns"
    )
    p.add_argument("--log-dir", help="backend logs (default $LLM_GATEWAY_HOME/logs)")
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for the backends")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port")
    p.add_argument("--access-log", action="store_true", help="log every request (costs CPU under load)")


def _local_stack(args: argparse.Namespace) -> int:
    from lab.stack import local_stack_command

    return local_stack_command(args)


local_stack = LabCommand(
    "start local vLLM-CPU backends, then the gateway (Ctrl-C, SIGTERM or SIGHUP stops all)",
    _local_stack_arguments,
    _local_stack,
)


# -- make-variant, heal-variant -------------------------------------------------------------------


def _backend_python() -> Path:
    from lab.launcher import home_dir

    return home_dir() / "vllm-venv" / "bin" / "python"


def _make_variant_arguments(p: argparse.ArgumentParser) -> None:
    from lab.variant import add_make_variant_arguments

    add_make_variant_arguments(p, _backend_python())


def _make_variant(args: argparse.Namespace) -> int:
    from lab.variant import make_variant_command

    return make_variant_command(args)


def _heal_variant_arguments(p: argparse.ArgumentParser) -> None:
    from lab.variant import add_heal_variant_arguments

    add_heal_variant_arguments(p, _backend_python())


def _heal_variant(args: argparse.Namespace) -> int:
    from lab.variant import heal_variant_command

    return heal_variant_command(args)


make_variant = LabCommand(
    "build a layer-pruned variant of a model (Block Influence), served by vLLM unmodified",
    _make_variant_arguments,
    _make_variant,
)
heal_variant = LabCommand(
    "heal a layer-pruned variant by distillation from its full model (resumable)",
    _heal_variant_arguments,
    _heal_variant,
)
