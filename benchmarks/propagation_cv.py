"""Time label propagation's cross-validation solves: the folds one after another against all together.

    python benchmarks/propagation_cv.py [--nodes 10000] [--folds 5]

Prints one JSON line: seconds for the folds' conjugate-gradient solves run separately (`propagate`
per fold) and together (`propagate_many`), their ratio, and whether the propagated classes agree.
The data is synthetic: points around 10 class centres on the unit sphere, a 50-neighbour graph.
"""
import argparse
import json
import time

import torch

from selfsup.evaluate.propagation import knn_graph, propagate, propagate_many
from selfsup.evaluate.splits import class_balanced_folds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=10000)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.99)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    classes, dim = 10, 64
    centres = torch.nn.functional.normalize(torch.randn(classes, dim), dim=1)
    truth = torch.arange(args.nodes) % classes
    feats = torch.nn.functional.normalize(centres[truth] + 0.9 * torch.randn(args.nodes, dim) / dim ** 0.5, dim=1)
    graph = knn_graph(feats, 50)
    labelled = torch.randperm(args.nodes)[:args.labels]
    labels = truth[labelled]
    seedings = [(labelled[train], labels[train]) for train, _ in class_balanced_folds(labels, args.folds, 0)]
    start = time.perf_counter()
    separate = [propagate(graph, idx, y, classes, args.alpha) for idx, y in seedings]
    separate_s = time.perf_counter() - start
    start = time.perf_counter()
    together = propagate_many(graph, seedings, classes, args.alpha)
    together_s = time.perf_counter() - start
    print(json.dumps({"nodes": args.nodes, "folds": args.folds, "separate_s": round(separate_s, 2),
                      "together_s": round(together_s, 2), "ratio": round(separate_s / together_s, 2),
                      "same_classes": all(bool((a.argmax(1) == b.argmax(1)).all())
                                          for a, b in zip(separate, together))}))


if __name__ == "__main__":
    main()
