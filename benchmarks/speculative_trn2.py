"""Speculative decoding on Trainium2 against AWS's published fused-draft runs.

    PYTHONPATH=src python benchmarks/speculative_trn2.py

AWS Neuron (aws-neuron/aws-neuron-sdk@81ce03ae, libraries/nxd-inference/tutorials/
llama70b_perf_comparison.csv and llama405b_perf_comparison.csv, with the tutorials
trn2-llama3.3-70b-tutorial.rst and trn2-llama3.1-405b-speculative-tutorial.rst): one
trn2.48xlarge (16 Trainium2, TP=64 logical cores at LNC=2), batch 1, 10,000 input /
1,500 output tokens (LLMPerf), Llama-3.2-1B draft fused into the target, speculation
length 7. TPOT P50 in ms. The 405B speculative run uses FP8 (rescaled) weights.
The acceptance rate is not published; the estimate uses the default 0.8 (an assumption,
see perf/speculative.py) and shows 0.7 and 0.9 beside it.
"""

from __future__ import annotations

from tokenfleet.perf.estimate import Query, estimate

AWS = [  # model, precision of the speculative run, TPOT without / with fused speculation
    ("llama-3.3-70b", "bf16", 19.6, 5.3),
    ("llama-3.1-405b", "fp8", 37.9, 8.27),
]


def main() -> None:
    print("| model | prec | AWS TPOT plain / fused (ms) | ours plain | ours fused a=0.7 | "
          "a=0.8 (default) | a=0.9 | error at a=0.8 |")
    print("|---|---|---|---|---|---|---|---|")
    for model, prec, aws_plain, aws_fused in AWS:
        q = Query(model=model, accelerator="trainium2", count=16, precision=prec,
                  engine="neuron", input_len=10000, output_len=1500, concurrency=1,
                  layout={"tp": 16})
        plain = estimate(q).tpot_s * 1e3
        fused = {a: estimate(q.model_copy(update={
            "speculative": f"fused:llama-3.2-1b:7:{a}"})).tpot_s * 1e3 for a in (0.7, 0.8, 0.9)}
        print(f"| {model} | {prec} | {aws_plain} / {aws_fused} | {plain:.1f} | "
              f"{fused[0.7]:.2f} | {fused[0.8]:.2f} | {fused[0.9]:.2f} | "
              f"{fused[0.8] / aws_fused - 1:+.0%} |")


if __name__ == "__main__":
    main()
