"""The parts of `benchmarks/throughput.py`, one concern a module, so that a new system, target or
table lands in the one place that holds its kind.

What a run is about:
- `systems`: every system the bench knows, its name in the tables and its summary column;
- `targets`: what the served system must reach, and the verdicts on it;
- `workloads`: the clips every system is measured on.

Measuring (each system's module returns `results.Point`s; `timing` times calls in this process,
`accounting` adds up a server's CPU, `progress` logs):
- `hf`: the Hugging Face pipeline, in a process of its own;
- `inprocess`: the exported `model.pt` in this process;
- `served`: the server under test, its first requests and its concurrency sweep, through
  `perf_analyzer` and the SDK (`sdk`);
- `pairs` (added latency at c=1) and `rounds` (the ratios): the systems measured alternately,
  on the settings `ranking` picks;
- `tuning`: dynamic-batching candidates, one server each.

Reporting: `results` holds what was measured (a `Run` is what --json saves and --render reads);
`report` and `tune_report` make the markdown from it, `plot` the figure, `sections` writes them
into docs/. `context` describes the machine and each system's setup; `run` drives a whole run and
`cli` is the command line.
"""
