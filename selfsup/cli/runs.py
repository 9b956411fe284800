"""Commands on a finished run: `selfsup report`, `embed`, `explain`, `export`, and `import-weights` (another
library's backbone as a selfsup encoder)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from selfsup.backbones import backbone_parameters, build_backbone_from_config, is_backbone
from selfsup.cli.common import add_run_arguments
from selfsup.config import backbone_config, parse_overrides
from selfsup.export import encoder_spec, export_encoder, export_onnx, import_weights, save_encoder
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.explain import explain_run, save_explanations
from selfsup.report import write_report
from selfsup.run import load_run


def add_parsers(sub) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report.html: training curves, label efficiency, maps",
                       description="Write one self-contained HTML page, RUN_DIR/report.html (images embedded; opens "
                                   "from disk with no server or network), and its figures as PNGs in "
                                   "RUN_DIR/report/: loss, lr and throughput; online kNN and RankMe; accuracy "
                                   "against the number of labels from every `selfsup evaluate` so far; a 2-D map "
                                   "of test embeddings; nearest-neighbour retrieval; the pretext task's views; "
                                   "a table of evaluations and the config.")
    add_run_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("embed", help="write backbone embeddings of images, text or table rows to a .npy file",
                       description="Embed data with a run's frozen backbone (eval mode, no augmentation) and "
                                   "save the L2-normalised features as float32 (N, D) .npy, written batch by batch "
                                   "into a memory-mapped file and renamed when complete (a streamed store of any "
                                   "size is never in memory). For an image folder or store, OUT.paths.txt lists "
                                   "the image of each row; text and tables are read with the run's tokenizer / "
                                   "normalisation.")
    _add_data_arguments(p, "a folder of images or a built-in data set name; text or a table for text and "
                           "tabular runs")
    p.add_argument("--out", required=True, help="output .npy path")
    p.add_argument("--strict", action="store_true", help="stop on an unreadable image instead of skipping it")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "run"), default="fp32",
                   help="arithmetic of the forward pass: fp32 gives the exported encoder's embeddings; 'run' the "
                        "training precision (faster on hardware with bf16, up to 3e-3 away) [default: fp32]")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("explain", help="write maps of what an image encoder looks at (attention, Grad-CAM) as PNGs",
                       description="For a ViT: the last block's class-token attention to each patch, one map per "
                                   "head (as in DINO's figures). For a ResNet: Grad-CAM of the last stage for the "
                                   "similarity of each image to its nearest neighbour among the run's training "
                                   "images. Writes OUT/explain-NNN.png (the image, then each map over it) and "
                                   "OUT/explanations.png (all of them); docs/dense.md.")
    _add_data_arguments(p, "a folder of images or a built-in data set name (fashion-mnist, fashion-scenes)")
    p.add_argument("--count", type=int, default=8, help="explain the first COUNT images [default: 8]")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("export", help="write a run's encoder alone to a safetensors or ONNX file",
                       description="Write the backbone of a run's newest checkpoint (or --checkpoint) to OUT. "
                                   "safetensors: with its rebuild recipe and input normalisation in the file's "
                                   "header and in OUT.json; load it with selfsup.load_encoder(OUT). onnx (image "
                                   "encoders): fp32 with a dynamic batch, input 'images' normalised as OUT.json says, "
                                   "output 'features'; checked against PyTorch with onnxruntime when installed "
                                   "(pip install 'selfsup[onnx]').")
    add_run_arguments(p, checkpoint=True)
    p.add_argument("--out", required=True, help="output path (.safetensors or .onnx)")
    p.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                   help="file format [default: safetensors]")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-weights", help="convert another library's backbone weights to a selfsup encoder",
                       description="Read a state dict (.pt/.pth with torch.load(weights_only=True), so no code "
                                   "runs; or .safetensors), rename its keys with an explicit key map, check every "
                                   "weight fits the backbone you describe, and write a selfsup encoder file.")
    p.add_argument("weights", help="the foreign weights file")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--backbone", default="resnet50", help="backbone name, also timm:<model> or hf:<folder> "
                                                          "[default: resnet50]")
    p.add_argument("--key-map", default="torchvision-resnet",
                   help="key naming of the file: torchvision-resnet, selfsup, timm (a timm model's state dict; "
                        "its classifier is dropped) or hf (a transformers base model's) [default: torchvision-resnet]")
    p.add_argument("--in-channels", type=int, default=3, help="input channels [default: 3]")
    p.add_argument("--image-size", type=int, default=224, help="image size the weights expect [default: 224]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="backbone_fields",
                   help="a backbone field, repeatable: --set width=0.5 --set stem=cifar "
                        "[defaults: width 1.0, stem imagenet]")
    p.set_defaults(func=cmd_import_weights)


def _add_data_arguments(p, data_help: str) -> None:
    """The run and the data a command on a finished run reads: RUN_DIR, --checkpoint, --data, --split, --data-dir."""
    add_run_arguments(p, checkpoint=True)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--split", default="test", help="split of a built-in data set [default: test]")
    p.add_argument("--data-dir", default="", help="extra folder to search for built-in data sets")


def cmd_report(args) -> int:
    print(f"report: {write_report(args.run_dir, progress=not args.quiet).resolve()}")
    return 0

EXPLAIN_REFERENCES = 2000           # training images a CNN's Grad-CAM looks for each image's nearest neighbour in


def cmd_explain(args) -> int:
    if args.count < 1:
        raise ConfigError(f"--count must be >= 1, got {args.count}")
    run = load_run(args.run_dir, args.checkpoint)
    data = run.modality.read(run.config, run.path, args.data, args.split, args.data_dir)
    images = data.select(torch.arange(min(args.count, len(data))))
    references = run.modality.training_data(run.config, run.path).subset(EXPLAIN_REFERENCES)
    result, captions = explain_run(run, images, references)
    save_explanations(images.images[:], result, Path(args.out), captions)      # [:]: streamed images decoded
    print(f"{result['kind']} maps of {len(images)} images -> {Path(args.out) / 'explanations.png'} (and one PNG "
          "an image; captions in explanations.txt)")
    return 0


def cmd_embed(args) -> int:
    run = load_run(args.run_dir, args.checkpoint)
    cfg = run.config
    data = run.modality.read(cfg, run.path, args.data, args.split, args.data_dir, args.strict)
    out = Path(args.out)
    out = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")      # as numpy.save names it
    out.parent.mkdir(parents=True, exist_ok=True)
    shape = write_rows(out, len(data), run.embed_batches(
        data.samples, cfg.eval.batch_size, progress=True,
        precision=cfg.train.precision if args.precision == "run" else args.precision))
    print(f"saved {shape} embeddings to {out}")
    if getattr(data, "paths", None):
        Path(f"{out}.paths.txt").write_text("\n".join(data.paths) + "\n")
        print(f"row order: {out}.paths.txt")
    if data.labels is not None:
        np.save(out.with_name(out.stem + ".labels.npy"), data.labels.numpy())
    return 0


def write_rows(out: Path, rows: int, batches) -> tuple[int, int]:
    """Write float32 batches (B, D), `rows` rows in all, into the .npy file `out` as they come (a memory-
    mapped file: the whole array is never in memory). It is written beside `out` and renamed when
    complete, so a failure leaves no partial file and keeps an older one."""
    partial = out.with_name(out.name + ".partial")
    array, done = None, 0
    try:
        for batch in batches:
            if array is None:
                array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(rows, batch.shape[1]))
            array[done:done + len(batch)] = batch.numpy()
            done += len(batch)
        if array is None or done != rows:
            raise DataError(f"embedded {done} rows of {rows}" + ("; the data has no rows" if not done else ""))
        array.flush()
        shape = array.shape
        del array
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return shape


def cmd_export(args) -> int:
    if args.format == "onnx":
        result = export_onnx(args.run_dir, args.out, args.checkpoint)
        checked = (f"onnxruntime matches PyTorch to {result['max_abs_diff']:.1e}" if result["max_abs_diff"] is not None
                   else "not checked: onnxruntime is not installed (pip install 'selfsup[onnx]')")
        print(f"saved the encoder to {result['path']} ({result['bytes'] / 2**20:.1f} MB; input normalisation in "
              f"{result['path'].with_suffix('.json')}); {checked}")
        return 0
    out = export_encoder(args.run_dir, args.out, args.checkpoint)
    print(f"saved the encoder to {out} (recipe in {out.with_suffix('.json')}); "
          f"load it with selfsup.load_encoder({str(out)!r})")
    return 0

def cmd_import_weights(args) -> int:
    # A full-size ResNet unless told otherwise; other backbones have no width or stem.
    taken = backbone_parameters(args.backbone) if is_backbone(args.backbone) else []
    full_size = {k: v for k, v in {"width": 1.0, "stem": "imagenet"}.items() if k in taken}
    backbone_cfg = backbone_config({"name": args.backbone, **full_size,
                                    **parse_overrides(args.backbone_fields)})
    backbone = build_backbone_from_config(backbone_cfg, args.in_channels, args.image_size)
    dropped = import_weights(args.weights, backbone, args.key_map)
    spec = encoder_spec(backbone_cfg, args.in_channels, args.image_size, origin={"imported": str(args.weights)})
    out = save_encoder(backbone, spec, args.out)
    print(f"saved {out}" + (f"; dropped {len(dropped)} key(s) with no counterpart: {', '.join(dropped)}"
                            if dropped else ""))
    return 0
