"""`kfopt models list | show`: read the model registry (kfopt.registry) without running anything.

list: every model name, its complete versions and, per target, the version in service.
show: the model card of each target's promoted version (or of one --version), checked against the
sha256 recorded at promotion, so a corrupted card is an error rather than a wrong answer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kfopt.errors import KfoptError
from kfopt.registry import Registry

DEFAULT_REGISTRY = "runs/registry"


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="list the model registry or show a model's cards")
    sub = models.add_subparsers(dest="models_command", required=True)
    ls = sub.add_parser("list", help="names, versions and the promoted version per target")
    _registry_option(ls)
    ls.set_defaults(func=_list)
    show = sub.add_parser("show", help="the model card(s) of a name: promoted per target, or one --version")
    show.add_argument("name", help="model name, as in `kfopt models list`")
    show.add_argument("--version", type=_version_number, help="show this version's cards instead of the promoted ones")
    show.add_argument("--target", help="only this deployment target")
    show.add_argument("--json", action="store_true", help="print the cards as JSON")
    _registry_option(show)
    show.set_defaults(func=_show)


def _registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", help="registry root: folder or gs:// URI (default: the config's "
                                           f"publish.registry, else {DEFAULT_REGISTRY})")
    parser.add_argument("--config", default="digits_cnn", help="config whose publish.registry is the default")


def _version_number(text: str) -> int:
    """argparse type of --version: registry versions count from 1."""
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number; versions are 1, 2, ... "
                                         "(as in `kfopt models list`, without the v)")
    return int(text)


def _registry(args: argparse.Namespace) -> Registry:
    from kfopt import config, storage

    uri = args.registry or config.load(args.config).publish.registry or DEFAULT_REGISTRY
    if storage.is_gcs(uri):
        storage.parse_gcs(uri)
    elif Path(uri).exists() and not Path(uri).is_dir():
        raise KfoptError(f"Registry {uri} is a file; --registry takes the registry's folder or gs:// URI.")
    return Registry(uri)


def _list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    names, targets = reg.names(), reg.targets()
    print(f"Model registry: {reg.uri}")
    if not names:
        print("No models published yet (run `kfopt run`, or check --registry).")
        return 0
    rows = [["name", "versions", *targets]]
    for name in names:
        versions = reg.versions(name)
        cells = [name, ", ".join(f"v{v}" for v in versions) or "—"]
        for target in targets:
            promo = reg.promoted(target, name)
            cells.append(f"v{promo.version} {promo.record.get('variant')}" if promo else "—")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _cards(reg: Registry, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.name not in reg.names():
        raise KfoptError(f"No model {args.name!r} in the registry {reg.uri}; known: "
                         f"{', '.join(reg.names()) or 'none'} (see `kfopt models list`).")
    targets = [args.target] if args.target else reg.targets()
    cards = []
    for target in targets:
        if args.version is not None:
            card = reg.version_card(target, args.name, args.version)
        else:
            promo = reg.promoted(target, args.name)
            card = reg.card(promo) | {"promotion": promo.number} if promo else None
        if card is not None:
            cards.append(card)
    if not cards:
        which = f"version v{args.version}" if args.version is not None else "any promoted version"
        raise KfoptError(f"{args.name!r} has no model card for {which}"
                         + (f" on {args.target}" if args.target else "") + f" in {reg.uri}; see `kfopt models list`.")
    return cards


def _describe(card: dict[str, Any]) -> list[str]:
    m, v, env = card["metrics"], card["variant"], card["environment"]
    lat = ", ".join(f"{s['p50_ms']:.4f} ms @{b}" for b, s in sorted(m["latency"].items(), key=lambda kv: int(kv[0])))
    gate = card.get("gate", {})
    prev = gate.get("previous")
    serving = card.get("serving", {})
    triton = serving.get("triton")
    data = (card["lineage"].get("dataset") or {}).get("provenance") or {}
    lines = [
        f"{card['name']} v{card['version']} — {card['target']}"
        + (f" (in service, promotion {card['promotion']})" if "promotion" in card else ""),
        f"  variant    {v['name']}: {v['format']} {v['precision']}, {v['technique']} from {v['parent'] or 'training'}",
        f"  accuracy   {m['accuracy']:.4f} ({m['accuracy_delta_pp']:+.2f} pp vs baseline), "
        f"agreement {m['agreement']:.3f}",
        f"  latency    p50 {lat} on {env['hardware']}: {env['fingerprint'].get('cpu')}, "
        f"{env['fingerprint'].get('cores')} cores, accelerator {env['fingerprint'].get('accelerator')}",
        f"  size       {(m['size_bytes'] or 0) / 1024:.1f} KiB ({(m['size_gzip_bytes'] or 0) / 1024:.1f} KiB gzipped)",
        f"  budget     {card['budget']['accuracy_budget_pp']} pp, min agreement {card['budget']['min_agreement']}; "
        f"objective {card['objective']}",
        f"  gate       {'over v' + str(prev['version']) if prev else 'first promotion'}: "
        + "; ".join(gate.get("reasons", [])),
        f"  lineage    baseline {card['lineage']['baseline']['uri']}"
        + (f"; data {data.get('source')}" if data else ""),
        f"  files      {serving.get('files')}",
        f"  triton     {triton['repository']} ({triton['variant']}, {triton['platform']})" if triton
        else f"  triton     {serving.get('note') or '—'}",
    ]
    return lines


def _show(args: argparse.Namespace) -> int:
    reg = _registry(args)
    cards = _cards(reg, args)
    if args.json:
        print(json.dumps(cards, indent=2, sort_keys=True))
        return 0
    print(f"Model registry: {reg.uri}")
    for card in cards:
        print("\n" + "\n".join(_describe(card)))
    return 0
