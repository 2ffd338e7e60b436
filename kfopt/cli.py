"""The `kfopt` command: run locally, compile for Kubeflow, re-render reports, talk to a KFP server, read the registry.

Every KfoptError ends as one line on stderr and exit code 2; TensorFlow is never imported here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from kfopt import __version__
from kfopt import config as cfg_mod
from kfopt.errors import ConfigError, KfoptError


def _apply_overrides(raw: dict, pairs: list[str]) -> dict:
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects section.key=value, got {pair!r}.")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section.")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_config(args: argparse.Namespace) -> cfg_mod.RunConfig:
    path = cfg_mod.resolve_path(args.config)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    extra = list(getattr(args, "set", None) or [])
    if getattr(args, "data", None):
        extra.append(f"data.source={args.data}")
    if getattr(args, "label_column", None):
        extra.append(f"data.label_column={args.label_column}")
    if getattr(args, "model", None):
        extra.append(f"model.uri={args.model}")
    if getattr(args, "deployment", None):
        extra.append(f"deployment={args.deployment}")
    try:
        return cfg_mod.from_dict(_apply_overrides(raw, extra))
    except ConfigError as exc:
        where = f"{path} with the command-line overrides" if extra else str(path)
        raise ConfigError(f"{where}: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from kfopt import local_run, report

    cfg = load_config(args)
    print(f"kfopt {__version__}: running pipeline '{cfg.name}' locally (kfp.local) on {cfg.data.source}", flush=True)
    run_dir = local_run.run(cfg, Path(args.runs_dir), cache=not args.no_cache, verbose=args.verbose)
    data = local_run.load_report(run_dir / "report.json")
    print("\n" + report.text_table(data))
    if (run_dir / "publish.json").is_file():
        from kfopt import publish

        print("\n" + publish.text(publish.load(run_dir / "publish.json")))
    print(f"\nWall time: {(run_dir / 'wall_seconds.txt').read_text().strip()} s")
    print(f"Report: {run_dir / 'report.html'}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from kfp import compiler

    from kfopt import deployment as deploy_mod
    from pipelines.kfopt_pipeline import build

    cfg = load_config(args)
    deployment = deploy_mod.load(cfg.deployment)
    out = Path(args.output)
    tmp = out.with_name(f".partial-{out.name}")
    try:
        compiler.Compiler().compile(build(deployment), str(tmp), pipeline_parameters=cfg_mod.pipeline_params(cfg))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"Compiled pipeline ({cfg.name}, deployment {deployment.name}) → {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kfopt import local_run, report

    path = local_run.find_report(args.run, Path(args.runs_dir))
    data = local_run.load_report(path)
    report.render_in_place(data, path.parent)  # with this kfopt's renderer
    print(report.text_table(data))
    print(f"\nReport: {path.parent / 'report.html'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kfopt", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"kfopt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", default="digits_cnn", help="config name under config/ or a YAML path")
        sp.add_argument("--data", help="dataset: bundled name, or CSV/NPZ path or gs:// URI")
        sp.add_argument("--label-column", help="label column of a CSV dataset")
        sp.add_argument("--model", help="an already trained Keras model (.keras or SavedModel, path or gs://)")
        sp.add_argument("--deployment", help="deployment name under config/deployment/ or a YAML path")
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")

    r = sub.add_parser("run", help="run the whole pipeline locally and print the leaderboard")
    with_config(r)
    r.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs/)")
    r.add_argument("--no-cache", action="store_true", help="re-run every stage even if cached")
    r.add_argument("--verbose", action="store_true", help="show every task's full log (always in <run>/pipeline.log)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compile", help="compile the pipeline to a KFP YAML package")
    with_config(c)
    c.add_argument("-o", "--output", default="kfopt_pipeline.yaml", help="output file")
    c.set_defaults(func=cmd_compile)

    rp = sub.add_parser("report", help="re-render the report of a local run and print its leaderboard")
    rp.add_argument("run", nargs="?", default="latest", help="run folder, its name under runs/, or latest")
    rp.add_argument("--runs-dir", default="runs")
    rp.set_defaults(func=cmd_report)

    from kfopt import cli_cluster, cli_models

    cli_cluster.register(sub)
    cli_models.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except KfoptError as exc:
        print(f"kfopt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kfopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
