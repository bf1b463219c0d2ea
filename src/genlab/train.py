"""train(cfg): check -> seed -> data -> model -> callbacks/loggers -> trainer -> fit -> test.

Every ``hydra.utils.instantiate`` call of the project is in this file.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from genlab._lightning import undo_nvml_cuda_check
from genlab.callbacks import SampleScores
from genlab.callbacks.training import LoggedMetricCheck
from genlab.checkpoints import AtomicCheckpointIO, check_resume, resolve_resume
from genlab.checks import (
    RUNNER_KEYS,
    check_accelerator,
    check_config,
    check_writable,
    raw_value,
)
from genlab.compile import compile_networks
from genlab.distributed import JobDDPStrategy, write_job_config
from genlab.errors import (
    ConfigError,
    GenlabError,
    RankFailed,
    RunInterrupted,
    WriteFailed,
    write_failed,
)
from genlab.steps import use_inner_steps
from genlab.summary import summary

log = logging.getLogger(__name__)


def _tidy_console() -> None:
    """Send Lightning's messages through the root handlers only (Hydra's console + train.log)
    instead of twice, and drop its advertising tips and a known deprecation warning."""
    if logging.getLogger().hasHandlers():
        lightning_logger = logging.getLogger("lightning")
        for h in list(lightning_logger.handlers):
            lightning_logger.removeHandler(h)
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in rank_zero_logger.filters):
        rank_zero_logger.addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Step metrics are logged every log_every_n_steps *global* steps (windows span epochs),
    # so short epochs lose nothing; Lightning's warning about them does not apply.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* logging interval")


class _NoTips(logging.Filter):
    # Lightning's accelerator lines: genlab says which device in one line (device_line).
    DROP = ("💡 Tip", "GPU available:", "TPU available:", "HPU available:", "IPU available:")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.DROP)


def device_line(trainer: pl.Trainer, accelerator: str) -> str:
    """Where the run trains, in one line (the GPU that accelerator=auto picked, or why
    not)."""
    dev = trainer.strategy.root_device
    n = trainer.num_devices * trainer.num_nodes
    precision = f"precision {trainer.precision}"
    if dev.type == "cuda":
        more = f", {n} GPUs ({type(trainer.strategy).__name__})" if n > 1 else ""
        return f"Device: GPU {torch.cuda.get_device_name(dev)} ({dev}){more}, {precision}"
    if dev.type == "mps":
        return f"Device: Apple GPU (mps), {precision}"
    gpus = torch.cuda.device_count()
    why = f"trainer.accelerator={accelerator}; {gpus} GPU(s) unused" if gpus else "no GPU found"
    return f"Device: CPU, {torch.get_num_threads()} threads ({why}), {precision}"


def build(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """instantiate() with one clear error line instead of Hydra's wrapped traceback."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, GenlabError):
            raise cause from None
        detail = f"{type(cause).__name__}: {cause}" if cause else str(e).splitlines()[0]
        raise ConfigError(f"cannot build {where}: {' '.join(detail.split())}") from None


def family_config(model: DictConfig) -> DictConfig:
    """The model node without the keys the runner reads (``monitor``, ``monitor_mode``):
    what the family's constructor takes."""
    if not any(k in model for k in RUNNER_KEYS):
        return model
    node = OmegaConf.create(OmegaConf.to_container(model, resolve=True))
    for k in RUNNER_KEYS:
        node.pop(k, None)
    return node


def build_model(node: DictConfig, data_shape: tuple[int, ...], num_classes: int) -> Any:
    """The family a model config names, sized for the data (the one data-to-model link)."""
    return build(
        family_config(node),
        "model",
        data_shape=tuple(data_shape),
        num_classes=num_classes,
        _convert_="all",  # plain dicts/lists in hparams: checkpoints load without Hydra
    )


def check_selection(cfg: DictConfig, model: pl.LightningModule) -> None:
    """A best-checkpoint metric from the sample scores needs them to run during
    validation, for this model: one line now instead of an error after an epoch."""
    node = (cfg.get("callbacks") or {}).get("model_checkpoint")
    monitor = node.get("monitor") if node else None
    name = str(monitor).split("/")[-1]
    if not str(monitor).startswith("val/") or name.split("_")[0] not in ("fid", "kid", "cond"):
        return
    raw = str(raw_value(node, "monitor"))
    key = "model.monitor" if "model.monitor" in raw else "callbacks.model_checkpoint.monitor"
    fix = f"set {key}=val/loss, or {key}=null (best.ckpt: the last epoch)"
    sample_scores = (cfg.get("callbacks") or {}).get("sample_scores")
    if not sample_scores:
        raise ConfigError(f"{key}={monitor} needs callbacks.sample_scores, which is off: {fix}")
    if sample_scores.get("every_n_epochs", 5) == 0:
        raise ConfigError(
            f"{key}={monitor} needs scores during validation, but metrics.every_n_epochs=0 "
            f"(only at test): set metrics.every_n_epochs=1, or {fix}"
        )
    if not SampleScores.applies(model):
        shape = tuple(getattr(model, "data_shape", ()))
        raise ConfigError(
            f"{key}={monitor} needs image data and a model that samples (here: data of "
            f"shape {shape}, {type(model).__name__}): {fix}"
        )
    if monitor == "val/cond_acc" and not hasattr(model, "sample_conditional"):
        raise ConfigError(f"{key}=val/cond_acc needs a conditional model: {fix}")


def score_space(cfg: DictConfig, num_classes: int) -> None:
    """Resolve ``metrics.features=auto`` for this data (the logged config says which
    feature space the scores are in) and follow the checkpoint monitor to the score's
    name in that space (``val/fid`` -> ``val/fid_ae`` for data without labels)."""
    from genlab.metrics.features import SUFFIX

    scores = (cfg.get("callbacks") or {}).get("sample_scores")
    if not scores:
        return
    space = SampleScores.space(str(scores.features), num_classes)
    if space == "classifier" and num_classes < 2:
        raise ConfigError(
            f"metrics.features={scores.features} needs class labels, and this data has none: "
            "use metrics.features=auto (an auto-encoder's features) or inception"
        )
    with open_dict(cfg):
        if "metrics" in cfg and cfg.metrics.get("features") == "auto":
            cfg.metrics.features = space
    node = (cfg.get("callbacks") or {}).get("model_checkpoint")
    monitor = str(node.get("monitor")) if node and node.get("monitor") else ""
    labelled = num_classes >= 2
    if not labelled and monitor in ("val/cond_acc", "val/recon_acc"):
        raise ConfigError(
            f"model.monitor={monitor} needs class labels, and this data has none: "
            "set model.monitor=val/loss"
        )
    name, sfx = monitor.split("/")[-1], SUFFIX[space]
    score = monitor.startswith("val/") and name.split("_")[0] in ("fid", "kid")
    if sfx and score and not name.endswith(sfx):
        with open_dict(cfg):
            node.monitor = f"{monitor}{sfx}"
        log.info(f"Scores are in {space} features: best.ckpt follows {node.monitor}")


def preflight(cfg: DictConfig) -> None:
    """What can be checked before anything is built: every typed setting
    (``genlab.checks``), the folders the run writes, optional packages it needs."""
    check_config(cfg)
    check_accelerator(str(cfg.trainer.get("accelerator", "auto")))
    check_writable(cfg.paths.output_dir, "paths.output_dir")
    scores = (cfg.get("callbacks") or {}).get("sample_scores")
    if scores:
        check_writable(scores.cache_dir, "metrics.cache_dir")
        if scores.features == "inception":
            from genlab.metrics.inception import resolve_weights

            resolve_weights(scores.get("inception_weights"))  # one line when there are none


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit (and test) the configured model.

    Returns the final metrics and the objects built (datamodule, model, trainer).
    """
    preflight(cfg)  # every typed setting, the folders, before anything is built
    _tidy_console()
    undo_nvml_cuda_check(str(cfg.trainer.get("strategy", "")))
    if cfg.get("matmul_precision") and torch.cuda.is_available():
        torch.set_float32_matmul_precision(cfg.matmul_precision)  # TF32 on GPUs
    pl.seed_everything(cfg.seed, workers=True)
    ckpt_path, previous = resolve_resume(cfg)
    if previous is not None:  # continue in the earlier run's folder (checkpoints, logs, W&B id)
        with open_dict(cfg):
            cfg.paths.output_dir = str(previous)
        log.info(f"Resuming {ckpt_path}; outputs continue in {previous}")
    elif ckpt_path:
        log.info(f"Resuming {ckpt_path}")
    _set_sweep_group(cfg)

    datamodule = build(cfg.data, "data")
    model = build_model(cfg.model, datamodule.data_shape, datamodule.num_classes)
    score_space(cfg, datamodule.num_classes)
    check_selection(cfg, model)
    if cfg.get("compile"):
        compile_networks(model, str(cfg.get("compile_mode", "default")))
    t = cfg.trainer
    inner = use_inner_steps(
        model, datamodule, int(cfg.get("inner_steps") or 1), t.get("gradient_clip_val"),
        t.get("gradient_clip_algorithm"), int(t.get("accumulate_grad_batches") or 1),
    )  # fmt: skip
    # This family, these shapes (one line otherwise); the step the logs continue from.
    resume_step = check_resume(model, ckpt_path) if ckpt_path else None
    callbacks = [build(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c]
    metric = cfg.get("optimized_metric")
    if metric and str(metric).startswith("val/"):  # a sweep's objective: known after 1 check
        callbacks.append(LoggedMetricCheck({"optimized_metric": metric}))
    if cfg.trainer.get("enable_progress_bar") is False:  # honoured, not a Lightning error
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = [build(c, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c]
    for lg in loggers:
        if hasattr(lg, "resume_step"):
            lg.resume_step = resume_step
    plugins = [] if cfg.trainer.get("plugins") else [AtomicCheckpointIO()]
    # cuDNN's autotuner picks the fastest convolution algorithms for the (fixed) batch
    # shapes; null turns it on unless the run asks to be deterministic.
    benchmark = cfg.trainer.get("benchmark")
    if benchmark is None:
        benchmark = not cfg.trainer.get("deterministic")

    failed, trainer = True, None
    try:
        # With inner steps the model clips its own gradients (manual optimisation).
        clip = {"gradient_clip_val": None, "gradient_clip_algorithm": None} if inner else {}
        trainer = build(
            cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
            plugins=plugins, benchmark=benchmark, **clip,
        )  # fmt: skip
        if trainer.is_global_zero:
            log.info(device_line(trainer, str(cfg.trainer.get("accelerator", "auto"))))
        strategy = trainer.strategy
        if isinstance(strategy, JobDDPStrategy) and "LOCAL_RANK" not in os.environ:
            # The other ranks run exactly this job: resolved config, concrete checkpoint.
            with open_dict(cfg):
                cfg.ckpt_path, cfg.auto_resume = ckpt_path, False
            strategy.use_job_config(write_job_config(cfg, cfg.paths.output_dir))
            if strategy.launcher is not None:  # what its RankWatch says if a rank dies
                strategy.launcher.failure_message = lambda what: _rank_failed_text(
                    what, cfg, plugins, trainer
                )
        for lg in trainer.loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = _scalars(trainer.callback_metrics)
        if cfg.get("test"):
            ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
            metrics.update(_scalars(trainer.callback_metrics))
        failed = False
    except SystemExit as e:  # Lightning's graceful stop on Ctrl-C (exit 1) or SIGTERM
        if trainer is None or not trainer.interrupted:
            raise
        raise _interrupted(trainer, e) from None
    except OSError as e:  # a full disk, a quota, a folder gone: which file, what is kept
        if isinstance(e, GenlabError) and not isinstance(e, WriteFailed):
            raise
        raise _write_failed(e, cfg, plugins) from None
    except RuntimeError as e:  # a DDP peer died: which rank, what is kept, how to resume
        if isinstance(e, GenlabError) or trainer is None or not _peer_lost(e, trainer):
            raise
        what = _who_failed(trainer, e)
        raise RankFailed(_rank_failed_text(what, cfg, plugins, trainer)) from None
    finally:
        for lg in loggers:
            if hasattr(lg, "finish"):
                lg.finish(failed)  # W&B: one run per trial of a sweep
        if trainer is not None and isinstance(trainer.strategy, JobDDPStrategy):
            trainer.strategy.finish(failed)  # the next trial starts a fresh process group
    if trainer.is_global_zero:
        log.info(summary(trainer, metrics, _overrides()))
    return metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}


def _interrupted(trainer: pl.Trainer, e: SystemExit) -> RunInterrupted:
    sigterm = type(e).__name__ == "SIGTERMException"
    ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
    where = f"last checkpoint: {ckpt}; resume with ckpt_path=last" if ckpt else "no checkpoint"
    return RunInterrupted(
        f"{'SIGTERM' if sigterm else 'Ctrl-C'} stopped the run at epoch {trainer.current_epoch}, "
        f"step {trainer.global_step} ({where})",
        exit_code=143 if sigterm else 130,
    )


def _write_failed(e: OSError, cfg: DictConfig, plugins: list) -> WriteFailed:
    """One line: the file that could not be written and why, the last checkpoint written
    whole and how to resume."""
    then = "free space, then resume with ckpt_path=last"
    if isinstance(e, WriteFailed):
        failed = str(e)
    elif e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO):
        failed = str(write_failed("file", e.filename or "?", e))
    else:  # not the disk: e.g. a file or folder the run uses was removed or locked
        failed = f"{e.strerror or type(e).__name__}: {e.filename or '?'}"
        then = "resume with ckpt_path=last"
    return WriteFailed(f"{failed}; {_kept(cfg, plugins, then)}")


def _kept(cfg: DictConfig, plugins: list, then: str) -> str:
    """'the last good checkpoint is <path> (epoch e, step s): <then>' (this process's last
    save, else the run folder's last.ckpt), or that there is none."""
    saved = next((p.last_saved for p in plugins if getattr(p, "last_saved", None)), None)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if saved:
        kept = f"the last good checkpoint is {saved[0]} (epoch {saved[1]}, step {saved[2]})"
    elif last.is_file():
        kept = f"the last good checkpoint is {last}"
    else:
        return "no checkpoint was written yet"
    return f"{kept}: {then}"


def _peer_lost(e: RuntimeError, trainer: pl.Trainer) -> bool:
    """Whether ``e`` is a collective that failed because another process went away
    (gloo: the connection closed; NCCL: an aborted or timed-out communicator)."""
    if trainer.world_size < 2:
        return False
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(e).lower()
    signs = ("connection closed by peer", "connection reset by peer", "broken pipe", "gloo",
             "nccl", "timed out", "remote worker", "process group")  # fmt: skip
    return isinstance(e, dist_error) or any(s in text for s in signs)


def _who_failed(trainer: pl.Trainer, e: RuntimeError) -> str:
    """The rank that died, as far as this process can tell: rank 0 knows the ranks it
    started; a rank it started knows whether rank 0 is still its parent."""
    from genlab.distributed import describe_exit

    watch = getattr(trainer.strategy.launcher, "watch", None)
    if watch is not None:
        failed = watch.first_failure(wait=3.0)
        if failed is not None:
            rank, pid, code = failed
            return f"DDP rank {rank} (pid {pid}) {describe_exit(code)}"
    parent = os.environ.get("GENLAB_RANK0_PID")
    if parent and trainer.global_rank > 0 and _gone(int(parent), wait=3.0):
        return f"DDP rank 0 (pid {parent}) stopped"
    reason = " ".join(str(e).split())[:100]
    return f"rank {trainer.global_rank} lost its peers ({reason})"


def _gone(pid: int, wait: float) -> bool:
    """Whether process ``pid`` (this one's parent) has ended or is ending, polling for up
    to ``wait`` seconds: its connections close before the kernel re-parents this process,
    and a dead process stays a zombie until it is reaped."""
    deadline = time.monotonic() + wait
    while True:
        if os.getppid() != pid:
            return True
        if os.path.exists("/proc/self/stat"):  # Linux: a zombie or no process at all
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        return True
            except (OSError, IndexError):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _rank_failed_text(what: str, cfg: DictConfig, plugins: list, trainer: pl.Trainer) -> str:
    again = "".join(f"{shlex.quote(o)} " for o in _overrides())
    resume = f"resume with genlab-train {again}ckpt_path=last"
    if trainer.global_rank > 0:  # no command line here: rank 0's
        resume = "resume with rank 0's command and ckpt_path=last"
    where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
    return f"{what} {where}; {_kept(cfg, plugins, resume)}"


def _set_sweep_group(cfg: DictConfig) -> None:
    """Under ``-m`` every trial's W&B run gets the sweep's group name (Optuna's
    study_name, else the sweep folder) unless ``logger.wandb.group`` is set."""
    wandb = (cfg.get("logger") or {}).get("wandb")
    if not wandb or wandb.get("group") or not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    study = OmegaConf.select(hc, "sweeper.study_name", default=None)
    with open_dict(cfg):
        wandb.group = str(study or Path(hc.sweep.dir).as_posix().replace("/", "-"))


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _overrides() -> list[str]:
    """The command line's overrides (Hydra's task overrides), without ckpt_path."""
    if not HydraConfig.initialized():
        return []
    task = list(HydraConfig.get().overrides.task)
    return [o for o in task if not o.startswith(("ckpt_path=", "auto_resume="))]
