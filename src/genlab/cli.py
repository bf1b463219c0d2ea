"""Command-line entry points (``python train.py`` and the ``genlab-train`` script).

Before Hydra runs (and creates a run folder), the command line is checked the way the
run would see it: group options, override syntax, keys that don't exist, every typed
value (``genlab.checks``) and the run folder's writability. Problems print as one line,
``genlab: error: ...``, with exit code 2.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from genlab.paths import config_dir

# Hydra flags after which genlab leaves the command line to Hydra (help, config printing).
_PASS_THROUGH = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-p", "--package")
_PATH_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")
_MAX_SWEEP_CHECKS = 16


def search_dirs(args: list[str], conf: Path) -> list[Path] | None:
    """genlab's config folder and the folders a ``hydra.searchpath=[...]`` override adds
    (``file://<dir>`` relative to the working directory, ``pkg://<package>``); None when
    an entry can't be listed here (Hydra then judges the options alone)."""
    dirs = [conf]
    for arg in args:
        key, eq, value = arg.lstrip("+").partition("=")
        if key != "hydra.searchpath" or not eq:
            continue
        for entry in value.strip().strip("[]").split(","):
            entry = entry.strip().strip("'\"")
            if entry.startswith("file://"):
                dirs.append(Path(entry.removeprefix("file://")).expanduser())
            elif entry.startswith("pkg://"):
                found = _package_dir(entry.removeprefix("pkg://"))
                if found is None:
                    return None
                dirs.append(found)
    return dirs


def _package_dir(name: str) -> Path | None:
    import importlib.resources

    try:
        root = importlib.resources.files(name.replace("/", "."))
    except (ModuleNotFoundError, TypeError, ValueError):
        return None
    return Path(str(root)) if Path(str(root)).is_dir() else None


def unknown_option(args: list[str], conf: Path) -> str | None:
    """One line naming the first ``group=option`` override whose option doesn't exist in
    genlab's configs or a folder that ``hydra.searchpath`` adds.

    Hydra's own message for this lists its search path; ours says what to choose.
    """
    dirs = search_dirs(args, conf)
    if dirs is None:
        return None
    for arg in args:
        key, eq, value = arg.lstrip("+~").partition("=")
        groups = [d / key for d in dirs if (d / key).is_dir()]
        if not eq or key.startswith("hydra") or not groups or "(" in value or "$" in value:
            continue
        options = sorted({p.stem for g in groups for p in g.glob("*.yaml")})
        for choice in value.strip("[]").split(","):
            if choice and choice != "null" and choice not in options:
                near = difflib.get_close_matches(choice, options, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                return f"unknown {key} option {choice!r}{hint}: choose one of {', '.join(options)}"
    return None


def check_command_line(args: list[str], conf: Path) -> str | None:
    """What is wrong with ``python train.py <args>``, in one line, or None.

    Composes the config as the run will (sweeps: each swept value, up to a few dozen
    combinations), then applies genlab's typed checks and checks that the run folder
    can be created.
    """
    if any(a in _PASS_THROUGH or a.split("=")[0] in _PATH_FLAGS for a in args):
        return None  # help / config printing / another config: Hydra's business
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    problem = unknown_option(overrides, conf)
    if problem:
        return problem
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for o in overrides:
        try:
            parsed.append(parser.parse_override(o))
        except HydraException as e:
            first = str(e).splitlines()[0]
            return f"cannot read the override {o!r} ({first}): write key=value"
    for variant in _variants(parsed):
        problem = _check_composed(variant, conf, multirun)
        if problem:
            return problem
    return None


def _variants(parsed: list) -> list[list[str]]:
    """Override lists without sweeps: every swept value once, the others at their first
    value. Sweeps that can't be listed (intervals, for Optuna) are left out."""
    base: list[str] = []
    sweeps: list[tuple[int, list[str]]] = []
    for o in parsed:
        if not o.is_sweep_override():
            base.append(o.input_line)
            continue
        try:
            values = [str(v) for v in o.sweep_string_iterator()]
        except Exception:  # noqa: BLE001 - interval sweeps: Hydra/Optuna choose the values
            continue
        if values:
            sweeps.append((len(base), values))
            base.append(f"{o.get_key_element()}={values[0]}")
    out = [list(base)]
    for i, values in sweeps:
        for v in values[1:]:
            if len(out) >= _MAX_SWEEP_CHECKS:
                return out
            variant = list(base)
            variant[i] = f"{base[i].split('=', 1)[0]}={v}"
            out.append(variant)
    return out


def _check_composed(overrides: list[str], conf: Path, multirun: bool) -> str | None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from genlab.errors import GenlabError

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        return _composition_problem(e, overrides, conf)
    finally:
        GlobalHydra.instance().clear()
    from genlab.checks import check_accelerator, check_config

    job = DictConfig({})
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf, open_dict

        HydraConfig.instance().set_config(cfg)
        job = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        with open_dict(job):
            del job["hydra"]
            job.paths.output_dir = "run-folder"  # made by Hydra when the run starts
        # The job's own interpolations resolve against its root; ${hydra:...} against
        # the config set above.
        check_config(job)
        check_accelerator(str(job.trainer.get("accelerator", "auto")))
        folder = OmegaConf.select(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    except GenlabError as e:
        return str(e)
    except OmegaConfBaseException:
        folder = None  # a value only the run can resolve: the run will say
    storage = OmegaConf.select(cfg, "hydra.sweeper.storage", default=None)
    return _unwritable(str(folder) if folder else None, multirun) or _bad_study(storage)


def _bad_study(storage: str | None) -> str | None:
    """An Optuna sqlite study file that exists but is not a readable database."""
    if not storage or not str(storage).startswith("sqlite:///"):
        return None
    path = Path(str(storage).removeprefix("sqlite:///"))
    if not path.is_file():
        return None  # a new study
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            db.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as e:
        return (
            f"hydra.sweeper.storage={storage}: {path} is not a readable SQLite database "
            f"({e}): move it away to start a new study, or point the storage elsewhere"
        )
    return None


def _composition_problem(e: Exception, overrides: list[str], conf: Path) -> str:
    """Hydra's multi-line composition error as one line, with a did-you-mean."""
    text = f"{e}\n{e.__cause__ or ''}"
    m = re.search(r"Could not override '([^']+)'", text)
    if m and "not in struct" in text:
        key = m.group(1)
        parent, _, leaf = key.rpartition(".")
        near, names = _siblings(key, [o for o in overrides if _key_of(o) != key], conf)
        if near:
            hint = f"did you mean {parent + '.' if parent else ''}{near}?"
        elif names:
            hint = f"{parent or 'the config'} has {', '.join(names[:12])}"
        else:
            hint = f"{parent} is empty or not chosen: choose its group option first"
        return f"{key} is not a setting ({hint}); to add a new key, write +{key}=..."
    m = re.search(r"Could not append to config. An item is already at '([^']+)'", text)
    if m:
        return f"{m.group(1)} exists already: override it without the +"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(e).__name__
    cause = str(e.__cause__).splitlines()[0] if e.__cause__ and str(e.__cause__) else ""
    return f"cannot compose the config: {first}" + (f" ({cause})" if cause else "")


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _siblings(key: str, others: list[str], conf: Path) -> tuple[str | None, list[str]]:
    """The existing key nearest to ``key``'s last part, and all keys beside it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("train", overrides=others)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        names = [str(k) for k in node] if OmegaConf.is_dict(node) else []
    except Exception:  # noqa: BLE001 - only a hint
        return None, []
    finally:
        GlobalHydra.instance().clear()
    near = difflib.get_close_matches(leaf, names, n=1, cutoff=0.5)
    return (near[0] if near else None), names


def _unwritable(folder: str | None, multirun: bool) -> str | None:
    """Whether the run (or sweep) folder can be created: a probe folder is made and
    removed in its nearest existing parent (permissions alone don't tell, e.g. as root)."""
    if not folder:
        return None
    path = Path(folder).expanduser()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    setting = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a folder")
        Path(tempfile.mkdtemp(prefix=".genlab-probe-", dir=parent)).rmdir()
    except OSError as e:
        reason = e.strerror or str(e)
        return (
            f"{setting}={folder!r} cannot be created ({reason}): "
            f"choose a writable folder ({setting}=<folder>)"
        )
    return None


def main() -> None:
    """``genlab-train`` / ``python train.py``: check the command line, then run Hydra."""
    try:
        problem = check_command_line(sys.argv[1:], Path(config_dir()))
        if problem:
            print(f"genlab: error: {problem}", file=sys.stderr)
            sys.exit(2)
        train_main()
    except KeyboardInterrupt:  # outside Lightning's own handling (data loading, set-up)
        print("genlab: interrupted: Ctrl-C before training started", file=sys.stderr)
        sys.exit(130)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Train from the composed config; print GenlabErrors as one line."""
    from genlab.errors import GenlabError  # lazy: `--help` stays fast
    from genlab.train import train

    try:
        metrics, _ = train(cfg)
    except GenlabError as e:
        print(f"genlab: {e.label}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # a full disk, a folder that went away: say which file
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"genlab: error: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(2)
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    if name not in metrics:
        print(
            f"genlab: error: optimized_metric={name!r} was not logged; logged: {sorted(metrics)}",
            file=sys.stderr,
        )
        sys.exit(2)
    return metrics[name]
