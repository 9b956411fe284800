"""Pretrain from a packed store with streaming data workers, and time it (issue 24's streaming figures).

    python benchmarks/store.py --count 20000 --store /tmp/photos.store      # the store, once
    python benchmarks/stream.py --store /tmp/photos.store --steps 200 --workers 2

Prints JSON lines:
- "decode": images/s of one process cutting a training step's crops (StepBatches: draft-mode JPEG
  decoding, two random resized crops on the original image) next to a bare Pillow loop over the same
  images (read the bytes, decode the whole image, resize one centred square to the view side), and
  their ratio (issue 24's target: at least 0.8);
- "train": SimCLR with ResNet-18 (imagenet stem) at --size px from the store for --steps steps:
  images/s, the share of the loop's time spent waiting for the next batch, and the peak resident memory
  of the whole process tree (main process plus data workers), sampled every 0.1 s;
- "embed" (with --embed-images N): the trained encoder's features of the first N images of the store,
  streamed as evaluation reads them (short side to data.size, centre crop, a batch at a time from the
  data workers): images/s and the process tree's peak resident memory meanwhile.
"""
import argparse
import io
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from selfsup.build import load_training_data
from selfsup.config import load_config
from selfsup.data.store import ImageStore
from selfsup.data.stream import StepBatches, StreamBatches
from selfsup.modalities.image import streamed_source
from selfsup.run import load_run
from selfsup.train import pretrain


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of the process and all its descendants, from /proc."""
    total, pending = 0, [pid]
    while pending:
        p = pending.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pending += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class PeakMemory(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            time.sleep(0.1)


def decode_rates(cfg, images: int) -> dict:
    data = load_training_data(cfg)
    batch = min(images, len(data))
    steps = StepBatches(data, cfg.augment, 2, cfg.train.seed, 1, batch, 0, 1)
    start = time.perf_counter()
    steps[0]
    ours = batch / (time.perf_counter() - start)
    store = ImageStore(cfg.data.source)
    picked = data.indices[steps.positions(0)].tolist()
    start = time.perf_counter()
    for i in picked:
        with Image.open(io.BytesIO(store.read(i))) as img:
            img = img.convert("RGB")
            side = min(img.size)
            box = ((img.width - side) / 2, (img.height - side) / 2, (img.width + side) / 2, (img.height + side) / 2)
            img.resize((cfg.augment.size, cfg.augment.size), Image.BILINEAR, box=box)
    bare = batch / (time.perf_counter() - start)
    return {"images": batch, "stream_images_per_s": round(ours, 1), "bare_pillow_images_per_s": round(bare, 1),
            "ratio": round(ours / bare, 3)}


def embed_rates(run_dir: Path, store: str, images: int) -> dict:
    run = load_run(run_dir)
    data = streamed_source(run.config, store).subset(images)
    memory = PeakMemory()
    memory.start()
    start = time.perf_counter()
    rows = sum(len(batch) for batch in run.embed_batches(data.samples, run.config.eval.batch_size))
    seconds = time.perf_counter() - start
    memory.running = False
    memory.join()
    return {"images": rows, "seconds": round(seconds, 1), "images_per_s": round(rows / seconds, 1),
            "peak_tree_rss_mb": round(memory.peak / 2**20), "size": run.config.data.size,
            "batch_size": run.config.eval.batch_size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--decode-images", type=int, default=512)
    p.add_argument("--embed-images", type=int, default=0, help="also embed this many images of the store")
    p.add_argument("overrides", nargs="*", help="more KEY=VALUE settings")
    args = p.parse_args()
    cfg = load_config(overrides=[f"data.source={args.store}", "method.name=simclr", "backbone.name=resnet18",
                                 "backbone.stem=imagenet", "backbone.width=1.0", f"augment.size={args.size}",
                                 f"train.batch_size={args.batch_size}", f"train.steps={args.steps}",
                                 f"train.workers={args.workers}", "eval.online_every=0", *args.overrides])
    print(json.dumps({"decode": decode_rates(cfg, args.decode_images)}), flush=True)

    waited = [0.0]
    real_call = StreamBatches.__call__

    def timed_call(self, step):
        start = time.perf_counter()
        batch = real_call(self, step)
        waited[0] += time.perf_counter() - start
        return batch
    StreamBatches.__call__ = timed_call
    memory = PeakMemory()
    memory.start()
    with tempfile.TemporaryDirectory() as runs:
        result = pretrain(cfg, Path(runs) / "run", progress=False)
        memory.running = False
        memory.join()
        embedded = embed_rates(Path(runs) / "run", args.store, args.embed_images) if args.embed_images else None
    print(json.dumps({"train": {
        "steps": result.steps, "seconds": round(result.seconds, 1), "images_per_s": round(result.images_per_second, 1),
        "data_wait_share": round(waited[0] / result.seconds, 4), "peak_tree_rss_mb": round(memory.peak / 2**20),
        "workers": args.workers, "size": args.size, "batch_size": args.batch_size,
        "images": len(load_training_data(cfg)),
        "torch_threads": torch.get_num_threads()}}), flush=True)
    if embedded:
        print(json.dumps({"embed": embedded}), flush=True)


if __name__ == "__main__":
    main()
