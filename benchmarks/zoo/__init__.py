"""Export fidelity at zoo scale (issue 21): every timm, torchvision, transformers and ultralytics
architecture, exported by fxtrt and both torch.onnx baselines, judged against eager.

    python -m benchmarks.zoo --sample 200 --seed 0 --jobs 2

Modules, in the order a run uses them:

- :mod:`.catalog`  which models: each library's own list, ``--zoo``, ``--models``, ``--sample``
- :mod:`.hf_tiny`  the one place that shrinks a transformers config
- :mod:`.specs`    how each model is built, fed and made dynamic (a ``ModelSpec`` per variant)
- :mod:`.isolate`  one child process per job, with a timeout and a memory cap
- :mod:`.job`      one model: prepare (eager reference), one cell per exporter, interleaved latency
- :mod:`.execute`  the jobs on Ray (local or a cluster), or in this process without Ray
- :mod:`.store`    the SQLite results store: one committed row per finished cell
- :mod:`.tables`   the Markdown tables and the figure
"""
