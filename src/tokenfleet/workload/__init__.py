"""Workloads: read real request traces, summarise them, bucket them by size, and
generate synthetic what-if traffic.

Units everywhere: seconds, tokens, requests/s.
"""

from tokenfleet.workload.buckets import (
    Bucket,
    BucketDemand,
    BucketSummary,
    SizeBuckets,
    busiest_window,
)
from tokenfleet.workload.generate import (
    EmpiricalLengths,
    FixedLengths,
    LengthDistribution,
    LognormalLengths,
    fit_lengths,
    gamma_bursty,
    grow,
    poisson,
)
from tokenfleet.workload.readers import (
    ColumnMapping,
    TraceReader,
    read_trace,
    register_reader,
    trace_formats,
    write_trace,
)
from tokenfleet.workload.samples import SAMPLES, sample_path
from tokenfleet.workload.stats import TraceStats, trace_stats
from tokenfleet.workload.trace import Request, Trace, empty_trace

__all__ = [
    "SAMPLES",
    "Bucket",
    "BucketDemand",
    "BucketSummary",
    "ColumnMapping",
    "EmpiricalLengths",
    "FixedLengths",
    "LengthDistribution",
    "LognormalLengths",
    "Request",
    "SizeBuckets",
    "Trace",
    "TraceReader",
    "TraceStats",
    "busiest_window",
    "empty_trace",
    "fit_lengths",
    "gamma_bursty",
    "grow",
    "poisson",
    "read_trace",
    "register_reader",
    "sample_path",
    "trace_formats",
    "trace_stats",
    "write_trace",
]
