"""Checkpoints: atomic writes, safe loading with a family check, and finding the run to
resume (``ckpt_path=last`` / ``auto_resume=true``)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from genlab.errors import CheckpointError, is_write_error, write_failed

log = logging.getLogger(__name__)

FAMILY_KEY = "genlab_family"  # "<module>.<class>" of the model that wrote the checkpoint
# Overrides that say how to run, not what: a restart may add or change them.
RESUME_KEYS = ("ckpt_path", "auto_resume", "hydra.", "trainer.max_epochs", "trainer.max_time")


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to ``<path>.tmp-<pid>`` in the same folder, fsync, then os.replace: a kill
    during a save leaves the previous file whole (rename is atomic on POSIX file systems).
    A Ctrl-C during a save takes effect when the save is done (inside torch's writer it
    would surface as a RuntimeError instead of a clean stop). A write that fails (a full
    disk) raises WriteFailed naming the file, and the previous file stays as it was.
    ``last_saved``: the last checkpoint written whole, ``(path, epoch, step)``."""

    last_saved: tuple[str, int, int] | None = None  # (per instance once one is written)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with _sigint_deferred():
            try:
                self._save(checkpoint, Path(path))
            except (OSError, RuntimeError) as e:
                if not is_write_error(e):
                    raise
                raise write_failed("checkpoint", path, e) from None
        step = (int(checkpoint.get("epoch", -1)), int(checkpoint.get("global_step", -1)))
        if Path(path).name == "last.ckpt" or self.last_saved is None:  # what resume reads
            self.last_saved = (str(path), *step)

    @staticmethod
    def _save(checkpoint: dict[str, Any], path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``<path>.tmp-<pid>`` files of processes that no longer run (a save cut off by
    SIGKILL or a crash leaves one; the checkpoint itself was never replaced)."""
    for tmp in path.parent.glob(f"{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a SIGINT that arrives inside the block and raise KeyboardInterrupt after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
    elif caught and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


def family_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with ``weights_only=True`` (no arbitrary code from the file); one-line
    errors for a missing, truncated or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} holds objects that safe loading refuses ({first}); "
            "if you trust the file, load it with torch.load(..., weights_only=False)"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is not readable ({e}); is it complete?") from None


def check_family(ckpt: dict[str, Any], cls: type, path: str | Path) -> None:
    """Raise unless the checkpoint was written by ``cls`` or a subclass of it. Names are
    compared, nothing the file names is imported (``cls``'s loaded subclasses count;
    a genlab family counts under any genlab module, so moving a class between genlab's
    modules keeps its checkpoints loadable)."""
    family = ckpt.get(FAMILY_KEY)
    if family is None:
        return  # written before genlab tagged checkpoints: the state dict decides
    if not isinstance(family, str):
        raise CheckpointError(f"{path}: its family tag {family!r} is not a class name")
    if not any(same_family(family, c) for c in with_subclasses(cls)):
        name = family.rpartition(".")[2]
        raise CheckpointError(
            f"{path} is a {family} checkpoint, not {family_of(cls)}: load it with "
            f"{name}.load_from_checkpoint (or genlab-eval, which reads the run's config)"
        )


def with_subclasses(cls: type) -> list[type]:
    """``cls`` and every subclass of it loaded so far."""
    found, todo = [], [cls]
    while todo:
        c = todo.pop()
        found.append(c)
        todo.extend(c.__subclasses__())
    return found


def same_family(family: str, cls: type) -> bool:
    """Whether a checkpoint's family tag names ``cls``: exactly, or for genlab's own
    classes by class name anywhere in genlab (a class moved between genlab's modules
    keeps its old checkpoints)."""
    if family == family_of(cls):
        return True
    module, _, name = family.rpartition(".")
    ours = cls.__module__ == "genlab" or cls.__module__.startswith("genlab.")
    return ours and name == cls.__qualname__ and module.split(".")[0] == "genlab"


def migrate_hparams(hp: dict[str, Any], family: str) -> dict[str, Any]:
    """Hyper-parameters saved under names genlab has since renamed, under today's names:
    ``update`` -> ``update_rule`` (GANs), ``d_hidden`` -> ``critic_hidden_sizes`` (AAE),
    ``hidden`` -> ``hidden_sizes`` (NICE) or ``channels`` and ``dense_hidden`` ->
    ``hidden_sizes`` (RealNVP, Glow), and in net specs ``hidden`` -> ``hidden_sizes``
    (MLP) or ``hidden_width`` (Conv); RealNVP / Glow checkpoints from before
    ``coupling_split`` keep their interleaved couplings."""
    hp = dict(hp)
    name = family.rpartition(".")[2]
    renames = {"update": "update_rule", "d_hidden": "critic_hidden_sizes"}
    if name == "NICE":
        renames["hidden"] = "hidden_sizes"
    elif name in ("RealNVP", "Glow") or "dense_hidden" in hp:
        renames.update(hidden="channels", dense_hidden="hidden_sizes")
    for old, new in renames.items():
        if old in hp and new not in hp:
            hp[new] = hp.pop(old)
    if name in ("RealNVP", "Glow") and "coupling_split" not in hp:
        hp["coupling_split"] = "interleaved"  # their couplings before contiguous halves
    net = hp.get("net")
    if isinstance(net, dict) and "hidden" in net:
        net = dict(net)
        conv = str(net.get("arch", "")).endswith("Conv")
        net["hidden_width" if conv else "hidden_sizes"] = net.pop("hidden")
        hp["net"] = net
    return hp


def migrated(ckpt: dict[str, Any], path: str | Path) -> str | Path | io.BytesIO:
    """``path`` itself, or (a checkpoint with renamed hyper-parameters) the checkpoint
    with today's names, in memory, for ``load_from_checkpoint``."""
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict):
        return path
    new = migrate_hparams(hp, str(ckpt.get(FAMILY_KEY, "")))
    if new == hp:
        return path
    log.info("%s: mapping renamed hyper-parameters %s", path, sorted(set(hp) ^ set(new)))
    buf = io.BytesIO()
    torch.save({**ckpt, "hyper_parameters": new}, buf)
    buf.seek(0)
    return buf


def describe_mismatch(model: torch.nn.Module, ckpt: dict[str, Any]) -> str | None:
    """The first way the checkpoint's weights don't fit ``model``, or None."""
    have, got = model.state_dict(), ckpt.get("state_dict", {})
    missing = [k for k in have if k not in got]
    extra = [k for k in got if k not in have]
    if missing or extra:
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    for k, v in have.items():
        if tuple(v.shape) != tuple(got[k].shape):
            return f"{k} has shape {tuple(got[k].shape)} in the checkpoint, {tuple(v.shape)} here"
    return None


# Model settings that change what the weights compute without changing their shapes: a
# resume must keep them (the shapes check cannot see them).
SAME_SHAPE_KEYS = ("coupling_split",)


def check_resume(model: torch.nn.Module, path: str | Path) -> int:
    """Before fit(ckpt_path=...): the checkpoint must be this family with these shapes.
    Returns its global step."""
    ckpt = read_checkpoint(path)
    check_family(ckpt, type(model), path)
    hook = getattr(model, "on_load_checkpoint", None)
    if hook is not None:  # the model's own migrations (e.g. GANs from before the EMA)
        hook(ckpt)
    problem = describe_mismatch(model, ckpt)
    hp = migrate_hparams(ckpt.get("hyper_parameters") or {}, str(ckpt.get(FAMILY_KEY, "")))
    for key in SAME_SHAPE_KEYS:  # settings that change the function but no weight's shape
        if key in hp and key in model.hparams and hp[key] != model.hparams[key]:
            raise CheckpointError(
                f"{path} was trained with model.{key}={hp[key]}, this config has "
                f"{model.hparams[key]}: resume with model.{key}={hp[key]}"
            )
    if problem:
        diff = {
            k: (v, model.hparams.get(k))
            for k, v in hp.items()
            if k in model.hparams and model.hparams.get(k) != v
        }
        raise CheckpointError(
            f"{path} does not fit this config's model: {problem}"
            + (f"; differing model settings (checkpoint, now): {diff}" if diff else "")
        )
    return int(ckpt.get("global_step", 0))


def _comparable(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if not o.lstrip("+~").startswith(RESUME_KEYS))


def find_previous_run(output_dir: Path, overrides: list[str], roots: list[Path]) -> Path | None:
    """The newest earlier run under ``roots`` launched with the same overrides (ignoring
    ckpt_path / auto_resume / hydra.* / max_epochs / max_time) that has a last.ckpt."""
    want = _comparable(overrides)
    found: list[tuple[float, Path]] = []
    import yaml

    for root in roots:
        for f in root.glob("**/.hydra/overrides.yaml"):
            run = f.parent.parent
            last = newest_checkpoint(run)
            if run.resolve() == output_dir.resolve() or last is None:
                continue
            try:
                theirs = yaml.safe_load(f.read_text()) or []
            except (OSError, yaml.YAMLError):
                continue
            if _comparable([str(o) for o in theirs]) == want:
                found.append((last.stat().st_mtime, run))
    return max(found)[1] if found else None


def requeued() -> bool:
    """Whether this is a SLURM job started again after a requeue (``SLURM_RESTART_COUNT``
    > 0): it continues its run as ``auto_resume=true`` would."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    except ValueError:
        return False


def newest_checkpoint(run: Path) -> Path | None:
    """A run folder's newest resumable checkpoint: checkpoints/last.ckpt, or the
    ``hpc_ckpt_<n>.ckpt`` Lightning writes on SLURM's requeue signal when that is newer."""
    found = [p for p in [run / "checkpoints" / "last.ckpt", *run.glob("hpc_ckpt_*.ckpt")]]
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_resume(cfg: Any) -> tuple[str | None, Path | None]:
    """(checkpoint to resume from, earlier run folder to continue in, if another one).

    ``ckpt_path=<file>``: that file. ``ckpt_path=last`` or ``auto_resume=true`` (implied
    for a requeued SLURM job): this run folder's newest checkpoint (last.ckpt, or a
    requeue's hpc_ckpt), else the newest earlier run of the same command (same
    overrides) that left one; ``ckpt_path=last`` without any is an error,
    ``auto_resume`` then starts fresh.
    """
    ckpt = cfg.get("ckpt_path")
    auto = bool(cfg.get("auto_resume")) or requeued()
    if ckpt not in (None, "last"):
        path = Path(ckpt).expanduser()
        if path.is_dir():  # a run folder: its last checkpoint
            if not (path / "checkpoints" / "last.ckpt").is_file():
                raise CheckpointError(f"ckpt_path={ckpt} is a folder without checkpoints/last.ckpt")
            path = path / "checkpoints" / "last.ckpt"
        elif not path.is_file():
            raise CheckpointError(f"ckpt_path={ckpt} does not exist")
        return str(path), None
    if ckpt is None and not auto:
        return None, None
    out = Path(cfg.paths.output_dir)
    own = newest_checkpoint(out)
    if own is not None:
        return str(own), None
    previous = None
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        roots = {_root(Path(hc.run.dir)), _root(Path(hc.sweep.dir))}
        previous = find_previous_run(out, list(hc.overrides.task), sorted(roots))
    except ValueError:  # no Hydra (train(cfg) called from Python): this folder only
        pass
    if previous is not None:
        return str(newest_checkpoint(previous)), previous
    if ckpt == "last":
        raise CheckpointError(
            f"ckpt_path=last: no last.ckpt in {out} nor in an earlier run of the same command; "
            "pass ckpt_path=<file>, or auto_resume=true to start fresh when there is none"
        )
    log.info("auto_resume: no earlier run of this command; starting fresh")
    return None, None


def _root(run_dir: Path) -> Path:
    """Where runs of this kind live: the first component of a relative run folder
    (outputs/..., multirun/...), else the folder that holds it."""
    if not run_dir.is_absolute() and run_dir.parts:
        return Path(run_dir.parts[0])
    return run_dir.parent
