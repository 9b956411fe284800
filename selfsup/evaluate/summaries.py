"""Fine-tune a pretrained encoder-decoder (or, as a comparison, a causal language model) on document ->
summary pairs and score what it writes (issue 28).

    rows = evaluate_summaries(run, labels=["1%", "10%"], seeds=3, baseline=True)   # eval/summaries.jsonl
    summarize(run, ["A long description ..."])                                      # with the saved summarizer

For each share of the training pairs and each seed: the run's model (and, with `baseline`,
the same network from random initialisation) is fine-tuned with teacher forcing (cross-entropy with
label smoothing), the validation pairs' ROUGE-L of greedy summaries picks the state kept among
evenly spaced checks, and the scored part's summaries (beam search by default) get ROUGE-1/2/L.
The lead baseline (first sentence, cut to the training summaries' mean length) is scored once.
The pretrained model fine-tuned on the largest share with seed 0 is saved as the run's summarizer.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from selfsup.build import fresh_method
from selfsup.checkpoint import atomic_write
from selfsup.errors import CheckpointError, ConfigError
from selfsup.evaluate.dense import FitSettings, fit
from selfsup.evaluate.splits import parse_label_budget
from selfsup.runtime import resolve_device
from selfsup.text.pairs import encode_pairs, encode_texts, pair_parts
from selfsup.text.summarize import DecodeSettings, generate_seq2seq, lead_summaries, rouge
from selfsup.methods.denoising import compact, document_tokens, shift_right, target_logits
from selfsup.text.tokenizer import MASK, PAD

SUMMARIZER_FORMAT = "selfsup-summarizer"


@dataclass
class SummarySettings(FitSettings):
    epochs: float = 10.0
    steps: int = 300
    batch_size: int = 32
    lr: float = 5e-4                    # AdamW for every weight
    weight_decay: float = 0.01
    label_smoothing: float = 0.1        # BART's fine-tuning setting
    summary_tokens: int = 48            # longest target, EOS included
    val_pairs: int = 500                # validation pairs whose ROUGE-L the checks compute (greedy decoding)
    decode: DecodeSettings = field(default_factory=DecodeSettings)

    def __post_init__(self):
        if self.epochs <= 0 or self.lr <= 0 or self.steps < 1 or self.batch_size < 1 or self.checks < 1:
            raise ConfigError("fine-tuning epochs, lr, steps, batch size and checks must be positive")
        if self.summary_tokens < 2 or self.val_pairs < 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("summary_tokens must be >= 2, val_pairs >= 1 and label_smoothing in [0, 1)")


class EncoderDecoderSummarizer(nn.Module):
    """An encoder-decoder (seq2seq backbone) reads the document and writes the summary."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.network = backbone

    def loss(self, sources: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        """Mean cross-entropy of every non-PAD target token; the decoder reads BOS + the target (teacher forcing)."""
        predicted = targets != PAD
        logits = target_logits(self.network, sources, shift_right(targets), predicted).float()
        return F.cross_entropy(logits, targets[predicted], label_smoothing=label_smoothing)

    def write(self, sources: torch.Tensor, decode: DecodeSettings) -> list[list[int]]:
        return generate_seq2seq(self.network, sources, decode)


class PromptedSummarizer(nn.Module):
    """A causal language model (a clm run) reads `start, document, SEP` and continues with the summary
    (GPT-2's "TL;DR:" set-up, with a learned separator): the comparison the encoder-decoder is measured
    against. The document is cut so that the summary fits the model's window; the loss is on the summary
    tokens and EOS only. SEP is MASK, a token clm never reads in pretraining, so fine-tuning gives it this
    one meaning."""

    separator = MASK

    def __init__(self, method: nn.Module, summary_tokens: int, start_token: int):
        super().__init__()
        self.network, self.start_token = method, start_token
        window = getattr(method.backbone, "max_length", None)
        self.document_tokens = (window - summary_tokens - 2) if window else None
        if self.document_tokens is not None and self.document_tokens < 1:
            raise ConfigError(f"a {window}-token window leaves no room for a document next to {summary_tokens} "
                              "summary tokens; lower --summary-tokens")

    def prompts(self, sources: torch.Tensor) -> torch.Tensor:
        """sources (B, S) (document, EOS, PAD) -> (B, P): start, the document cut to fit, SEP; right-padded."""
        documents, _ = document_tokens(sources)
        documents = documents[:, :self.document_tokens]
        start = torch.full_like(documents[:, :1], self.start_token)
        rows = torch.cat([start, documents, torch.full_like(start, PAD)], 1)
        rows.scatter_(1, (documents != PAD).sum(1, keepdim=True) + 1, self.separator)
        return rows

    def loss(self, sources: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        prompts = self.prompts(sources)
        whole = torch.cat([prompts, targets], 1)
        keep = whole != PAD
        length = int(keep.sum(1).max())
        sequence = compact(whole, keep, length)
        is_summary = compact(torch.cat([torch.zeros_like(prompts), torch.ones_like(targets)], 1), keep, length)
        predicted = is_summary[:, 1:].bool()
        logits = self.network.logits(sequence[:, :-1])[predicted].float()
        return F.cross_entropy(logits, sequence[:, 1:][predicted], label_smoothing=label_smoothing)

    def write(self, sources: torch.Tensor, decode: DecodeSettings) -> list[list[int]]:
        return generate_seq2seq(self.network, self.prompts(sources), decode)


def summarizer_for(run, network: nn.Module | None = None, summary_tokens: int = 48) -> nn.Module:
    """The summarizer a run's model makes: an encoder-decoder's backbone, or a clm method prompted. `network`:
    the run's (None) or another of the same kind (the from-scratch baseline)."""
    method = network if network is not None else run.method
    backbone = method.evaluated_backbone
    if getattr(backbone, "is_encoder_decoder", False):
        return EncoderDecoderSummarizer(copy.deepcopy(backbone))
    if method.generates:
        return PromptedSummarizer(copy.deepcopy(method), summary_tokens, run.modality.start_token(run.config))
    raise ConfigError(f"{run.path} is a {run.config.method.name} run on {run.config.backbone.name}; summaries need "
                      "an encoder-decoder run (method bart or t5) or a causal language model (method clm)")


def write_summaries(model, sources: torch.Tensor, tokenizer, decode: DecodeSettings) -> list[str]:
    return [tokenizer.decode(ids).strip() for ids in model.write(sources, decode)]     # BPE words carry their space


def finetune_summarizer(model: nn.Module, train: tuple, val: tuple, val_references: list[str], tokenizer,
                        settings: SummarySettings, seed: int, device, progress: bool = True, desc: str = ""):
    """model (a summarizer, changed in place) fine-tuned on train (sources, targets); returns (model at the
    kept state, steps, the validation ROUGE-L at each check)."""
    model.to(device)
    sources, targets = train
    greedy = DecodeSettings(strategy="greedy", max_new_tokens=settings.summary_tokens,
                            no_repeat_ngram=settings.decode.no_repeat_ngram)
    scores = []

    def batch_loss(indices, gen):
        return model.loss(sources[indices].to(device), targets[indices].to(device), settings.label_smoothing)

    def validate():
        scores.append(rouge(write_summaries(model, val[0], tokenizer, greedy), val_references)["rougeL"])
        return scores[-1]

    steps, _ = fit(model, batch_loss, validate, settings, len(sources), seed, frozen_backbone=False,
                   progress=progress, desc=desc)
    return model.eval(), steps, scores


def evaluate_summaries(run, labels: list[str], seeds: int = 1, settings: SummarySettings | None = None,
                       baseline: bool = False, part: str = "test", source: str = "debian-descriptions",
                       source_field: str = "", target_field: str = "", data_dir: str = "",
                       progress: bool = True, first_seed: int = 0) -> list[dict]:
    """Fine-tune and score as the module docstring says; one row per (share, seed, init) and one for the lead
    baseline, appended to RUN_DIR/eval/summaries.jsonl. Seeds first_seed .. first_seed + seeds - 1, so that
    more draws can be added to a table later."""
    settings = settings or SummarySettings()
    summarizer = summarizer_for(run, summary_tokens=settings.summary_tokens)    # refuses a run that cannot write
    window = getattr(summarizer.network, "max_length", None)
    if isinstance(summarizer, EncoderDecoderSummarizer) and settings.summary_tokens > window:
        raise ConfigError(f"--summary-tokens {settings.summary_tokens} is longer than the decoder's {window} "
                          "positions (text.max_length of the run)")
    cfg, device = run.config, resolve_device(run.config.train.device)
    tokenizer = run.modality.tokenizer(cfg, run.path)
    parts = pair_parts(source, source_field, target_field, data_dir or None)
    encode = lambda pairs, name: encode_pairs(pairs, tokenizer, cfg.text.max_length,  # noqa: E731
                                              settings.summary_tokens, name)
    train = encode(parts["train"], "training pairs")
    val_pairs = parts["val"][:settings.val_pairs]
    val = encode(val_pairs, "validation pairs")
    scored_pairs = parts[part]
    scored_sources, _ = encode_texts([doc for doc, _ in scored_pairs], tokenizer, cfg.text.max_length)
    references = [summary for _, summary in scored_pairs]
    print(f"summaries from {source}: {len(parts['train'])} training pairs, {len(val_pairs)} validation pairs for "
          f"the checks, {len(scored_pairs)} scored ({part}); decoding: {settings.decode.strategy}")
    common = {"protocol": "summaries", "data": source, "scored_on": part, "step": run.step, "method": cfg.method.name}
    mean_words = round(sum(len(s.split()) for _, s in parts["train"]) / len(parts["train"]))
    lead = {**common, "init": "lead", "labels": "-", "seed": 0,
            **rouge(lead_summaries([doc for doc, _ in scored_pairs], mean_words), references), "words": mean_words}
    rows = [lead]
    if first_seed == 0:                  # added draws do not repeat the lead row already in the file
        run.folder.append_result(lead, to=run.folder.summaries_results_file)
    print(f"  lead (first sentence, {mean_words} words)  " + _scores_text(lead))
    inits = ["pretrained"] + (["from scratch"] if baseline else [])
    budgets = [(budget, min(len(train[0]), budget.total or max(1, round(budget.fraction * len(train[0])))))
               for budget in map(parse_label_budget, labels)]
    largest = max(count for _, count in budgets)
    for budget, count in budgets:
        for seed in range(first_seed, first_seed + seeds):
            chosen = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(seed))[:count].sort().values
            for init in inits:
                network = None if init == "pretrained" else fresh_method(cfg, seed)
                started = time.perf_counter()
                model, steps, checks = finetune_summarizer(
                    summarizer_for(run, network, settings.summary_tokens), (train[0][chosen], train[1][chosen]), val, [s for _, s in val_pairs], tokenizer, settings,
                    seed, device, progress, desc=f"{init} {budget.text} seed {seed}")
                written = write_summaries(model, scored_sources, tokenizer, settings.decode)
                row = {**common, "init": init, "labels": budget.text, "pairs": count, "seed": seed,
                       **rouge(written, references), "val_rougeL": max(checks), "val_rougeL_checks": checks,
                       "steps": steps,
                       "seconds": round(time.perf_counter() - started, 1),
                       "settings": {**vars(settings), "decode": vars(settings.decode)},
                       "examples": [{"document": doc, "reference": ref, "written": text}
                                    for (doc, ref), text in zip(scored_pairs[:5], written[:5])]}
                run.folder.append_result(row, to=run.folder.summaries_results_file)
                print(f"  {budget.text:>5} seed {seed} {init:<12} {_scores_text(row)}  (validation ROUGE-L "
                      f"{row['val_rougeL']:.2f}; {steps} steps, {row['seconds']:.0f} s)")
                rows.append(row)
                if init == "pretrained" and seed == 0 and count == largest:
                    save_summarizer(model, run, {"labels": budget.text, "seed": seed, "data": source,
                                                 "summary_tokens": settings.summary_tokens,
                                                 "decode": vars(settings.decode)})
    return rows


def _scores_text(row: dict) -> str:
    return (f"ROUGE-1 {row['rouge1']:5.2f}  ROUGE-2 {row['rouge2']:5.2f}  ROUGE-L {row['rougeL']:5.2f}  "
            f"{row['length']:.1f} words")


def safe_metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def save_summarizer(model, run, meta: dict) -> None:
    """RUN_DIR/summarizer.safetensors: the fine-tuned encoder-decoder, with what made it in its header."""
    tensors = {name: tensor.detach().cpu().clone().contiguous() for name, tensor in model.state_dict().items()}
    header = {"selfsup": json.dumps({"format": SUMMARIZER_FORMAT, "step": run.step, **meta})}
    atomic_write(run.folder.summarizer_file, save_safetensors_bytes(tensors, metadata=header))


def load_summarizer(run):
    """The run's summarizer with the weights `evaluate_summaries` saved, in eval mode."""
    path = run.folder.summarizer_file
    if not path.is_file():
        raise CheckpointError(f"{run.path} has no fine-tuned summarizer ({path.name}); make one with "
                              f"`selfsup finetune-seq2seq {run.path} --data PAIRS`")
    meta = json.loads(safe_metadata(path).get("selfsup", "{}"))
    if meta.get("format") != SUMMARIZER_FORMAT:
        raise CheckpointError(f"{path} is not a selfsup summarizer (format={meta.get('format')!r}); make one with "
                              f"`selfsup finetune-seq2seq {run.path}`")
    model = summarizer_for(run, summary_tokens=meta["summary_tokens"])
    try:
        model.load_state_dict(load_safetensors_bytes(path.read_bytes()))
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: the weights do not fit the run's backbone ({e})") from e
    return model.eval()


def summarize(run, documents: list[str], decode: DecodeSettings | None = None) -> list[str]:
    """Summaries of `documents` by the run's saved summarizer."""
    model = load_summarizer(run)
    tokenizer = run.modality.tokenizer(run.config, run.path)
    sources, _ = encode_texts(documents, tokenizer, run.config.text.max_length)
    return write_summaries(model, sources, tokenizer, decode or DecodeSettings())
