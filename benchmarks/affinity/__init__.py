"""The cache-affinity routing benchmark (issue 4): round_robin, least_loaded and prefix_affinity through
the gateway, and an oracle that pins each tenant to one engine, on a fleet of 4 sim engines (vLLM dialect,
block size 16, the ``gpu-8b`` profile) under the shared-prefix multi-tenant workload of
reference/benchmarks.md, in three cache regimes; a kill test; and a small comparison on 2 real vLLM CPU
servers. Run as ``python -m benchmarks.affinity`` (see ``__main__``); results in benchmarks/results/affinity*.

Modules: ``settings`` (regimes, geometry, timing), ``fleet`` (sim and gateway processes), ``observe``
(engine counters and state sampling), ``oracle`` (tenant pins, pinned load), ``runner`` (one measured run),
``matrix`` (regimes x policies x rates), ``kill`` (the kill test), ``analysis`` (balance, hit rate over
time, tenant moves), ``targets``, ``report`` (the JSON), ``plots``, ``vllm_real``.
"""
