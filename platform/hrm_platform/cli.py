"""`hrm` console script: data / train / evaluate / export / serve / serve-env / predict / demo / config.

    hrm config --keys                                       # every setting: key, default, description
    hrm train --config jobs/configs/demo.yaml train.epochs=3
    hrm evaluate --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003 --out artifacts/eval
    hrm export --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003
    hrm serve --checkpoint artifacts/demo/report/runs/demo-fold2/epoch_0003
    eval "$(hrm serve-env)" && serve run deployments/serve_config.yaml
    hrm predict --url http://127.0.0.1:8000 --bars bars.csv
    hrm demo

Each command parses its arguments here and hands a typed config to one library function; heavy modules
(torch, ray) are imported inside the handler so that `hrm --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hrm_platform.cli_args import (
    CommandParser,
    PrintVersion,
    add_config_args,
    add_data_arg,
    add_verbose_arg,
    version_text,
)
from hrm_platform.config import PARQUET_ROWS_PER_FILE, ConfigError, PlatformConfig, ServeConfig, load_config

__all__ = ["main", "version_text"]

DEMO_PRESET = Path("jobs/configs/demo.yaml")  # relative to the repository root, where `make demo` runs
_SERVE_DEFAULTS = ServeConfig.model_fields  # `hrm predict` defaults to the server `hrm serve` starts


def _config(args: argparse.Namespace) -> PlatformConfig:
    """The preset plus overrides; `--data FILE` is an override too, so it is validated like any other."""
    overrides = list(args.overrides)
    if getattr(args, "data", None) is not None:
        overrides += ["data.source=file", f"data.path={args.data}"]
    return load_config(args.config, overrides)


def _cmd_data(args: argparse.Namespace) -> int:
    if args.to_parquet is not None:
        return _data_to_parquet(args)
    if args.rows_per_file is not None:
        print("hrm data: --rows-per-file goes with --to-parquet DIR", file=sys.stderr)
        return 2
    from hrm_platform.data.dataset import build_datasets, describe_datasets

    try:
        bundle = build_datasets(_config(args).data)
    except ValueError as error:  # OHLCVError, or too few bars for the window/horizon/splits
        print(f"hrm data: {error}", file=sys.stderr)
        return 2
    print(describe_datasets(bundle))
    return 0


def _data_to_parquet(args: argparse.Namespace) -> int:
    from hrm_platform.data.parquet_export import export_market

    rows_per_file = PARQUET_ROWS_PER_FILE if args.rows_per_file is None else args.rows_per_file
    try:
        print(export_market(_config(args).data, args.to_parquet, rows_per_file))
    except (ValueError, OSError) as error:  # OHLCVError, a non-empty DIR, a bucket that cannot be written
        print(f"hrm data: {error}", file=sys.stderr)
        return 2
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    config = _config(args)  # a bad override fails before torch and Ray are imported
    from hrm_platform.data.ohlcv import OHLCVError
    from hrm_platform.training.trainer import TrainingError, print_summary, run_training

    try:
        summary = run_training(config, quiet=args.json, verbose=args.verbose)
    except TrainingError as error:
        print(f"hrm train: {error}", file=sys.stderr)
        return 1
    except OHLCVError as error:  # data.loader=ray_data checks every file on the driver before training starts
        print(f"hrm train: {error}", file=sys.stderr)
        return 2
    print_summary(summary, as_json=args.json)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from hrm_platform.evaluation.split_evaluation import evaluate_checkpoint
    from hrm_platform.storage import CheckpointError, local_checkpoint

    if (args.checkpoint is None) == (args.walk_forward is None):
        print("hrm evaluate: give --checkpoint (backtest it on its test split) or --walk-forward K (train and "
              "backtest K out-of-sample folds), not both", file=sys.stderr)
        return 2
    if args.walk_forward is not None:
        return _walk_forward(args)
    if args.config is not None:
        print("hrm evaluate: --config goes with --walk-forward; a checkpoint is evaluated with its own config "
              "(change eval.*, data.* or baselines.* with overrides)", file=sys.stderr)
        return 2
    try:
        checkpoint = local_checkpoint(args.checkpoint)  # a URI: its verified copy in the cache (storage.py)
        report = evaluate_checkpoint(checkpoint, args.out, data_path=args.data, overrides=args.overrides)
    except (CheckpointError, ValueError) as error:  # unreadable checkpoint, OHLCVError, too few bars for the split
        print(f"hrm evaluate: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _walk_forward(args: argparse.Namespace) -> int:
    from hrm_platform.evaluation.walk_forward import run_walk_forward
    from hrm_platform.evaluation.walk_forward_report import write_walk_forward_report
    from hrm_platform.training.trainer import TrainingError

    if args.walk_forward < 1:
        print(f"hrm evaluate: --walk-forward needs at least 1 fold, got {args.walk_forward}", file=sys.stderr)
        return 2
    config = _config(args)
    try:
        runs = run_walk_forward(config, args.walk_forward, args.out, progress=_progress_line, verbose=args.verbose)
    except (TrainingError, ValueError) as error:  # ConfigError (too few bars for K folds), OHLCVError
        print(f"hrm evaluate: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    print(write_walk_forward_report(runs, config, args.out).summary())
    return 0


def _progress_line(line: str) -> None:
    print(f"  {line}", flush=True)


def _cmd_export(args: argparse.Namespace) -> int:
    from hrm_platform.serving.engine import EngineError
    from hrm_platform.serving.export import export_engine
    from hrm_platform.serving.variants import VariantError
    from hrm_platform.storage import CheckpointError, local_checkpoint, publish_export

    try:
        named = args.variants or []  # `--variants a b key=value` puts the override here: take it back out
        variants = [name for name in named if "=" not in name] or None
        overrides = [*args.overrides, *(item for item in named if "=" in item)]
        checkpoint = local_checkpoint(args.checkpoint)
        report = export_engine(checkpoint, variants=variants, overrides=overrides, progress=_progress_line)
        publish_export(checkpoint, args.checkpoint)  # a URI's export goes back beside it, for its replicas
    except (CheckpointError, EngineError, VariantError, OSError, ValueError) as error:
        # OSError: a read-only checkpoint dir; ValueError: too few held-out windows, a bad export.* override
        print(f"hrm export: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from hrm_platform.serving.ingress import check_port_free
    from hrm_platform.storage import CheckpointError, local_checkpoint

    serve_config = _config(args).serve
    check_port_free(serve_config.host, serve_config.port)  # before Ray starts, not in HAProxy minutes later
    try:  # also before Ray starts: a missing or damaged checkpoint, a URI that cannot be read or verified
        checkpoint = local_checkpoint(args.checkpoint, serve_config.checkpoint_cache_dir, verify=True)
    except CheckpointError as error:
        print(f"hrm serve: {error}", file=sys.stderr)
        return 2
    from hrm_platform.serving.lifecycle import serve_forever

    return serve_forever(checkpoint, serve_config)


def _cmd_serve_env(args: argparse.Namespace) -> int:
    import shlex

    from hrm_platform.local_ray import LOOPBACK_ENV
    from hrm_platform.serving.ingress import ingress_env

    try:
        environment = LOOPBACK_ENV | ingress_env(_config(args).serve)
    except (ValueError, RuntimeError, OSError) as error:  # a bad host, no HAProxy, a wrapper not executable
        print(f"hrm serve-env: {error}", file=sys.stderr)
        return 2
    for name, value in environment.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import os

    from hrm_platform.data.ohlcv import OHLCVError
    from hrm_platform.serving.client import ClientError, predict_from_file, unauthorized_hint

    token = os.environ.get(args.token_env) or None
    try:
        print(predict_from_file(args.url, args.bars, args.position, args.max_segments, token=token))
    except OHLCVError as error:  # the user's file: bad input, like every other command's
        print(f"hrm predict: {error}", file=sys.stderr)
        return 2
    except ClientError as error:  # the server: unreachable, or it refused the request
        print(f"hrm predict: {error}", file=sys.stderr)
        if error.status == 401:
            print(f"hrm predict: {unauthorized_hint(args.token_env, token_sent=token is not None)}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from hrm_platform.demo import check_before_training, run_demo

    config = _config(args)
    try:
        check_before_training(config)  # a busy port or too little held-out data fails now, not after training
    except ValueError as error:  # ConfigError, or a data file that cannot be read (OHLCVError)
        print(f"hrm demo: {error}", file=sys.stderr)
        return 2
    return run_demo(config, keep_serving=args.keep_serving, out_dir=args.out, verbose=args.verbose)


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from hrm_platform.config_text import keys_table

    config = _config(args)  # a bad override fails here like in every other command
    if args.keys:
        print(keys_table(config))
    else:
        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hrm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action=PrintVersion)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    data = commands.add_parser("data", help="build the datasets and print a summary")
    add_config_args(data)
    add_data_arg(data)
    data.add_argument(
        "--to-parquet", metavar="DIR|URI", default=None,
        help="write the market as partitioned Parquet (DIR/symbol=<SYMBOL>/part-*.parquet, data/parquet.py) into a "
        "new or empty folder or URI, for data.path=DIR (data.loader=ray_data reads it one instrument per task)",
    )
    data.add_argument(
        "--rows-per-file", type=int, default=None, metavar="N",
        help=f"rows per part file with --to-parquet (default: {PARQUET_ROWS_PER_FILE:,})",
    )
    data.set_defaults(handler=_cmd_data)

    train = commands.add_parser("train", help="train on an embedded local Ray cluster")
    add_config_args(train)
    add_data_arg(train)
    train.add_argument("--json", action="store_true", help="print a machine-readable summary only")
    add_verbose_arg(train)
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="backtest a checkpoint on its test split, or walk forward over K out-of-sample folds",
        description="With --checkpoint: backtest it and trained baselines on its test split. With --walk-forward "
        "K: train a model per fold (Ray Train, folds run concurrently as the cluster has room) on the history "
        "before each of K consecutive test periods, and report every fold and the folds pooled.",
    )
    evaluate.add_argument("--checkpoint", metavar="DIR|URI", default=None, help="checkpoint to backtest (storage.py)")
    evaluate.add_argument("--walk-forward", type=int, default=None, metavar="K", help="folds to train and test")
    evaluate.add_argument("--config", type=Path, default=None, help="YAML preset for --walk-forward")
    add_data_arg(evaluate)
    evaluate.add_argument(
        "--out", type=Path, metavar="DIR", default=Path("artifacts/eval"), help="folder for metrics, plots, report.md"
    )
    evaluate.add_argument(
        "overrides", nargs="*", metavar="section.key=value",
        help="with --checkpoint: eval.*, data.* and baselines.* changes, e.g. eval.cost_bps=5; with "
        "--walk-forward: any setting, e.g. train.epochs=2",
    )
    add_verbose_arg(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    export = commands.add_parser("export", help="measure engine variants and write the serving manifest")
    export.add_argument("--checkpoint", metavar="DIR|URI", required=True, help="checkpoint to export (storage.py)")
    export.add_argument(
        "--variants", nargs="*", default=None, metavar="NAME",
        help="variants to try, e.g. eager jit_int8 (the registry is in serving/variants.py); none: all that apply",
    )
    export.add_argument(
        "overrides", nargs="*", metavar="export.key=value", help="export settings, e.g. export.min_eval_windows=100"
    )
    export.set_defaults(handler=_cmd_export)

    serve = commands.add_parser("serve", help="serve a checkpoint over HTTP until interrupted")
    add_config_args(serve)
    serve.add_argument("--checkpoint", metavar="DIR|URI", required=True, help="checkpoint to serve (storage.py)")
    serve.set_defaults(handler=_cmd_serve)

    serve_env = commands.add_parser(
        "serve-env", help="print the environment (export lines) `ray start` / `serve run` need for serve.* ingress",
        description="Serve reads its ingress mode from the environment of the Ray cluster when it starts. "
        "`eval \"$(hrm serve-env)\"` before `ray start` or `serve run` gives it the HAProxy ingress bound to "
        "serve.host (or Serve's Python proxy with serve.fast_ingress=false) and keeps Ray on loopback.",
    )
    add_config_args(serve_env)
    serve_env.set_defaults(handler=_cmd_serve_env)

    predict = commands.add_parser("predict", help="send bars from a CSV/Parquet file to a running server")
    predict.add_argument(
        "--url", default=f"http://{_SERVE_DEFAULTS['host'].default}:{_SERVE_DEFAULTS['port'].default}",
        help="base URL of the server",
    )
    predict.add_argument(
        "--bars", type=Path, metavar="FILE", required=True,
        help="OHLCV CSV/Parquet; its latest bars per symbol are sent",
    )
    predict.add_argument(
        "--position", type=float, default=0.0, help="current position: -1 full short .. 0 flat .. 1 full long"
    )
    predict.add_argument(
        "--max-segments", type=int, default=None, help="ACT segments at most (fewer: faster); none: the model's limit"
    )
    predict.add_argument(
        "--token-env", default=_SERVE_DEFAULTS["auth_token_env"].default,
        help="env var holding the bearer token, if the server requires one",
    )
    predict.set_defaults(handler=_cmd_predict)

    demo = commands.add_parser("demo", help="data -> train -> evaluate -> export -> serve -> requests")
    add_config_args(demo)
    # The demo preset sizes the model for a few minutes on 2 CPUs; the built-in defaults are the serving size.
    demo.set_defaults(config=DEMO_PRESET if DEMO_PRESET.is_file() else None)
    add_data_arg(demo)
    demo.add_argument(
        "--out", type=Path, metavar="DIR", default=Path("artifacts/demo"), help="folder for the report and summary.json"
    )
    demo.add_argument(
        "--keep-serving", action="store_true", help="keep the server up after the demo (Ctrl-C stops it)"
    )
    add_verbose_arg(demo)
    demo.set_defaults(handler=_cmd_demo)

    config = commands.add_parser(
        "config", help="print the merged config (preset + overrides) as YAML, or every key with --keys",
        description="Without --keys: the configuration a command would run with, as YAML (a preset for --config). "
        "With --keys: every setting as section.key, its default and what it does.",
    )
    add_config_args(config)
    config.add_argument("--keys", action="store_true", help="list every key with its default and description")
    config.set_defaults(handler=_cmd_config)

    from hrm_platform.runs import add_runs_command  # argparse, json and config only: --help stays instant
    from hrm_platform.serving.replay import add_replay_command  # argparse and config only, likewise

    add_runs_command(commands)
    add_replay_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as error:
        print(f"hrm {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
