"""`selfsup finetune-ctc RUN_DIR`: speech recognition with few transcripts from an audio run's encoder."""
from __future__ import annotations

from selfsup.cli.common import add_run_arguments
from selfsup.evaluate.ctc import DECODERS, UNITS, CTCSettings, evaluate_ctc
from selfsup.run import load_run

DEFAULTS = CTCSettings()


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "finetune-ctc", help="fine-tune an audio run's encoder with a CTC head on transcribed clips; WER and CER",
        description="Add a linear layer from each frame of the run's audio encoder (wav2vec2, or audio_cnn) to the "
                    "transcripts' characters (or words, --units words) plus the CTC blank, fine-tune the network "
                    "with the CTC loss (a waveform encoder's convolutions stay frozen, as in wav2vec 2.0, unless "
                    "--train-features) on a share of the training clips (and each seed), keep the state with the "
                    "lowest validation character error rate, and score the held-out clips' transcriptions with "
                    "word and character error rates (jiwer: pip install 'selfsup[audio]'). --baseline also trains "
                    "the same network from scratch. Rows go to RUN_DIR/eval/ctc.jsonl (docs/audio.md).")
    add_run_arguments(p)
    p.add_argument("--data", default="spoken-words",
                   help="spoken-words (its digit strings) or a .jsonl manifest of clips with a \"transcript\" and, "
                        "best, a \"speaker\" or \"part\" [default: spoken-words]")
    p.add_argument("--labels", nargs="+", default=["10%"], metavar="BUDGET",
                   help="share (10%%) or count (50) of the training clips [default: 10%%]")
    p.add_argument("--seeds", type=int, default=1, help="draws of the clips per share [default: 1]")
    p.add_argument("--first-seed", type=int, default=0, help="the first draw's seed [default: 0]")
    p.add_argument("--baseline", action="store_true", help="also the same network trained from scratch")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps,
                   help=f"at least this many steps [default: {DEFAULTS.steps}]")
    p.add_argument("--epochs", type=float, default=DEFAULTS.epochs,
                   help="passes over the chosen clips, when that makes more steps [default: 0]")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help=f"[default: {DEFAULTS.batch_size}]")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help=f"AdamW learning rate [default: {DEFAULTS.lr:g}]")
    p.add_argument("--seconds", type=float, default=DEFAULTS.seconds,
                   help=f"clips are cut or padded to this length [default: {DEFAULTS.seconds:g}]")
    p.add_argument("--train-features", action="store_true",
                   help="also fine-tune a waveform encoder's convolutions (wav2vec 2.0 keeps them as they are)")
    p.add_argument("--units", choices=UNITS, default=DEFAULTS.units,
                   help="what the head writes: characters, or whole words (one symbol a word: for a small closed "
                        f"vocabulary such as spoken digits, far fewer symbols to align) [default: {DEFAULTS.units}]")
    p.add_argument("--decoder", choices=DECODERS, default=DEFAULTS.decoder,
                   help=f"greedy, or a prefix beam search without language model [default: {DEFAULTS.decoder}]")
    p.add_argument("--beams", type=int, default=DEFAULTS.beams, help=f"beam width [default: {DEFAULTS.beams}]")
    p.add_argument("--on", choices=["test", "val"], default="test",
                   help="scored part: test for final figures, val for choices [default: test]")
    p.add_argument("--data-dir", default="", help="where fetched data sets are [default: where fetch writes]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_finetune_ctc)


def cmd_finetune_ctc(args) -> int:
    settings = CTCSettings(steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           seconds=args.seconds, decoder=args.decoder, beams=args.beams, units=args.units,
                           freeze_features=not args.train_features)
    evaluate_ctc(load_run(args.run_dir), args.labels, args.seeds, settings, args.baseline, args.on, args.data,
                 args.data_dir, progress=not args.quiet, first_seed=args.first_seed)
    return 0
