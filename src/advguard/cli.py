"""The ``advguard`` command line: a thin layer that parses arguments, loads configs and calls
library functions (house rule 9). Every command has ``--help``; user errors print one line
(``advguard: error: ...``) and exit with status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from advguard import __version__
from advguard.errors import AdvguardError, ConfigError
from advguard.reports.render import render_table

if TYPE_CHECKING:
    from advguard.evaluation.executors import Executor

Handler = Callable[[argparse.Namespace], int]


def _parse_value(text: str, *, what: str = "value") -> Any:
    """A command-line value as YAML (numbers, lists, mappings); malformed YAML is a one-line
    error naming ``what`` and the text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what}: not valid YAML: {text!r} ({problem})") from None


def _parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value, what=f"--set {key.strip()}")
    return out


def _emit(text: str, output: str | None, extra: dict[Path, str] | None = None, *,
          force: bool = False, protect: Sequence[str | Path] = ()) -> None:
    """Write ``text`` to ``output`` (and the ``extra`` files beside it), or print it. Only new
    files and reports advguard wrote before are replaced (any other file with ``force``; the
    ``protect`` paths, record stores and checkpoints never): see
    :func:`advguard.files.write_generated`."""
    if not output:
        print(text, end="" if text.endswith("\n") else "\n")
        return
    from advguard.files import write_generated

    written = write_generated({**(extra or {}), Path(output): text}, force=force, protect=protect)
    for path in written:
        print(f"wrote {path}")


# --------------------------------------------------------------------------- data
def cmd_data_list(args: argparse.Namespace) -> int:
    from advguard.data import dataset_info, find_dataset_dir, list_datasets

    rows = []
    for name in list_datasets(args.pattern):
        info = dataset_info(name)
        try:
            where = str(find_dataset_dir(name, args.root))
        except AdvguardError:
            where = "not found (see: advguard data info " + name + ")"
        shape = "x".join(str(s) for s in info.image_shape)
        rows.append([name, info.num_classes, shape, where])
    print(render_table(["dataset", "classes", "shape", "location"], rows))
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from advguard.data import dataset_info, find_dataset_dir, load_dataset

    info = dataset_info(args.name)
    print(f"{info.name}: {info.description}")
    print(f"  classes      {info.num_classes}: {', '.join(info.classes[:10])}"
          + (" ..." if len(info.classes) > 10 else ""))
    print(f"  image shape  {'x'.join(str(s) for s in info.image_shape)} (C x H x W), "
          "float in [0, 1]")
    print(f"  mean / std   {info.mean} / {info.std}")
    print(f"  license      {info.license}")
    try:
        where = find_dataset_dir(args.name, args.root)
    except AdvguardError as exc:
        print(f"  location     not found\n  {exc}")
        return 0
    print(f"  location     {where}")
    if args.load:
        for split in info.splits:
            ds = load_dataset(args.name, split, root=args.root)
            counts = ds.labels.bincount(minlength=ds.num_classes).tolist()
            print(f"  {split:<12} {len(ds)} images; per class min {min(counts)}, "
                  f"max {max(counts)}")
    return 0


# --------------------------------------------------------------------------- models
def cmd_models_list(args: argparse.Namespace) -> int:
    from advguard.models import list_models, model_flops, model_info

    rows = []
    for name in list_models(args.pattern):
        info = model_info(name)
        row: list[Any] = [name, info.default_input_size, info.paper]
        if args.flops:
            fc = model_flops(name, num_classes=args.num_classes)
            row += [f"{fc.macs / 1e6:.1f}", f"{fc.params / 1e6:.2f}"]
        rows.append(row)
    header = ["model", "input", "paper"] + (["MMACs", "Mparams"] if args.flops else [])
    print(render_table(header, rows))
    return 0


# --------------------------------------------------------------------------- defenses
def _traits_text(cls: type) -> str:
    declared = getattr(cls, "declared_traits", lambda: None)()
    if declared is None:
        return "from the model and parameters"
    on = [t for t in ("randomized", "differentiable", "dynamic") if getattr(declared, t)]
    return ", ".join(on + ([] if declared.differentiable else ["non-differentiable"])
                     + ([f"output={declared.output}"] if declared.output != "logits" else [])
                     ) or "deterministic"


def cmd_defenses_list(args: argparse.Namespace) -> int:
    from advguard.defenses import DEFENSES
    from advguard.defenses.registry import defense_parameters

    rows = []
    for name in DEFENSES.names(args.pattern):
        meta = DEFENSES.metadata(name)
        params = ", ".join(f"{k}={v}" for k, v in defense_parameters(name).items())
        rows.append([name, meta.get("kind", ""), _traits_text(DEFENSES.get(name)),
                     meta.get("paper", ""), params])
    print(render_table(["defense", "kind", "traits", "paper", "parameters"], rows))
    return 0


# --------------------------------------------------------------------------- train
_TRAIN_FLAGS = ("dataset", "model", "recipe", "epochs", "batch_size", "lr", "weight_decay",
                "schedule", "seed", "device", "train_size", "val_size", "test_size")


def cmd_train(args: argparse.Namespace) -> int:
    from advguard.training import TrainConfig, train

    overrides = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None}
    overrides.update(_parse_sets(args.set))
    if args.config:
        from advguard.configs import config_path

        config = TrainConfig.from_file(config_path(args.config), **overrides)
    else:
        config = TrainConfig.from_dict(overrides)
    output = Path(args.output) if args.output else Path("runs") / f"{config.dataset}-" \
        f"{config.model}-{config.recipe}-s{config.seed}"
    result = train(config, output_dir=output, resume=not args.no_resume,
                   overwrite=args.overwrite, progress=not args.quiet)
    rec = result.record
    final = ", ".join(f"{k}={v:.4f}" for k, v in rec.final.items() if isinstance(v, float))
    print(f"trained {config.model} on {config.dataset} with {config.recipe} "
          f"for {config.epochs} epochs in {rec.wall_time_s:.1f} s: {final}")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from advguard.quickstart import run_quickstart

    report = run_quickstart(output_dir=args.output, epochs=args.epochs, progress=not args.quiet,
                            n_examples=args.n,
                            device=args.device)
    print(report.render())
    return 0


# --------------------------------------------------------------------------- eval / report
def cmd_eval(args: argparse.Namespace) -> int:
    from advguard.configs import config_path
    from advguard.evaluation import EvalConfig, StepSpec, evaluate
    from advguard.reports import markdown_report

    overrides: dict[str, Any] = {k: getattr(args, k) for k in
                                 ("dataset", "split", "n", "model", "norm", "eps", "runs", "seed",
                                  "device", "batch_size", "name", "subset", "preset")
                                 if getattr(args, k) is not None}
    if args.defense is not None:
        overrides["defense"] = _parse_value(args.defense, what="--defense") \
            if args.defense.strip().startswith("{") else {"name": args.defense}
    if args.attack:
        overrides["steps"] = [StepSpec.from_dict(_parse_step(s)) for s in args.attack]
    if args.no_checks:
        overrides["checks"] = False
    overrides.update(_parse_sets(args.set))
    if args.config:
        config = EvalConfig.from_file(config_path(args.config), **overrides)
    else:
        config = EvalConfig.from_dict(overrides)
    with _executor(args) as executor:
        summary = evaluate(config, store=args.store, progress=not args.quiet, executor=executor)
    print(markdown_report([summary], title=f"evaluation {summary.name}"))
    print(f"records: {args.store} (evaluation id {summary.eval_id})")
    return 0


def _executor(args: argparse.Namespace) -> Executor:
    """The executor the --executor options name (ray's options only with --executor ray)."""
    from advguard.evaluation.executors import make_executor

    options = {k: getattr(args, k) for k in ("address", "gpus_per_task", "cpus_per_task",
                                             "max_retries") if getattr(args, k) is not None}
    if args.executor != "ray" and options:
        flags = ", ".join("--" + k.replace("_", "-") for k in options)
        raise ConfigError(f"{flags} apply to --executor ray only")
    return make_executor(args.executor, **options)


def _add_executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default="local", metavar="NAME",
                   help="where chunks run: local (default, this process) or ray (one Ray task "
                        "per chunk; pip install \"advguard[distributed]\")")
    p.add_argument("--address", help="Ray cluster address (HOST:PORT from `ray start --head`, "
                                     "ray://HOST:PORT or auto); default: start a local instance")
    p.add_argument("--gpus-per-task", dest="gpus_per_task", type=float,
                   help="GPUs each chunk reserves on Ray (default 0; fractions share a GPU)")
    p.add_argument("--cpus-per-task", dest="cpus_per_task", type=float,
                   help="CPUs each chunk reserves on Ray (default 1)")
    p.add_argument("--max-retries", dest="max_retries", type=int,
                   help="times Ray re-runs a chunk whose worker died (default 3)")


def _parse_step(text: str) -> dict[str, Any]:
    """``SETTING:ATTACK[:key=value,...]`` or a YAML mapping."""
    if text.strip().startswith("{"):
        value = _parse_value(text, what="--attack")
        if not isinstance(value, dict):
            raise ConfigError(f"--attack mapping expected, got {text!r}")
        return value
    head, _, rest = text.partition(":")
    attack, _, params = rest.partition(":")
    if not head or not attack:
        raise ConfigError(f"--attack expects SETTING:ATTACK[:key=value,...], got {text!r}")
    step: dict[str, Any] = {"setting": head, "attack": attack}
    for item in filter(None, params.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--attack parameter {item!r} is not key=value")
        step[key.strip()] = _parse_value(value, what=f"--attack {key.strip()}")
    return step


def cmd_report(args: argparse.Namespace) -> int:
    from advguard.evaluation import RecordStore
    from advguard.files import check_report_target
    from advguard.reports import html_report, load_summaries, markdown_report

    if not Path(args.store).exists():
        raise AdvguardError(f"record store not found: {args.store}")
    if args.output:  # refuse a bad --output before reading anything
        check_report_target(args.output, force=args.force, protect=[args.store])
    command = "advguard report " + " ".join(sys.argv[2:]) if args.command_line else None
    with RecordStore(args.store) as store:
        summaries = load_summaries(store, args.ids)
    render = html_report if args.format == "html" else markdown_report
    _emit(render(summaries, title=args.title, command=command), args.output, force=args.force,
          protect=[args.store])
    return 0


def cmd_records_dump(args: argparse.Namespace) -> int:
    from advguard.evaluation import RecordStore

    if not Path(args.store).exists():
        raise AdvguardError(f"record store not found: {args.store}")
    with RecordStore(args.store) as store:
        counts = store.dump(args.output)
    print(f"wrote {args.output}: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    return 0


def cmd_records_load(args: argparse.Namespace) -> int:
    from advguard.evaluation import RecordStore
    from advguard.evaluation.store import read_records

    tables = read_records(Path(args.file))  # a bad file fails before the store is created
    with RecordStore(args.store) as store:
        added = store.merge(tables)
    print(f"loaded {args.file} into {args.store}: added "
          + ", ".join(f"{n} {t}" for t, n in added.items()))
    return 0


def cmd_experiment_list(args: argparse.Namespace) -> int:
    from advguard.experiments import list_experiments, load_experiment

    rows = []
    for name in list_experiments():
        spec = load_experiment(name)
        rows.append([name, spec.kind, str(len(spec.cells())), _first_sentence(spec.description)])
    print(render_table(["experiment", "kind", "cells", "description"], rows))
    return 0


def cmd_experiment_run(args: argparse.Namespace) -> int:
    from advguard.experiments import load_experiment

    spec = load_experiment(args.name)
    if args.dry_run:
        for cell in spec.selected(args.only):
            print(cell)
        return 0
    if args.only and not spec.selected(args.only):
        raise ConfigError(f"--only {args.only!r} matches none of the {len(spec.cells())} cells "
                          f"(see: advguard experiment run {args.name} --dry-run)")
    with _executor(args) as executor:
        spec.run(only=args.only, progress=not args.quiet, device=args.device, executor=executor)
    print(spec.report())
    return 0


def cmd_experiment_report(args: argparse.Namespace) -> int:
    from advguard.experiments import load_experiment
    from advguard.files import check_report_target

    spec = load_experiment(args.name)
    if args.output:  # before any plot is drawn
        check_report_target(args.output, force=args.force, protect=[spec.store])
    plots = args.plots or (str(Path(args.output).parent) if args.output else None)
    text = spec.report(plots_dir=plots)
    _emit(text, args.output, spec.artifacts(Path(args.output)) if args.output else {},
          force=args.force, protect=[spec.store])
    return 0


def cmd_configs_list(args: argparse.Namespace) -> int:
    from advguard.configs import config_path, list_configs

    rows = []
    for name in list_configs(args.prefix or ""):
        first = next((line[1:].strip() for line in config_path(name).read_text().splitlines()
                      if line.startswith("#")), "")
        rows.append([name, first])
    print(render_table(["config", "description"], rows))
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advguard",
        description="Inference-time defenses against adversarial examples, and honest "
                    "measurement of how much they help.")
    parser.add_argument("--version", action="version", version=f"advguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data_sub = _group(sub, "data", help="list datasets and where they are found",
                      description="Datasets advguard reads (official on-disk formats).")
    p = data_sub.add_parser("list", help="list datasets and their locations")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'cifar*'")
    p.add_argument("--root", help="data root (default: $ADVGUARD_DATA or ~/.cache/advguard/data)")
    p.set_defaults(func=cmd_data_list)
    p = data_sub.add_parser("info", help="describe one dataset and how to obtain it")
    p.add_argument("name", help="dataset name (see: advguard data list)")
    p.add_argument("--root", help="data root (default: $ADVGUARD_DATA or ~/.cache/advguard/data)")
    p.add_argument("--load", action="store_true", help="load every split and print its size")
    p.set_defaults(func=cmd_data_info)

    models_sub = _group(sub, "models", help="list model architectures",
                        description="Model architectures in the registry.")
    p = models_sub.add_parser("list", help="list architectures")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--flops", action="store_true", help="also count MACs and parameters")
    p.add_argument("--num-classes", type=int, default=10, help="classes for --flops (default 10)")
    p.set_defaults(func=cmd_models_list)

    defenses_sub = _group(sub, "defenses", help="list the registered defenses",
                          description="Defenses in the registry: kind, traits, paper and "
                          "parameters (the keys of a defense spec).")
    p = defenses_sub.add_parser("list", help="list defenses")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'c*'")
    p.set_defaults(func=cmd_defenses_list)

    configs_sub = _group(sub, "configs", help="list the configs shipped with advguard",
                         description="Configs shipped with advguard (recipes, paper tables).")
    p = configs_sub.add_parser("list", help="list shipped configs")
    p.add_argument("prefix", nargs="?", help="only configs under this folder, e.g. 'train'")
    p.set_defaults(func=cmd_configs_list)

    p = sub.add_parser("train", help="train a model with a recipe",
                       description="Train a model. Flags override values from --config; "
                                   "--set KEY=VALUE sets any TrainConfig field. Re-running the "
                                   "same command resumes an interrupted run.")
    p.add_argument("--config", help="YAML file with TrainConfig fields (optionally under 'train:'),"
                   " or the name of a shipped config (see: advguard configs list)")
    p.add_argument("--dataset", help="dataset name (default fashion-mnist-sample)")
    p.add_argument("--model", help="architecture name (default smallcnn)")
    p.add_argument("--recipe", help="training recipe (default standard)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--schedule", help="lr schedule: constant, step, cosine, onecycle")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--train-size", dest="train_size", type=int,
                   help="class-balanced training subset size")
    p.add_argument("--val-size", dest="val_size", type=_parse_value,
                   help="held-out validation size (int) or fraction (float)")
    p.add_argument("--test-size", dest="test_size", type=int,
                   help="evaluate on the first N test points (0: none)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any config field (YAML value), repeatable")
    p.add_argument("--output", "-o",
                   help="output directory (default runs/DATASET-MODEL-RECIPE-sSEED)")
    p.add_argument("--no-resume", action="store_true", help="start over even if state exists")
    p.add_argument("--overwrite", action="store_true",
                   help="allow replacing a run with a different config in --output")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval", help="evaluate a model and defense under attacks (worst-case cascade)",
        description="Evaluate a checkpoint behind a defense with a worst-case cascade of attacks "
                    "in threat-model settings (oblivious, adaptive, transfer, query). Records go "
                    "to an SQLite store; re-running the same evaluation resumes it.")
    p.add_argument("--config", help="YAML evaluation config, or a shipped config name")
    p.add_argument("--model", help="model checkpoint (.safetensors written by advguard train)")
    p.add_argument("--defense", help="defense name (e.g. bit_depth) or a YAML mapping "
                                     "(e.g. \"{name: gaussian_noise, sigma: 0.1}\")")
    p.add_argument("--attack", action="append", metavar="SETTING:ATTACK[:k=v,...]",
                   help="a cascade step, repeatable, in order; "
                        "e.g. adaptive:pgd:steps=20,alpha=0.01")
    p.add_argument("--preset", metavar="NAME",
                   help="attack preset run after the --attack steps: auto (the default without "
                        "--attack: standard for deterministic defenses, rand for randomized), "
                        "standard, rand, quick (reduced budget), none (clean only)")
    p.add_argument("--dataset")
    p.add_argument("--split")
    p.add_argument("--n", type=int, help="number of examples")
    p.add_argument("--subset", help="first (default) or balanced")
    p.add_argument("--norm", help="linf (default) or l2")
    p.add_argument("--eps", type=_parse_value, help="perturbation budget, e.g. 0.1 or 8/255")
    p.add_argument("--runs", type=int, help="independent runs for randomized defenses (default 5)")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--device")
    p.add_argument("--name", help="a display name for the evaluation")
    p.add_argument("--no-checks", action="store_true", help="skip the reliability probes")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="set any config field")
    p.add_argument("--store", default="results/records.sqlite",
                   help="SQLite record store (default results/records.sqlite)")
    _add_executor_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="tables (markdown or HTML) from evaluation records",
                       description="Generate tables from the record store; never typed by hand.")
    p.add_argument("ids", nargs="*", help="evaluation ids (prefixes) or names; default all")
    p.add_argument("--store", default="results/records.sqlite", help="SQLite record store")
    p.add_argument("--format", choices=["md", "html"], default="md")
    p.add_argument("--output", "-o", help="write to this file instead of stdout (a report "
                   "advguard wrote before is replaced; any other file only with --force)")
    p.add_argument("--force", action="store_true",
                   help="replace --output even if advguard did not write it (never the record "
                        "store, another SQLite database or a checkpoint)")
    p.add_argument("--title", default="advguard evaluation report")
    p.add_argument("--command-line", action="store_true",
                   help="include the generating command in the report")
    p.set_defaults(func=cmd_report)

    rec_sub = _group(sub, "records", help="move evaluation records between stores and files",
                     description="Dump a record store to a JSON-lines file (text, diffable, "
                     "for version control or another machine) and load such a file into a "
                     "store; a loaded, unfinished evaluation resumes where it stopped.")
    p = rec_sub.add_parser("dump", help="write every record of a store as JSON lines")
    p.add_argument("--store", required=True, help="SQLite record store to read")
    p.add_argument("--output", "-o", required=True,
                   help="records file to write (a records file written before is replaced)")
    p.set_defaults(func=cmd_records_dump)
    p = rec_sub.add_parser("load", help="merge a records file into a store (finished work is "
                                        "kept, never redone)")
    p.add_argument("file", help="records file written by `advguard records dump`")
    p.add_argument("--store", required=True, help="SQLite record store (created if missing)")
    p.set_defaults(func=cmd_records_load)

    exp_sub = _group(sub, "experiment", help="run a paper table, figure or sweep",
                     description="Experiments are YAML files of a registered kind (grid: a "
                     "grid of evaluations; sweep: SMOOTH's sigma x m x vote "
                     "sweep) with the tables and plots generated from their "
                     "records.")
    p = exp_sub.add_parser("list", help="list shipped experiments")
    p.set_defaults(func=cmd_experiment_list)
    p = exp_sub.add_parser("run", help="train what is missing, then evaluate every cell "
                                       "(resumable)")
    p.add_argument("name", help="experiment file or shipped name (see: advguard experiment list)")
    p.add_argument("--only", help="glob over cell names, e.g. '*CAP*' or 'val/*' "
                                  "(see --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    p.add_argument("--device", help="override the evaluation device")
    _add_executor_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_experiment_run)
    p = exp_sub.add_parser("report", help="tables and plots from the experiment's records")
    p.add_argument("name", help="experiment file or shipped name")
    p.add_argument("--output", "-o", help="markdown file to write (plots and, for a sweep, "
                                              "the selection JSON go beside it)")
    p.add_argument("--plots", help="directory for plot PNGs (default: beside --output)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --output file that advguard did not write (never "
                        "a record store or a checkpoint)")
    p.set_defaults(func=cmd_experiment_report)

    p = sub.add_parser("quickstart", help="a 2-minute tour on the embedded Fashion-MNIST sample",
                       description="Train a small CNN on the Fashion-MNIST sample shipped with "
                                   "advguard (CPU, about two minutes) and print a short table.")
    p.add_argument("--output", "-o", default=None,
                   help="directory for the checkpoint (default: a temporary directory)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 8)")
    p.add_argument("--n", type=int, default=200, help="test images attacked (default 200)")
    p.add_argument("--device", default="cpu", help="device (default cpu)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_quickstart)

    return parser


def _group(sub: Any, name: str, **kwargs: Any) -> Any:
    """A command group (``advguard NAME SUBCOMMAND``); the group alone prints its help."""
    group = sub.add_parser(name, **kwargs)
    group.set_defaults(func=lambda a: _help(group))
    return group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def _first_sentence(text: str, limit: int = 90) -> str:
    first = text.split(". ")[0].strip()
    return first if len(first) <= limit else first[:limit - 1].rstrip() + "…"


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    import warnings

    from advguard.errors import AdvguardWarning

    def show(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if issubclass(category, AdvguardWarning):
            print(f"advguard: warning: {message}", file=sys.stderr)
        else:
            previous(message, category, *rest, **kw)

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        return int(args.func(args))
    except AdvguardError as exc:
        print(f"advguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advguard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
