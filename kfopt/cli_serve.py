"""`kfopt serve` and `kfopt loadtest`: the promoted model (or a variant folder) behind the v2 protocol, and
a bounded load against it (kfopt.serve, kfopt.loadtest). Neither imports TensorFlow here.
"""

from __future__ import annotations

import argparse

from kfopt.cli_models import DEFAULT_REGISTRY


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0: any free port)")
    return int(text)


def _levels(text: str) -> list[int]:
    return [_positive(part.strip()) for part in text.split(",")]


def _what(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model", nargs="?", help="NAME or NAME:VERSION in the registry (default: the last promoted model)")
    sp.add_argument("--target", default="cpu", help="deployment target whose promotion is served (default: cpu)")
    sp.add_argument("--registry", default=DEFAULT_REGISTRY,
                    help=f"registry folder or gs:// URI (default: {DEFAULT_REGISTRY})")
    sp.add_argument("--variant", help="serve this variant folder (one holding kfopt.json) instead of the registry's")
    sp.add_argument("--max-batch", type=_positive, help="largest batch a request may carry (default: the model's)")
    sp.add_argument("--threads", type=int, default=1, help="runtime intra-op threads (default 1, as the benchmark)")


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("serve", help="serve the promoted model (or a variant) through the v2 inference protocol")
    _what(s)
    s.add_argument("--name", help="model name in the URL (default: the registry name, or the variant's name)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    s.add_argument("--port", type=_port, default=8080, help="port (default: 8080; 0: any free port)")
    s.set_defaults(func=_serve)

    lt = subparsers.add_parser("loadtest", help="a bounded load against `kfopt serve`: p50/p99, throughput, overhead")
    _what(lt)
    lt.add_argument("--concurrency", type=_levels, default=[1, 4, 8], help="comma-separated levels (default: 1,4,8)")
    lt.add_argument("--requests", type=_positive, default=400, help="requests per level (default: 400)")
    lt.add_argument("--batch", type=_positive, default=1, help="samples per request (default: 1)")
    lt.add_argument("--binary", action="store_true",
                    help="send inputs with the v2 binary tensor data extension instead of JSON numbers")
    lt.add_argument("--json", help="also write the figures to this JSON file")
    lt.set_defaults(func=_loadtest)


def _serve(args: argparse.Namespace) -> int:
    from kfopt import serve

    return serve.run_cli(args)


def _loadtest(args: argparse.Namespace) -> int:
    from kfopt import loadtest

    return loadtest.run_cli(args)
