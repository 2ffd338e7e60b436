"""The `kfopt` command: run locally, compile for Kubeflow, talk to a KFP server, read the registry, check setup.

Bad input of any kind (a KfoptError, an argparse mistake, a path the OS refuses) ends as one
`kfopt: error:` line on stderr and exit code 2; TensorFlow is never imported here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import typing
from pathlib import Path

import yaml

from kfopt import __version__
from kfopt import config as cfg_mod
from kfopt.errors import ConfigError, KfoptError, StorageError, one_line, yaml_problem


def _apply_overrides(raw: dict, pairs: list[str]) -> dict:
    for pair in pairs:
        key, sep, value = pair.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set expects section.key=value (e.g. train.epochs=5), got {pair!r}.")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section.")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: the value {value!r} is not valid YAML ({yaml_problem(exc)}); "
                              "quote it, e.g. --set 'data.source=\"my file.csv\"'.") from None
    return raw


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML ({yaml_problem(exc)}); fix its syntax.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not UTF-8 text; pass a YAML config file.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path} ({exc.strerror}); check the path and its permissions.") from None


def load_config(args: argparse.Namespace) -> cfg_mod.RunConfig:
    path = cfg_mod.resolve_path(args.config)
    raw = _read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {path} must be a mapping of sections (data:, train:, ...), "
                          f"got a {type(raw).__name__}; see config/digits_cnn.yaml.")
    extra = list(getattr(args, "set", None) or [])
    if getattr(args, "data", None):
        extra.append(f"data.source={args.data}")
    if getattr(args, "label_column", None):
        extra.append(f"data.label_column={args.label_column}")
    if getattr(args, "model", None):
        extra.append(f"model.uri={args.model}")
    if getattr(args, "normalize", None):
        extra.append(f"data.normalize={args.normalize}")
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
    _check_inputs(cfg)
    _check_runs_dir(Path(args.runs_dir))
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


def _check_inputs(cfg: cfg_mod.RunConfig) -> None:
    """Local data and model paths checked before kfp.local starts, so a typo costs no pipeline start."""
    from kfopt import deployment, storage
    from kfopt.data import load

    deployment.load(cfg.deployment)
    load.check_source(cfg.data.source)
    uri = cfg.model.uri
    if uri and storage.is_gcs(uri):
        storage.parse_gcs(uri)
    elif uri and not Path(uri).exists():
        raise ConfigError(f"Model {uri} does not exist; --model (model.uri) takes a trained model file or "
                          "SavedModel folder, as a local path or gs:// URI.")
    if storage.is_gcs(cfg.publish.registry):
        storage.parse_gcs(cfg.publish.registry)


def _check_runs_dir(runs_dir: Path) -> None:
    """--runs-dir must be a folder kfopt can create and write; say so before any stage runs."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise StorageError(f"--runs-dir {runs_dir} is a file, not a folder; pass a folder (default: runs/).")
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=runs_dir, prefix=".kfopt-write-test-"):
            pass
    except OSError as exc:
        raise StorageError(f"Cannot write to --runs-dir {runs_dir} ({exc.strerror}); pass a writable folder.") from None


def _output_path(text: str) -> Path:
    """The -o of `kfopt compile`: a .yaml file in an existing folder (kfp only writes .yaml packages)."""
    out = Path(text)
    if out.is_dir():
        raise StorageError(f"-o {out} is a folder; name a file inside it, e.g. -o {out / 'kfopt_pipeline.yaml'}.")
    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"-o {out}: a pipeline package is a .yaml file; e.g. -o {out.with_suffix('.yaml')}.")
    if not out.parent.is_dir():
        raise StorageError(f"-o {out}: the folder {out.parent} does not exist; create it or write elsewhere.")
    return out


def cmd_compile(args: argparse.Namespace) -> int:
    from kfp import compiler

    from kfopt import deployment as deploy_mod
    from pipelines.kfopt_pipeline import build

    cfg = load_config(args)
    out = _output_path(args.output)
    deployment = deploy_mod.load(cfg.deployment)
    tmp = out.with_name(f".partial-{out.name}")
    try:
        compiler.Compiler().compile(build(deployment), str(tmp), pipeline_parameters=cfg_mod.pipeline_params(cfg))
        tmp.replace(out)
    except OSError as exc:
        raise StorageError(f"Cannot write {out} ({exc.strerror}); choose a writable -o path with free space.") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"Compiled pipeline ({cfg.name}, deployment {deployment.name}) → {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kfopt import local_run, report

    if Path(args.run).is_file():
        raise StorageError(f"{args.run} is a file; `kfopt report` takes a run folder, its name under "
                           f"{args.runs_dir}/, or latest.")
    path = local_run.find_report(args.run, Path(args.runs_dir))
    data = local_run.load_report(path)
    report.render_in_place(data, path.parent)  # with this kfopt's renderer
    print(report.text_table(data))
    print(f"\nReport: {path.parent / 'report.html'}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with kfopt's error format: one `kfopt: error:` line, exit code 2, no usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        command = "" if self.prog == "kfopt" else f"{self.prog.removeprefix('kfopt ')}: "
        print(f"kfopt: error: {command}{message} (see `{self.prog} --help`).", file=sys.stderr)
        sys.exit(2)


def _seconds(text: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 3600")
    return value


def cmd_doctor(args: argparse.Namespace) -> int:
    from kfopt import doctor

    checks = doctor.run(bucket=args.bucket, host=args.host, timeout_s=args.timeout)
    print(doctor.render(checks))
    return doctor.exit_code(checks)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kfopt", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"kfopt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", default="digits_cnn", help="config name under config/ or a YAML path")
        sp.add_argument("--data", help="dataset: bundled name, or CSV/NPZ path or gs:// URI")
        sp.add_argument("--label-column", help="label column of a CSV dataset")
        sp.add_argument("--model", help="an already trained model: Keras (.keras or SavedModel folder), torch.export "
                        "program (.pt2) or ONNX (.onnx); path or gs://. Pickles (.pt, .pth, .h5) are refused")
        sp.add_argument("--normalize", choices=("auto", "standardize", "none"),
                        help="auto (default): standardize for a model kfopt trains, data as given for --model")
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

    d = sub.add_parser("doctor", help="check this environment: what will run where, what is missing and its fix")
    d.add_argument("--bucket", help="also check list/write/delete access to this gs:// bucket (or BUCKET/PATH)")
    d.add_argument("--host", help="also check that this KFP API answers, e.g. http://localhost:8080")
    d.add_argument("--timeout", type=_seconds, default=3.0, help="seconds per network check (default: 3)")
    d.set_defaults(func=cmd_doctor)

    from kfopt import cli_cluster, cli_models, cli_serve

    cli_cluster.register(sub)
    cli_models.register(sub)
    cli_serve.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except KfoptError as exc:
        print(f"kfopt: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # last resort: a path the user gave that no specific check caught
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"kfopt: error: {one_line(exc.strerror or exc)}{where}; check the path, its permissions "
              "and the free disk space.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kfopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
