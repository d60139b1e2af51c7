"""Typed configuration: with config_serving.py (the serve and export sections), the one place where every
default lives.

A run is described by `PlatformConfig`, made of four sections (data, model, train, serve) plus evaluation.
Every model is strict (`extra="forbid"`): an unknown key or a bad value fails at load time with a message
that names the key and the value.

    config = load_config("jobs/configs/demo.yaml", ["train.epochs=3", "model.d_model=64"])

Ray hands workers plain dicts; a worker turns one back with `PlatformConfig.model_validate(config_dict)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from hrm_platform.config_serving import ExportConfig, ServeConfig
from hrm_platform.config_serving import Strict as _Strict
from hrm_platform.config_text import ConfigError, apply_override, describe_error, read_yaml

# ConfigError is raised by everything here (defined beside the text forms that raise it most); the serving and
# export sections live in config_serving.py and are part of this module's interface.
__all__ = ["ConfigError", "ExportConfig", "ServeConfig"]


PARQUET_ROWS_PER_FILE = 100_000  # rows per part file that `hrm data --to-parquet DIR` writes
RAY_DATA_CPUS = 1  # logical CPUs an embedded cluster adds beside the training workers for data.loader=ray_data's tasks


class DataConfig(_Strict):
    """Where bars come from and how they become windows and labels."""

    source: Literal["synthetic", "file"] = "synthetic"
    path: str | None = Field(
        None,
        description="when source='file': an OHLCV CSV or Parquet file, or a partitioned-Parquet market folder or "
        "URI (DIR/symbol=<SYMBOL>/part-*.parquet, as `hrm data --to-parquet DIR` writes; s3://, gs://, ...)",
    )
    loader: Literal["memory", "ray_data"] = Field(
        "memory",
        description="memory: every training worker builds the whole dataset in its RAM (small data, fastest start); "
        "ray_data: Ray Data tasks read a partitioned-Parquet data.path one instrument per task and stream windows "
        "to each worker's shard (data beyond one machine's memory; data/ray_data.py)",
    )
    block_windows: int = Field(1024, ge=1, description="ray_data: windows per block a Ray Data task yields")
    shuffle_buffer: int = Field(
        8192, ge=0, description="ray_data: windows in each worker's local shuffle buffer (0 = stream order)"
    )
    prefetch_batches: int = Field(2, ge=0, description="ray_data: batches each worker prepares ahead")
    n_instruments: int = Field(4, ge=1, le=256, description="synthetic instruments")
    n_bars: int = Field(6000, ge=200, description="synthetic bars per instrument")
    seed: int = 7
    bars_per_year: float | None = Field(
        None,
        gt=0,
        description="bar frequency for annualising; None = inferred from the timestamps (data/frequency.py). An "
        "override more than 2x off the inferred frequency is refused",
    )
    signal_strength: float = Field(
        1.0,
        gt=0,
        le=20,
        description="synthetic market: scale of the predictable part (trend drift and mean reversion); 1 = the "
        "calibrated default (oracle 8-bar IC ~0.12, benchmarks/market_calibration.py), higher = an easier task "
        "(2: IC ~0.20, 4: ~0.30, 20: ~0.58, which restores the pre-calibration trend and mean reversion)",
    )
    window: int = Field(64, ge=4, le=1024, description="bars per model input window")
    horizon: int = Field(8, ge=1, description="bars ahead for the forward-return label")
    label_threshold: float = Field(
        0.5, gt=0, description="buy/sell when |forward return| > label_threshold * vol * sqrt(horizon)"
    )
    val_fraction: float = Field(0.15, ge=0, lt=0.5)
    test_fraction: float = Field(0.15, ge=0, lt=0.5)
    embargo: int | None = Field(None, ge=0, description="bars between splits; None = window + horizon")
    fold: int | None = Field(
        None,
        ge=0,
        description="walk-forward fold whose test period this data's test split is (0 = earliest); None = the "
        "val/test fractions split. Train and val then end an embargo before the fold (expanding window)",
    )
    folds: int = Field(4, ge=1, le=64, description="walk-forward folds over the out-of-sample period")
    oos_fraction: float = Field(
        0.5, gt=0, lt=1, description="share of each instrument's labelled bars that the folds' test periods cover"
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source == "file" and self.path is None:
            raise ValueError("data.path is required when data.source='file'")
        if self.loader == "ray_data" and self.source != "file":
            raise ValueError(
                "data.loader=ray_data reads a partitioned-Parquet market: write this one with "
                "`hrm data --to-parquet DIR`, then set data.source=file data.path=DIR"
            )
        if self.fold is not None and self.fold >= self.folds:
            raise ValueError(f"data.fold={self.fold} must be below data.folds={self.folds}")
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError(
                f"data.val_fraction + data.test_fraction = {self.val_fraction + self.test_fraction} "
                "leaves too little for training (must be < 0.8)"
            )
        return self

    @property
    def embargo_bars(self) -> int:
        return self.window + self.horizon if self.embargo is None else self.embargo


class ModelConfig(_Strict):
    """Model shape. `n_features` is not here: it comes from the feature spec of the data."""

    arch: Literal["hrm", "trm", "transformer"] = Field(
        "hrm",
        description="hrm: separate H and L stacks, x injected into both L and H updates' inputs via z_H + x; "
        "trm: one shared stack of l_layers blocks (h_layers must equal l_layers), x injected only into the z_L "
        "update; transformer: one stack of h_layers + l_layers blocks run once per segment on x, no carried state "
        "(the ablation of recurrence). All three share the segment contract, heads, ACT, export and serving",
    )
    gradient: Literal["one_step", "last_cycle"] = Field(
        "one_step",
        description="one_step: backward through the last L and the last H update only (HRM's approximation); "
        "last_cycle: full backward through the final H cycle (its l_cycles L updates and the H update), earlier "
        "cycles under no_grad (TRM). The transformer's single pass is always fully differentiated",
    )
    halting: Literal["q_learning", "bce"] = Field(
        "q_learning",
        description="q_learning: q_halt by BCE against 'the action is right' plus a bootstrapped q_continue "
        "(HRM); bce: q_halt's BCE alone and q_continue fixed at 0, so a sample halts when P(right) > 0.5 (TRM)",
    )
    d_model: int = Field(128, ge=8)
    n_heads: int = Field(4, ge=1)
    ff_mult: float = Field(2.0, gt=0)
    h_layers: int = Field(2, ge=1, description="transformer blocks in the slow H module")
    l_layers: int = Field(2, ge=1, description="transformer blocks in the fast L module")
    h_cycles: int = Field(2, ge=1)
    l_cycles: int = Field(2, ge=1)
    max_segments: int = Field(4, ge=1, description="M: deep-supervision segments; ACT limit at inference")
    halt_exploration: float = Field(
        1.0,
        ge=0,
        le=1,
        description="epsilon of ACT exploration: share of training samples forced to run uniform{2..M} segments "
        "before they may halt. Each batch runs to M segments anyway while any sample is still active, so a high "
        "epsilon costs no time and supervises the later segments on every kind of sample (at a low epsilon they "
        "stay undertrained: README, Model)",
    )
    rope_base: float = 10000.0
    share_parameters: bool = Field(False, description="H and L use one stack of blocks")
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"model.d_model / model.n_heads = {self.d_model // self.n_heads} must be even (rotary)")
        if self.arch == "trm" and self.h_layers != self.l_layers:
            raise ValueError(
                f"model.arch='trm' runs one shared stack: model.h_layers must equal model.l_layers "
                f"(got {self.h_layers}, {self.l_layers})"
            )
        if self.share_parameters and self.h_layers != self.l_layers:
            raise ValueError(
                f"model.share_parameters needs model.h_layers == model.l_layers (got {self.h_layers}, {self.l_layers})"
            )
        return self


class TrainConfig(_Strict):
    """Optimisation, Ray Train scaling and checkpointing."""

    name: str = Field("hrm", pattern=r"^[A-Za-z0-9_.-]+$")
    storage_path: str = Field("runs", description="local folder, or a shared/cloud URI on a cluster")
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(128, ge=1, description="per worker")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    quantity_loss_weight: float = Field(1.0, ge=0)
    q_loss_weight: float = Field(0.5, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_workers: int | tuple[int, int] = Field(
        2,
        description="DDP workers; [min, max] = elastic (Ray Train V2): starts with what the cluster has room for "
        "(at least min) and grows to max as nodes join, each resize continuing from the latest checkpoint",
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per worker (Ray sets OMP to 1)")
    validation_frequency: int = Field(1, ge=1, description="validate every N epochs")
    keep_checkpoints: int = Field(2, ge=1, description="best k checkpoints kept, by validation accuracy")
    max_failures: int = Field(2, ge=0)
    max_train_batches: int | None = Field(None, ge=1, description="cap batches per epoch (smoke runs)")
    seed: int = 0
    compile: bool = Field(
        False,
        description="torch.compile the segment's forward and backward for training (Inductor fuses the norms, "
        "rotary and activations); the first batch pays the compile, CPU and CUDA alike",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = Field(
        "default",
        description="torch.compile mode with train.compile; reduce-overhead also replays the compiled forward and "
        "backward from CUDA graphs (fewer host launches per segment; CUDA only)",
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="the device's dense bf16 peak for MFU; None = the published figure of a known GPU"
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="exponential moving average of the weights, updated after every training batch (its M segment "
        "steps) with this decay (e.g. 0.999); validation, evaluation, export and serving then use the averaged "
        "weights. None = off",
    )
    slow_epoch_warning_s: float = Field(
        120.0, gt=0, description="warn after the first step when the first epoch looks longer than this"
    )
    tensorboard: bool = Field(
        True,
        description="rank 0 writes each epoch's scalars to <storage_path>/<name>/tensorboard/ (view with "
        "`tensorboard --logdir <storage_path>`); local storage only",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="rank 0 logs the config and each epoch's metrics to this MLflow tracking URI, experiment "
        "train.name; None = no MLflow. Needs `pip install mlflow` (not a dependency)",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        low, high = self.worker_range
        if not 1 <= low <= high:
            shown = list(self.num_workers) if isinstance(self.num_workers, tuple) else self.num_workers
            raise ValueError(f"train.num_workers={shown} must be a count >= 1, or [min, max] with 1 <= min <= max")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("train.precision='fp16' needs train.use_gpu=true; use 'bf16' on CPU")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"train.compile_mode={self.compile_mode!r} needs train.compile=true")
        return self

    @property
    def worker_range(self) -> tuple[int, int]:
        """(min, max) workers: (n, n) for a fixed train.num_workers."""
        workers = self.num_workers
        return (workers, workers) if isinstance(workers, int) else (workers[0], workers[1])


BASELINE_NAMES = ("lightgbm", "mlp", "transformer")


class EvalConfig(_Strict):
    """Backtest settings, the uncertainty of its figures, and the trained baselines beside the model."""

    cost_bps: float = Field(1.0, ge=0, description="transaction cost per unit of turnover, basis points")
    momentum_lookback: int = Field(20, ge=1)
    confidence: float = Field(0.95, gt=0.5, lt=1, description="level of every confidence interval")
    bootstrap_resamples: int = Field(1000, ge=100, description="stationary block bootstrap resamples")
    bootstrap_block: float | None = Field(
        None, gt=1, description="mean block length in bars; None = Politis-White's optimal length for the series"
    )
    bootstrap_seed: int = 0
    baselines: tuple[str, ...] = Field(
        BASELINE_NAMES, description="trained baselines fitted on the same features, windows, labels and folds"
    )
    baseline_seed: int = 0
    act_comparison: bool = Field(
        True,
        description="also backtest the model halted after its first segment (model_1_segment) and run to all M "
        "segments (model_all_segments), and report accuracy and IC after every segment: what ACT's segments earn",
    )

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        unknown = [name for name in self.baselines if name not in BASELINE_NAMES]
        if unknown:
            raise ValueError(f"eval.baselines: unknown {unknown}; choose from {list(BASELINE_NAMES)}")
        return self


class BaselineConfig(_Strict):
    """The trained baselines' sizes and optimisation (baselines/): same features, windows and labels as the HRM."""

    lightgbm_estimators: int = Field(200, ge=1, description="boosting rounds at most (early stopping on val)")
    lightgbm_leaves: int = Field(15, ge=2, description="leaves per tree")
    lightgbm_learning_rate: float = Field(0.05, gt=0)
    lightgbm_lags: int = Field(
        4, ge=1, description="last bars' feature rows given to the trees, flattened (at most the window)"
    )
    lightgbm_early_stopping: int = Field(20, ge=1, description="rounds without a better val loss before stopping")
    mlp_hidden: int = Field(64, ge=1, description="width of the MLP's two hidden layers (last bar's features in)")
    epochs: int = Field(8, ge=1, description="MLP and transformer epochs (the best val-accuracy epoch is kept)")
    batch_size: int = Field(256, ge=1, description="MLP and transformer batch size (training and prediction)")
    lr: float = Field(2e-3, gt=0, description="MLP and transformer AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, description="MLP and transformer AdamW weight decay")
    quantity_loss_weight: float = Field(
        default_factory=lambda: TrainConfig.model_fields["quantity_loss_weight"].default,
        ge=0,
        description="weight of the quantity MSE beside the action cross entropy; default: the HRM's "
        "train.quantity_loss_weight default, so both optimise the same loss",
    )
    max_train_samples: int | None = Field(
        None, ge=1, description="fit on a seeded subsample of this many train windows (speed); None = all"
    )
    threads: int = Field(1, ge=1, description="torch / LightGBM threads per baseline fit")


class PlatformConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PlatformConfig:
    """Read a YAML preset (or the defaults when `path` is None) and apply `key.sub=value` overrides."""
    raw: dict[str, Any] = read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw, source=str(path) if path else "defaults")


def with_overrides(
    config: PlatformConfig,
    overrides: list[str] | tuple[str, ...],
    source: str,
    sections: tuple[str, ...] | None = None,
    purpose: str = "",
) -> PlatformConfig:
    """`config` with `key.sub=value` overrides applied, validated as a whole; with `sections`, an override of
    any other section is refused (e.g. an evaluation may not change the model it evaluates)."""
    refused = [item for item in overrides if sections is not None and item.partition(".")[0].strip() not in sections]
    if refused:
        allowed = ", ".join(f"{section}.*" for section in sections or ())
        raise ConfigError(f"{purpose} overrides change only {allowed}; refused: {', '.join(refused)}")
    raw = config.model_dump(mode="json")
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw, source=source)


def validate_config(raw: dict[str, Any], source: str = "config") -> PlatformConfig:
    """Turn a plain dict into `PlatformConfig`, with errors that name the key and the value."""
    try:
        return PlatformConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_error(error, source, PlatformConfig)) from None
