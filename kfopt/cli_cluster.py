"""`kfopt submit | upload | schedule`: the cluster subcommands, registered into kfopt's CLI.

Each handler returns an exit code and raises KfoptError for bad input; kfopt/cli.py prints it.
Auth flags are passed to kfp.Client as they are (its docs describe them); nothing custom.
"""

from __future__ import annotations

import argparse
import os

from kfopt import cluster


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add submit, upload and schedule to `subparsers`, each with `func` set."""
    submit = subparsers.add_parser("submit", help="start one run of a compiled pipeline")
    _common(submit)
    _run_options(submit)
    submit.add_argument("--run-name", help="display name of the run (default: pipeline + time)")
    submit.set_defaults(func=_submit)

    upload = subparsers.add_parser(
        "upload", help="upload a compiled pipeline, or a new version if the name exists")
    _common(upload)
    upload.add_argument("--name", help="pipeline name (default: the package's pipeline name)")
    upload.add_argument("--version", help="version name when the pipeline exists "
                                          "(default: NAME-<sha256 of the package>)")
    upload.set_defaults(func=_upload)

    schedule = subparsers.add_parser(
        "schedule", help="create a recurring run (KFP cron: 6 fields, seconds first)")
    _common(schedule)
    _run_options(schedule)
    schedule.add_argument("--cron", required=True,
                          help=f"6-field cron, seconds first, e.g. '{cluster.CRON_EXAMPLE}'")
    schedule.add_argument("--name", help="recurring run name (default: pipeline + ' schedule')")
    schedule.add_argument("--catchup", action="store_true",
                          help="backfill intervals missed while paused (default: no catch-up)")
    schedule.set_defaults(func=_schedule)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--package", required=True, help="compiled pipeline YAML")
    auth = parser.add_argument_group("connection (passed to kfp.Client)")
    auth.add_argument("--host", default=os.environ.get("KF_PIPELINES_ENDPOINT"),
                      help="KFP API URL, e.g. http://localhost:8080 through a port-forward "
                           "(default: $KF_PIPELINES_ENDPOINT, else kfp's in-cluster address)")
    auth.add_argument("--existing-token", default=os.environ.get("KF_PIPELINES_TOKEN"),
                      help="bearer token (default: $KF_PIPELINES_TOKEN)")
    auth.add_argument("--sa-token-path",
                      help="projected service-account token file (audience "
                           "pipelines.kubeflow.org), read with kfp's "
                           "ServiceAccountTokenVolumeCredentials")
    auth.add_argument("--client-id", help="IAP OAuth client id")
    auth.add_argument("--other-client-id", help="desktop OAuth client id for IAP")
    auth.add_argument("--other-client-secret", help="desktop OAuth client secret for IAP")
    auth.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", help="experiment name (default: Default)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="pipeline parameter, typed as the package declares it; repeatable")
    parser.add_argument("--service-account",
                        help="Kubernetes service account the run's pods use")


def _auth(args: argparse.Namespace) -> cluster.Auth:
    return cluster.Auth(host=args.host, existing_token=args.existing_token,
                        client_id=args.client_id, other_client_id=args.other_client_id,
                        other_client_secret=args.other_client_secret,
                        sa_token_path=args.sa_token_path, namespace=args.namespace)


def _submit(args: argparse.Namespace) -> int:
    package = cluster.read_package(args.package)
    params = cluster.parse_params(args.param, package)
    run_id = cluster.submit(_auth(args), package, params, args.experiment, args.run_name,
                            args.service_account)
    print(f"Submitted run {run_id} of pipeline {package.name}.")
    return 0


def _upload(args: argparse.Namespace) -> int:
    package = cluster.read_package(args.package)
    pipeline_id, version_id = cluster.upload(_auth(args), package, args.name, args.version)
    what = f"version {version_id} of pipeline" if version_id else "new pipeline"
    print(f"Uploaded {what} {pipeline_id}.")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    cron = cluster.check_cron(args.cron)
    package = cluster.read_package(args.package)
    params = cluster.parse_params(args.param, package)
    recurring_id = cluster.schedule(_auth(args), package, cron, params, args.experiment,
                                    args.name, args.catchup, args.service_account)
    print(f"Created recurring run {recurring_id} ({cron}) of pipeline {package.name}.")
    return 0
