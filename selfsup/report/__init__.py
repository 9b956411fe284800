"""`selfsup report RUN_DIR`: one self-contained HTML page (RUN_DIR/report.html, images embedded,
opens from disk with no server or network) plus its figures as PNGs in RUN_DIR/report/.

It shows how pretraining went (loss, lr, throughput; online kNN, RankMe), what it bought
(the label-efficiency curve from eval/results.jsonl), what the encoder learned (a 2-D map of
test embeddings, nearest-neighbour retrieval, where an image encoder looks: attention or
Grad-CAM maps), what the pretext task saw (views from the run's own recipe), and every evaluation
with its settings next to the run's config.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import torch
import yaml

from selfsup.audio.frontend import standard_log_mel
from selfsup.audio.io import to_float, wav_bytes
from selfsup.build import load_training_data
from selfsup.data import DataError, ImageSet
from selfsup.errors import ConfigError
from selfsup.evaluate.explain import explain_run, overlay
from selfsup.evaluate.protocols import read_results
from selfsup.evaluate.ranking import item_counts
from selfsup.interactions.data import ITEM_OFFSET
from selfsup.report import plots
from selfsup.run import load_run
from selfsup.run_folder import RunFolder
from selfsup.text.generate import continue_prompt

MAP_IMAGES = 2000          # test images on the 2-D map
MEMORY_IMAGES = 10000      # training images retrieval searches
QUERIES, NEIGHBOURS = 8, 7


def write_report(run_dir: str | Path, progress: bool = False) -> Path:
    """Write RUN_DIR/report.html and RUN_DIR/report/*.png; return the page's path."""
    folder = RunFolder(run_dir)
    run = load_run(folder.path)
    cfg = run.config
    metrics = folder.read_metrics()
    results = read_results(folder.path)
    try:
        memory, queries = run.labelled_sets(max_train=min(MEMORY_IMAGES, cfg.eval.max_train or MEMORY_IMAGES),
                                            max_test=min(MAP_IMAGES, cfg.eval.max_test or MAP_IMAGES))
    except DataError:                    # unlabeled data: map and retrieval on the training samples
        data = load_training_data(cfg, folder.path).subset(MEMORY_IMAGES + MAP_IMAGES)
        on_map = min(MAP_IMAGES, len(data) // 2)
        memory, queries = data.select(torch.arange(on_map, len(data))), data.select(torch.arange(on_map))

    figures = {
        "training": plots.training_curves(metrics),
        "online": plots.online_curves(metrics),
        "label_efficiency": plots.label_efficiency(results, cfg.eval.knn_k),
    }
    query_feats = run.embed(queries.samples, cfg.eval.batch_size, progress=progress)
    figures["embedding_map"] = plots.embedding_maps(_maps(query_feats), queries.labels, queries.classes)
    extra_html = []
    # The modality's own sections: a figure, or a piece of HTML.
    panels = {"retrieval": lambda: _retrieval(run, memory, queries, query_feats, progress),
              "views": lambda: _views(run, queries),
              "explanations": lambda: _explanations(run, memory, queries),
              "text_retrieval": lambda: _text_retrieval(run, memory, queries, query_feats, progress),
              "text_sample": lambda: _text_sample(run),
              "summaries": lambda: _summaries(run),
              "ranking": lambda: _ranking(run),
              "spectrograms": lambda: _spectrograms(run, queries),
              "listen": lambda: _listen(run, memory, queries, query_feats, progress)}
    for name in run.modality.report_panels:
        panel = panels[name]()
        if isinstance(panel, str):
            extra_html.append(panel)
        else:
            figures[name] = panel

    out = folder.report_dir
    out.mkdir(exist_ok=True)
    sections = []
    for name, fig in figures.items():
        if fig is None:
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        (out / f"{name}.png").write_bytes(buffer.getvalue())
        sections.append((name, base64.b64encode(buffer.getvalue()).decode()))
    page = folder.report_page
    page.write_text(_page(folder, cfg, run.step, sections, results, metrics, [h for h in extra_html if h]))
    return page


def _maps(feats: torch.Tensor) -> dict[str, torch.Tensor]:
    """PCA always; t-SNE as well when scikit-learn is installed."""
    maps = {"PCA": plots.pca_2d(feats)}
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return maps
    maps["t-SNE"] = torch.from_numpy(TSNE(init="pca", random_state=0).fit_transform(feats.numpy())).float()
    return maps


def _pixels(images_u8: torch.Tensor) -> list[torch.Tensor]:
    return list(images_u8.float().div(255))


def _retrieval(run, memory: ImageSet, queries: ImageSet, query_feats: torch.Tensor, progress: bool):
    """Query test images (one per class when labelled) and their nearest training images; a
    neighbour's frame is green when its class matches the query's, red when not."""
    picks = _query_picks(queries)
    neighbours = _nearest(run, memory, query_feats, picks, progress)
    rows, frames, titles = [], [], []
    for q, found in zip(picks, neighbours):
        rows.append(_pixels(queries.images[q:q + 1]) + _pixels(memory.images[found]))
        if queries.labels is not None and memory.labels is not None:
            same = (memory.labels[found] == queries.labels[q]).tolist()
            frames.append(["black"] + ["tab:green" if s else "tab:red" for s in same])
            titles.append(f"query: {_class_name(queries, q)}")
        else:
            frames.append(["black"] + [None] * len(found))
            titles.append(f"query {q}")
    return plots.image_grid(rows, titles, f"nearest training images of test queries (cosine, of {len(memory)})",
                            frames)


def _views(run, data: ImageSet):
    """The first images and the views the run's method makes of them (images of any view size)."""
    method, cfg = run.method, run.config.augment
    batch = data.images[:6]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        views = method.views(batch, gen)
    mean = torch.tensor(cfg.mean or [0.0]).view(-1, 1, 1)
    std = torch.tensor(cfg.std or [1.0]).view(-1, 1, 1)
    images = [v.float() for v in views if v.dim() == 4 and v.is_floating_point()]
    rows = []
    for i in range(batch.shape[0]):
        # A method may make several images per sample (rotations, tiles): take this sample's share.
        shown = [v[i * (v.shape[0] // batch.shape[0]):(i + 1) * (v.shape[0] // batch.shape[0])] for v in images]
        rows.append(_pixels(batch[i:i + 1]) + [(x * std + mean) for v in shown for x in v][:9])
    return plots.image_grid(rows, [f"image {i}" for i in range(len(rows))],
                            f"what {run.config.method.name} trains on: each image, then its views")


def _explanations(run, memory: ImageSet, queries: ImageSet):
    """What the encoder looks at in a few test images: a ViT's class attention per head, a CNN's Grad-CAM
    towards each image's nearest training image (selfsup.evaluate.explain); None for other encoders."""
    picks = _query_picks(queries)[:6]
    shown = queries.select(torch.tensor(picks))
    try:
        result, captions = explain_run(run, shown, memory)
    except ConfigError:
        return None
    rows = [[torch.from_numpy(overlay(image, m)).permute(2, 0, 1).float().div(255) for m in maps]
            for image, maps in zip(shown.images, result["maps"][:, :8])]
    rows = [_pixels(shown.images[i:i + 1]) + row for i, row in enumerate(rows)]
    titles = [f"{_class_name(queries, q)}" if queries.labels is not None else f"image {q}" for q in picks]
    what = ("class-token attention of the last block, one map per head" if result["kind"] == "attention"
            else "Grad-CAM towards each image's nearest training image: " + "; ".join(captions[:3]) + " ...")
    return plots.image_grid(rows, titles, what)


def _nearest(run, memory, query_feats: torch.Tensor, picks: list[int], progress: bool) -> torch.Tensor:
    """Indices (len(picks), NEIGHBOURS) of the memory samples nearest (cosine) to the picked queries."""
    memory_feats = run.embed(memory.samples, run.config.eval.batch_size, progress=progress)
    return (query_feats[picks] @ memory_feats.T).topk(min(NEIGHBOURS, len(memory)), dim=1).indices


def _query_picks(queries) -> list[int]:
    """One query per class (the first of each) when labelled, else the first few."""
    if queries.labels is not None:
        return [int((queries.labels == c).nonzero()[0]) for c in queries.labels.unique()[:QUERIES]]
    return list(range(min(QUERIES, len(queries))))


def _class_name(data, i: int) -> str:
    if data.labels is None:
        return ""
    label = int(data.labels[i])
    return data.classes[label] if data.classes else str(label)


def _text_retrieval(run, memory, queries, query_feats: torch.Tensor, progress: bool) -> str:
    """Test documents and their nearest training documents, as a table of text snippets."""
    if not queries.texts or not memory.texts:
        return ""
    picks = _query_picks(queries)
    rows = []
    for q, found in zip(picks, _nearest(run, memory, query_feats, picks, progress)):
        cells = [f"<td><b>{html.escape(_class_name(queries, q))}</b> {html.escape(_snippet(queries.texts[q]))}</td>"]
        for i in found.tolist()[:3]:
            cells.append(f'<td style="background:{_match_colour(memory, i, queries, q)}"><b>{html.escape(_class_name(memory, i))}</b> '
                         f"{html.escape(_snippet(memory.texts[i]))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "<tr><th>query</th><th>nearest</th><th>2nd</th><th>3rd</th></tr>"
    return (f"<h2>Retrieval</h2><p>Test documents and their nearest training documents (cosine, of "
            f"{len(memory)}); green: same class.</p><table class=\"text\">{head}{''.join(rows)}</table>")


SOUND_QUERIES = 4          # test clips shown as spectrograms with their views, and played


def _spectrograms(run, queries):
    """A few test clips' log-mel spectrograms and the views the run's pretext task makes of them (a
    waveform view is shown as its log-mel too)."""
    picks = _query_picks(queries)[:SOUND_QUERIES]
    clips = queries.samples[picks]
    display = standard_log_mel(queries.sample_rate)
    with torch.no_grad():
        views = run.method.views(clips, torch.Generator().manual_seed(0))
    # A view of sound is a one-channel spectrogram (B, 1, n_mels, frames) or a waveform (B, samples); the
    # rest of what `views` returns are a method's own draws (masks, distractors, Gumbel noise).
    shown = [v.float() if v.dim() == 4 else display(v.float()) for v in views
             if v.is_floating_point() and (v.dim() == 2 or v.dim() == 4 and v.shape[1] == 1)]
    whole = display(to_float(clips))
    rows = [[whole[i]] + [v[i] for v in shown] for i in range(len(picks))]
    columns = ["the clip"] + [f"view {j + 1}" for j in range(len(shown))]
    return plots.spectrogram_grid(rows, [_class_name(queries, q) or f"clip {q}" for q in picks], columns,
                                  f"{run.config.method.name}: test clips and their views (log-mel)")


def _listen(run, memory, queries, query_feats: torch.Tensor, progress: bool) -> str:
    """Test clips and their nearest training clips, each with a player (WAV embedded in the page)."""
    picks = _query_picks(queries)[:SOUND_QUERIES]
    nearest = _nearest(run, memory, query_feats, picks, progress)[:, 0].tolist()

    def player(data, i: int) -> str:
        sound = base64.b64encode(wav_bytes(data.samples[i], data.sample_rate)).decode()
        return (f"<b>{html.escape(_class_name(data, i) or f'clip {i}')}</b><br>"
                f'<audio controls preload="none" src="data:audio/wav;base64,{sound}"></audio>')
    rows = []
    for q, n in zip(picks, nearest):
        rows.append(f'<tr><td>{player(queries, q)}</td><td style="background:{_match_colour(memory, n, queries, q)}">'
                    f"{player(memory, n)}</td></tr>")
    return (f"<h2>Listen</h2><p>Test clips and the training clip nearest to each (cosine, of {len(memory)}); "
            f"green: same class.</p><table class=\"text\"><tr><th>test clip</th><th>nearest training clip</th></tr>"
            f"{''.join(rows)}</table>")


def _match_colour(memory, i: int, queries, q: int) -> str:
    """A table cell's background for training sample i found for query q: green when their classes
    agree, red when not, white without labels."""
    if memory.labels is None or queries.labels is None:
        return "#fff"
    return "#e6f4e6" if memory.labels[i] == queries.labels[q] else "#fbe9e9"


def _snippet(text: str, length: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= length else text[:length] + "…"


def _text_sample(run) -> str:
    """For a next-token model: a sample it writes from a short prompt."""
    if not run.method.generates:
        return ""
    prompt = "The "
    sample = prompt + continue_prompt(run, prompt, max_new_tokens=300, seed=0)
    return f"<h2>Sample</h2><p>Generated from the prompt {prompt!r} (seed 0):</p><pre>{html.escape(sample)}</pre>"


def _summaries(run) -> str:
    """For an encoder-decoder fine-tuned on summaries (eval/summaries.jsonl): ROUGE of every row, the
    validation ROUGE-L at each check of its fine-tuning, and documents with their reference and
    written summaries."""
    path = run.folder.summaries_results_file
    if not path.is_file():
        return ""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cells = lambda row: "".join(f"<td>{row[m]:.2f}</td>" for m in ("rouge1", "rouge2", "rougeL", "length"))  # noqa: E731
    table = "".join(f"<tr><td>{html.escape(row['init'])}</td><td>{row['labels']}</td><td>{row['seed']}</td>{cells(row)}"
                    f"<td>{' → '.join(f'{v:.1f}' for v in row.get('val_rougeL_checks', []))}</td></tr>"
                    for row in rows)
    examples = next((row["examples"] for row in reversed(rows) if row.get("examples")), [])
    shown = "".join(f"<tr><td>{html.escape(_snippet(e['document'], 300))}</td><td>{html.escape(e['reference'])}</td>"
                    f"<td>{html.escape(e['written'])}</td></tr>" for e in examples)
    return ("<h2>Summaries</h2><p>Fine-tuned on document → summary pairs (selfsup finetune-seq2seq); ROUGE F1 on "
            f"the {html.escape(rows[-1]['scored_on'])} pairs, length in words; the validation ROUGE-L at each check "
            "of the fine-tuning (the best state is kept).</p><table><tr><th>init</th><th>pairs</th><th>seed</th>"
            "<th>ROUGE-1</th><th>ROUGE-2</th><th>ROUGE-L</th><th>length</th><th>validation ROUGE-L</th></tr>"
            f"{table}</table>" + (f"<h3>Examples (the last fine-tuning's)</h3><table class=\"text\"><tr><th>document"
                                  f"</th><th>reference</th><th>written</th></tr>{shown}</table>" if shown else ""))


def _ranking(run) -> str:
    """For a recommender: eval/ranking.json as tables (model against the baselines, cold start, by
    history length), and the nearest items of the most popular ones by their learned embeddings."""
    report = run.folder.read_eval("ranking")
    if not report:
        return ""
    k = report["k"]
    names = ("model", "most_popular", "item_knn")

    def table(rows: dict, title: str) -> str:
        body = "".join(f"<tr><td>{name}</td>" + "".join(f"<td>{rows[name][m]:.4f}</td>" for m in ("hr", "ndcg", "mrr"))
                       + "</tr>" for name in names if name in rows)
        return (f"<h3>{html.escape(title)}</h3><table><tr><th></th><th>HR@{k}</th><th>NDCG@{k}</th><th>MRR</th></tr>"
                f"{body}</table>")
    parts = ["<h2>Next-item ranking</h2>",
             f"<p>Leave-one-out {report['part']} item of {report['users']} users, ranked among every item "
             "(the items the user had excluded; ties broken at random in expectation).</p>",
             table(report, "All users")]
    cold = report["cold_start"]
    parts.append(table(cold, f"Cold-start users (at most {cold['max_items']} items before): {cold['users']}")
                 if cold["users"] else f"<p>No cold-start user (at most {cold['max_items']} items before the "
                                       "held-out one) in this data.</p>")
    short = next(v for key, v in report.items() if key.startswith("last_") and key.endswith("_items"))
    parts.append(table(short, f"Every user's history cut to its {cold['max_items']} newest items"))
    parts.append("<h3>Model NDCG@" + str(k) + " by history length</h3><table><tr><th>items before</th><th>users</th>"
                 f"<th>NDCG@{k}</th></tr>" + "".join(f"<tr><td>{r['from']}-{r['to']}</td><td>{r['users']}</td>"
                                                      f"<td>{r['ndcg']:.4f}</td></tr>" for r in report["by_history_length"])
                 + "</table>")
    parts.append(_nearest_items(run))
    return "".join(parts)


def _nearest_items(run, queries: int = 6, neighbours: int = 5) -> str:
    """The most popular training items and their nearest items by the cosine of the item embeddings."""
    vocabulary = run.modality.item_vocabulary(run.path)
    titles = vocabulary["titles"]
    split = run.modality.leave_one_out(run.config, run_dir=run.path)
    popular = item_counts(split.train_histories, ITEM_OFFSET + len(titles))[ITEM_OFFSET:].argsort(descending=True)
    embedding = torch.nn.functional.normalize(run.backbone.token_embedding.weight[ITEM_OFFSET:].detach().float(), dim=1)
    rows = []
    for item in popular[:queries].tolist():
        similarity = embedding @ embedding[item]
        similarity[item] = float("-inf")
        found = similarity.topk(neighbours).indices.tolist()
        rows.append(f"<tr><td><b>{html.escape(titles[item])}</b></td><td>"
                    + "; ".join(html.escape(titles[j]) for j in found) + "</td></tr>")
    return ("<h3>Nearest items of the most popular ones (cosine of the learned item embeddings)</h3>"
            "<table><tr><th>item</th><th>nearest</th></tr>" + "".join(rows) + "</table>")


def _page(folder: RunFolder, cfg, step: int, sections, results: list[dict], metrics: list[dict],
          extra_html: list[str] = ()) -> str:
    titles = {"training": "Pretraining", "online": "Online monitoring", "label_efficiency": "Label efficiency",
              "embedding_map": "Embedding map", "retrieval": "Retrieval", "views": "Views of the pretext task",
              "explanations": "What the encoder looks at", "spectrograms": "Spectrograms of the pretext task's views"}
    summary = folder.read_summary()
    knn = folder.read_eval("knn")
    warnings = [r["collapse_warning"] for r in metrics if "collapse_warning" in r]
    parts = [f"<h1>selfsup run {html.escape(folder.path.name)}</h1>",
             f"<p>{html.escape(cfg.method.name)} on {html.escape(cfg.data.source)}, backbone "
             f"{html.escape(cfg.backbone.name)}; checkpoint step {step}; report written "
             f"{time.strftime('%Y-%m-%d %H:%M')}.</p>"]
    if summary:
        parts.append("<p>Pretraining: " + html.escape(", ".join(f"{k} {v}" for k, v in summary.items())) + "</p>")
    if knn:
        parts.append("<p>kNN top-1 (all labels): " + ", ".join(
            f"{label} <b>{100 * knn[key]:.2f}%</b>" for key, label in
            (("knn_top1", "pretrained"), ("knn_top1_random_init", "random init"),
             ("knn_top1_raw", knn.get("raw_features", "raw input"))) if key in knn) + "</p>")
    for w in warnings[-3:]:
        parts.append(f'<p class="warn">collapse warning: {html.escape(w)}</p>')
    for name, encoded in sections:
        parts.append(f"<h2>{titles[name]}</h2>")
        parts.append(f'<img alt="{name}" src="data:image/png;base64,{encoded}">')
    parts.extend(extra_html)
    parts.append("<h2>Evaluations</h2>" + _results_table(results))
    parts.append(f"<h2>Config</h2><pre>{html.escape(yaml.safe_dump(cfg.to_dict(), sort_keys=False))}</pre>")
    style = ("body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}"
             "img{max-width:100%;display:block;margin:.5em 0}table{border-collapse:collapse;font-size:.9em}"
             "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}"
             "pre{background:#f7f7f7;padding:1em;font-size:.85em}.warn{color:#b00;font-weight:bold}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>selfsup report: '
            f'{html.escape(folder.path.name)}</title><style>{style}</style></head><body>\n'
            + "\n".join(parts) + "\n</body></html>\n")


def _results_table(results: list[dict]) -> str:
    if not results:
        return "<p>No evaluations yet: run <code>selfsup evaluate linear RUN_DIR --labels 1% 10%</code>.</p>"
    head = ["protocol", "data", "labels", "images", "seeds", "top-1 (%)", "seconds", "step", "settings"]
    rows = []
    for r in results:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        cells = [r["protocol"], r["data"], r["labels"], r["num_labels"], r["seeds"],
                 f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}", r["seconds"], r["step"], settings]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")

