"""What the commands share: KEY=VALUE overrides and the options that map onto the config."""
from __future__ import annotations

from selfsup.config import merge, parse_overrides

EPILOG_OVERRIDES = """\
Any config value can be set as KEY=VALUE after the options (dotted keys, YAML values):
  optim.lr=1.0  train.minutes=30  train.epochs=10  backbone.width=1.0  augment.crop_scale=[0.2,1.0]
Sections: data, backbone, method, augment, optim, train, eval, text, table.
`selfsup config` prints every key with its default."""


def cli_overrides(args) -> dict:
    """KEY=VALUE overrides (YAML-parsed) plus the options, which are taken as given (a path stays a string)."""
    options: dict = {}
    if getattr(args, "data", None):
        options.setdefault("data", {})["source"] = args.data
    if getattr(args, "data_dir", None):
        options.setdefault("data", {})["data_dir"] = args.data_dir
    if getattr(args, "method", None):
        options["method"] = {"name": args.method}
    if getattr(args, "modality", None):
        options.setdefault("data", {})["modality"] = args.modality
    if getattr(args, "strict", False):
        options.setdefault("data", {})["strict"] = True
    return merge(parse_overrides(args.overrides), options)


def add_run_arguments(parser, checkpoint: bool = False) -> None:
    """RUN_DIR, and with checkpoint=True the --checkpoint option of the commands that read a run's weights."""
    parser.add_argument("run_dir", help="run folder written by `selfsup pretrain`")
    if checkpoint:
        parser.add_argument("--checkpoint", help="a checkpoint of the run (.safetensors/.json path) [default: newest]")
