"""`selfsup finetune-seq2seq RUN_DIR` and `selfsup summarize RUN_DIR`: summaries from an encoder-decoder run."""
from __future__ import annotations

import json
from pathlib import Path

from selfsup.cli.common import add_run_arguments
from selfsup.errors import DataError
from selfsup.evaluate.summaries import SummarySettings, evaluate_summaries, summarize
from selfsup.run import load_run
from selfsup.text.summarize import STRATEGIES, DecodeSettings

DEFAULTS, DECODE = SummarySettings(), DecodeSettings()


def add_decode_arguments(parser) -> None:
    parser.add_argument("--strategy", choices=STRATEGIES, default=DECODE.strategy,
                        help=f"beam search, greedy decoding or sampling [default: {DECODE.strategy}]")
    parser.add_argument("--beams", type=int, default=DECODE.beams, help=f"beam width [default: {DECODE.beams}]")
    parser.add_argument("--length-penalty", type=float, default=DECODE.length_penalty,
                        help="beam scores are log p / length ** this; above 1 favours longer summaries "
                             f"[default: {DECODE.length_penalty}]")
    parser.add_argument("--max-new-tokens", type=int, default=DECODE.max_new_tokens,
                        help=f"longest summary in tokens [default: {DECODE.max_new_tokens}]")
    parser.add_argument("--no-repeat-ngram", type=int, default=DECODE.no_repeat_ngram,
                        help=f"never write an n-gram of this size twice; 0 = allowed [default: {DECODE.no_repeat_ngram}]")
    parser.add_argument("--temperature", type=float, default=DECODE.temperature,
                        help=f"sampling temperature [default: {DECODE.temperature}]")
    parser.add_argument("--top-k", type=int, default=DECODE.top_k, help="sample among the k likeliest tokens; 0 = all")
    parser.add_argument("--top-p", type=float, default=DECODE.top_p,
                        help="sample among the likeliest tokens whose probability reaches p; 1 = all")
    parser.add_argument("--seed", type=int, default=DECODE.seed, help="sampling seed [default: 0]")


def decode_settings(args) -> DecodeSettings:
    return DecodeSettings(strategy=args.strategy, beams=args.beams, length_penalty=args.length_penalty,
                          max_new_tokens=args.max_new_tokens, no_repeat_ngram=args.no_repeat_ngram,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "finetune-seq2seq", help="fine-tune a bart/t5 (or clm) run on document -> summary pairs, score it with ROUGE",
        description="Fine-tune the run's encoder-decoder (or a clm run's language model, prompted with the document "
                    "and a separator) on document -> summary pairs with a share of the training "
                    "pairs (and each seed); the validation pairs' ROUGE-L (greedy summaries) chooses the state "
                    "kept; the scored part's summaries get ROUGE-1/2/L F1 (rouge-score: pip install "
                    "'selfsup[summaries]'), next to the lead baseline (the first sentence) and, with --baseline, "
                    "the same network trained from scratch. Rows go to RUN_DIR/eval/summaries.jsonl; the model "
                    "fine-tuned on the largest share with seed 0 is saved for `selfsup summarize` "
                    "(docs/summaries.md).")
    add_run_arguments(p)
    p.add_argument("--data", default="debian-descriptions",
                   help="debian-descriptions (selfsup data fetch debian-descriptions), or a .jsonl file of pairs, "
                        "split 80/10/10 by line [default: debian-descriptions]")
    p.add_argument("--source-field", default="", help="the documents' field [default: document]")
    p.add_argument("--target-field", default="", help="the summaries' field [default: summary]")
    p.add_argument("--labels", nargs="+", default=["100%"], metavar="BUDGET",
                   help="share (10%%) or count (500) of the training pairs [default: 100%%]")
    p.add_argument("--seeds", type=int, default=1, help="draws of the pairs per share [default: 1]")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first draw's seed: seeds FIRST .. FIRST+SEEDS-1, to add draws to earlier ones; only "
                        "seed 0's model is saved [default: 0]")
    p.add_argument("--baseline", action="store_true", help="also the same network trained from scratch")
    p.add_argument("--epochs", type=float, default=DEFAULTS.epochs,
                   help=f"passes over the chosen pairs [default: {DEFAULTS.epochs:g}]")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help=f"at least this many steps [default: {DEFAULTS.steps}]")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help=f"[default: {DEFAULTS.batch_size}]")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help=f"AdamW learning rate [default: {DEFAULTS.lr:g}]")
    p.add_argument("--summary-tokens", type=int, default=DEFAULTS.summary_tokens,
                   help=f"longest training summary in tokens, EOS included [default: {DEFAULTS.summary_tokens}]")
    p.add_argument("--val-pairs", type=int, default=DEFAULTS.val_pairs,
                   help=f"validation pairs the checks summarise [default: {DEFAULTS.val_pairs}]")
    p.add_argument("--on", choices=["test", "val"], default="test",
                   help="scored part: test for final figures, val for choices [default: test]")
    p.add_argument("--data-dir", default="", help="where fetched data sets are [default: where fetch writes]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_decode_arguments(p)
    p.set_defaults(func=cmd_finetune)

    s = sub.add_parser("summarize", help="summarize documents with a run's fine-tuned summarizer",
                       description="Write a summary of each document with the model `selfsup finetune-seq2seq` "
                                   "saved in the run folder. --text takes a .txt file (one document) or a .jsonl "
                                   "file (one document a line, in --source-field).")
    add_run_arguments(s)
    s.add_argument("--text", required=True, help=".txt (one document) or .jsonl (one a line)")
    s.add_argument("--source-field", default="document", help="the .jsonl field holding documents [default: document]")
    add_decode_arguments(s)
    s.set_defaults(func=cmd_summarize)


def cmd_finetune(args) -> int:
    settings = SummarySettings(epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               summary_tokens=args.summary_tokens, val_pairs=args.val_pairs,
                               decode=decode_settings(args))
    evaluate_summaries(load_run(args.run_dir), args.labels, args.seeds, settings, args.baseline, args.on, args.data,
                       args.source_field, args.target_field, args.data_dir, progress=not args.quiet,
                       first_seed=args.first_seed)
    return 0


def read_documents(path: str, field: str) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass a .txt or .jsonl file")
    text = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix != ".jsonl":
        return [text]
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            record = json.loads(line)
            if not isinstance(record, dict) or field not in record:
                raise DataError(f"{path}:{number}: no {field!r} field; name it with --source-field")
            documents.append(str(record[field]))
    return documents


def cmd_summarize(args) -> int:
    documents = read_documents(args.text, args.source_field)
    for summary in summarize(load_run(args.run_dir), documents, decode_settings(args)):
        print(summary)
    return 0
