"""Talk to a Kubeflow Pipelines API server: submit a run, upload a pipeline, schedule retraining.

Everything a user can get wrong is checked locally first (package file, parameter names and types,
unpinned images, a 5-field cron) so the error is one sentence here and not a failed run an hour
later. Authentication is only what kfp.Client itself supports; kfp is imported lazily so the rest
of kfopt works without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import urllib.parse
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import yaml

from kfopt.deployment import image_pin_problem
from kfopt.errors import ConfigError, KfoptError, yaml_problem

CRON_EXAMPLE = "0 0 3 * * *"
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-#LW]+$")
#: robfig/cron's predefined schedules, plus `@every <Go duration>`.
_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_EVERY = re.compile(r"^@every ([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


@dataclass(frozen=True)
class Auth:
    """Connection settings handed to kfp.Client unchanged (None = kfp's own default)."""
    host: str | None = None
    existing_token: str | None = None
    client_id: str | None = None
    other_client_id: str | None = None
    other_client_secret: str | None = None
    sa_token_path: str | None = None
    namespace: str | None = None


@dataclass(frozen=True)
class Package:
    """A compiled pipeline package (the YAML `kfopt compile` writes) and what it declares."""
    path: Path
    name: str
    parameters: dict[str, str]
    sha256: str


def read_package(path: str | Path) -> Package:
    """Read a compiled pipeline YAML, refusing one whose images are not pinned."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"Pipeline package {path} is a folder; pass the .yaml file `kfopt compile` wrote.")
    if not path.is_file():
        raise ConfigError(f"Pipeline package {path} does not exist; compile it first with "
                          "`kfopt compile -o FILE.yaml`.")
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"Pipeline package {path} must be the .yaml file `kfopt compile` writes.")
    try:
        data = path.read_bytes()
        spec = next(yaml.safe_load_all(data), None)
    except OSError as error:
        raise ConfigError(f"Cannot read pipeline package {path} ({error.strerror}); check its permissions.") \
            from None
    except yaml.YAMLError as error:
        raise ConfigError(f"Pipeline package {path} is not valid YAML ({yaml_problem(error)}); "
                          "recompile it.") from None
    try:
        return _package(path, spec, hashlib.sha256(data).hexdigest())
    except (AttributeError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a compiled KFP pipeline (its root, pipelineInfo or "
                          "deploymentSpec is malformed); recompile it with `kfopt compile`.") from None


def _package(path: Path, spec: Any, sha256: str) -> Package:
    """The Package a parsed pipeline spec declares; malformed specs raise Attribute/Key/TypeError."""
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise ConfigError(f"{path} is not a compiled KFP pipeline (no root or pipelineInfo); "
                          "recompile it with `kfopt compile`.")
    for executor, body in (spec.get("deploymentSpec") or {}).get("executors", {}).items():
        image = body.get("container", {}).get("image")
        problem = image and image_pin_problem(str(image))
        if problem:
            raise ConfigError(f"Image {image} of {executor} in {path} {problem}, then recompile.")
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return Package(path, str(spec["pipelineInfo"]["name"]),
                   {name: d.get("parameterType", "STRING") for name, d in declared.items()}, sha256)


def parse_params(pairs: list[str], package: Package) -> dict[str, Any]:
    """Turn `name=value` strings into pipeline arguments typed as the package declares them."""
    result: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param {pair!r} must look like NAME=VALUE.")
        if name not in package.parameters:
            valid = ", ".join(sorted(package.parameters)) or "(none)"
            raise ConfigError(f"--param {name} is not a parameter of pipeline "
                              f"{package.name}; valid names: {valid}.")
        if name in result:
            raise ConfigError(f"--param {name} is given twice; give it once.")
        result[name] = _typed(name, text, package.parameters[name])
    return result


def _typed(name: str, text: str, kind: str) -> Any:
    try:
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            return {"true": True, "false": False}[text.lower()]
        if kind in ("LIST", "STRUCT"):
            value = json.loads(text)
            if isinstance(value, list if kind == "LIST" else dict):
                return value
            raise ValueError(text)
    except (ValueError, KeyError):
        readable = {"NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number",
                    "BOOLEAN": "true or false", "LIST": "a JSON list",
                    "STRUCT": "a JSON object"}[kind]
        raise ConfigError(f"--param {name}={text} is not {readable}, which the pipeline "
                          f"declares ({kind}).") from None
    return text


def check_cron(expression: str) -> str:
    """KFP's scheduler (robfig/cron) wants 6 fields, seconds first; 5 would shift every field."""
    fields = expression.split()
    if expression.startswith("@"):
        if expression in _CRON_DESCRIPTORS or _CRON_EVERY.match(expression):
            return expression
        raise ConfigError(f"Cron '{expression}' is not a schedule KFP knows; use one of "
                          f"{', '.join(_CRON_DESCRIPTORS)}, '@every 1h30m' or 6 fields such as "
                          f"'{CRON_EXAMPLE}'.")
    if len(fields) == 5:
        raise ConfigError(
            f"Cron '{expression}' has 5 fields but KFP wants 6, seconds first (it would read "
            f"yours seconds-first and fire at the wrong times); use '0 {expression}'.")
    if len(fields) != 6 or not all(_CRON_FIELD.match(field) for field in fields):
        raise ConfigError(f"Cron '{expression}' is not a 6-field cron expression (seconds "
                          f"minutes hours day-of-month month day-of-week), e.g. '{CRON_EXAMPLE}'.")
    return expression


def check_host(host: str | None) -> None:
    """A --host must be an http(s) URL; kfp.Client would otherwise guess https and fail later."""
    if not host:
        return
    parsed = urllib.parse.urlsplit(host)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"--host {host!r} is not an http(s) URL; write it as http://HOST:PORT, e.g. "
                          "http://localhost:8080 through `kubectl port-forward`.")
    try:
        parsed.port
    except ValueError:
        raise ConfigError(f"--host {host!r} has an invalid port; use a number from 1 to 65535.") from None


@contextlib.contextmanager
def _api_errors(host: str | None) -> Iterator[None]:
    """Turn connection and HTTP failures of the generated API client into one clear sentence.

    Logging is muted meanwhile: urllib3 logs each retry and kfp logs a traceback per failed
    health check, which would bury the one sentence the user needs.
    """
    import urllib3
    from kfp_server_api import ApiException

    where = host or "kfp's default endpoint (in-cluster service or kubeconfig proxy)"
    logging.disable(logging.ERROR)
    try:
        yield
    except urllib3.exceptions.HTTPError as error:
        reason = getattr(error, "reason", None) or error
        raise KfoptError(f"Cannot reach the KFP API at {where} ({reason}); check the URL, "
                         "the port-forward or the network.") from None
    except ApiException as error:
        detail = _server_message(error.body) or error.reason
        raise KfoptError(f"The KFP API at {where} answered {error.status} ({detail}).") from None
    except TimeoutError as error:
        raise KfoptError(f"The KFP API at {where} did not answer its health check ({error}).") \
            from None
    except ValueError as error:
        raise KfoptError(f"The KFP client refused the request to {where}: {error}") from None
    finally:
        logging.disable(logging.NOTSET)


def _server_message(body: Any) -> str | None:
    try:
        return json.loads(body).get("message") or json.loads(body).get("error_message")
    except (TypeError, ValueError, AttributeError):
        return None


def connect(auth: Auth):
    """A kfp.Client for `auth`; raises KfoptError when the server cannot be reached."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    check_host(auth.host)
    if auth.sa_token_path and not Path(auth.sa_token_path).is_file():
        raise ConfigError(f"--sa-token-path {auth.sa_token_path} does not exist; mount a "
                          "projected service-account token with audience pipelines.kubeflow.org.")
    options: dict[str, Any] = {
        "host": auth.host, "existing_token": auth.existing_token, "client_id": auth.client_id,
        "other_client_id": auth.other_client_id,
        "other_client_secret": auth.other_client_secret,
    }
    if auth.sa_token_path:
        options["credentials"] = ServiceAccountTokenVolumeCredentials(auth.sa_token_path)
    if auth.namespace:
        options["namespace"] = auth.namespace
    with warnings.catch_warnings(), _api_errors(auth.host):
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(**options)


def submit(auth: Auth, package: Package, params: dict[str, Any], experiment: str | None,
           run_name: str | None, service_account: str | None = None) -> str:
    """Start one run of `package`; returns the run id."""
    client = connect(auth)
    with _api_errors(auth.host):
        result = client.create_run_from_pipeline_package(
            pipeline_file=str(package.path), arguments=params, experiment_name=experiment,
            run_name=run_name or f"{package.name} {datetime.now():%Y-%m-%d %H:%M:%S}",
            namespace=auth.namespace, service_account=service_account)
    return result.run_id


def upload(auth: Auth, package: Package, name: str | None, version: str | None) -> tuple[str, str]:
    """Upload `package` as a pipeline, or as a new version if the name exists.

    Returns (pipeline_id, pipeline_version_id or ""). The default version name carries the
    package's sha256, so uploading the same file twice is refused by the server, not duplicated.
    """
    name = name or package.name
    client = connect(auth)
    with _api_errors(auth.host):
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            created = client.upload_pipeline(str(package.path), pipeline_name=name,
                                             namespace=auth.namespace)
            return created.pipeline_id, ""
        created = client.upload_pipeline_version(
            str(package.path), pipeline_version_name=version or f"{name}-{package.sha256[:12]}",
            pipeline_id=pipeline_id)
        return created.pipeline_id, created.pipeline_version_id


def schedule(auth: Auth, package: Package, cron: str, params: dict[str, Any],
             experiment: str | None, name: str | None, catchup: bool = False,
             service_account: str | None = None) -> str:
    """Create a recurring run (at most one at a time); returns the recurring run id."""
    cron = check_cron(cron)
    client = connect(auth)
    with _api_errors(auth.host):
        experiment_id = client.create_experiment(name=experiment or "Default",
                                                 namespace=auth.namespace).experiment_id
        created = client.create_recurring_run(
            experiment_id=experiment_id, job_name=name or f"{package.name} schedule",
            cron_expression=cron, max_concurrency=1, no_catchup=not catchup, params=params,
            pipeline_package_path=str(package.path), service_account=service_account)
    return created.recurring_run_id
