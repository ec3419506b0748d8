"""``GET /metrics`` of the vLLM dialect: vLLM 0.32's metric names, labels and buckets.

Rendered by prometheus_client from a collector over the engine's raw stats, in a registry owned by
this server (no global registry), so counters come out as ``vllm:prompt_tokens_total`` exactly as
vLLM's own prometheus_client produces them. Labels: ``model_name`` and ``engine="0"``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from backends.sim.context import SimContext
from backends.sim.stats import Histogram

_LABELS = ["model_name", "engine"]
_FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


class _VllmCollector(Collector):
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        engine = ctx.engine
        stats = engine.stats
        scheduler = engine.scheduler
        values = [ctx.model, "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=_LABELS)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=_LABELS)
            family.add_metric(values, value)
            return family

        def histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
            family = HistogramMetricFamily(name, doc, labels=_LABELS)
            family.add_metric(values, buckets=[(le, float(c)) for le, c in hist.cumulative()],
                              sum_value=hist.sum)
            return family

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                    len(scheduler.running))
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                    len(scheduler.waiting))
        by_reason = GaugeMetricFamily("vllm:num_requests_waiting_by_reason",
                                      "Number of waiting requests by reason.",
                                      labels=[*_LABELS, "reason"])
        by_reason.add_metric([*values, "capacity"], len(scheduler.waiting))
        by_reason.add_metric([*values, "deferred"], 0)
        yield by_reason
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                    scheduler.cache.usage)
        config = ctx.config.engine
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=["block_size", "cache_dtype", "enable_prefix_caching",
                                         "gpu_memory_utilization", "num_cpu_blocks", "num_gpu_blocks",
                                         "num_gpu_blocks_override", "prefix_caching_hash_algo", "engine"])
        info.add_metric([str(config.block_size), "auto", "True", "0.9", "None", str(config.num_blocks),
                         "None", "sha256", "0"], 1.0)
        yield info
        yield counter("vllm:prefix_cache_queries",
                      "Prefix cache queries, in terms of number of queried tokens.", stats.prefix_queries)
        yield counter("vllm:prefix_cache_hits",
                      "Prefix cache hits, in terms of number of cached tokens.", stats.prefix_hits)
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                      stats.preemptions)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens)
        yield counter("vllm:prompt_tokens_cached",
                      "Number of cached prompt tokens (local prefix cache hits).",
                      stats.prompt_tokens_cached)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.",
                      stats.generation_tokens)
        success = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                      labels=[*_LABELS, "finished_reason"])
        for reason in _FINISH_REASONS:
            success.add_metric([*values, reason], stats.finished.get(reason, 0))
        yield success
        yield histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                        stats.request_prompt_tokens)
        yield histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                        stats.request_generation_tokens)
        yield histogram("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
                        stats.request_max_tokens)
        yield histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                        stats.ttft)
        yield histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                        stats.itl)
        yield histogram("vllm:request_time_per_output_token_seconds",
                        "Histogram of time_per_output_token_seconds per request.", stats.tpot)
        yield histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                        stats.e2e)
        yield histogram("vllm:request_queue_time_seconds",
                        "Histogram of time spent in WAITING phase for request.", stats.queue)
        yield histogram("vllm:request_prefill_time_seconds",
                        "Histogram of time spent in PREFILL phase for request.", stats.prefill)
        yield histogram("vllm:request_decode_time_seconds",
                        "Histogram of time spent in DECODE phase for request.", stats.decode)


class VllmMetrics:
    def __init__(self, ctx: SimContext) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_VllmCollector(ctx))

    def render(self) -> bytes:
        return generate_latest(self.registry)
