"""soundmon's benchmarks (``make bench``, ``soundmon bench``): see docs/performance.md.

Run from a source checkout: ``run`` is the orchestrator, ``loadgen`` the device fleet,
``sink`` the transport-ceiling subscriber, ``naive`` the one-task-per-frame baseline,
``parts`` starts and meters the processes, ``probe`` measures latency, ``report`` writes
the JSON, the table and the plot. ``dsp.py`` and ``throughput.py`` are standalone scripts.
"""
