"""``GET /metrics`` of the TGI dialect: TGI's ``tgi_*`` names, written like its Rust exporter
(metrics-exporter-prometheus) writes them: ``# TYPE`` lines, counters without a ``_total`` suffix, a
blank line between families. Rendered by hand from the engine's raw stats, per server.
"""

from __future__ import annotations

from backends.sim.context import SimContext
from backends.sim.stats import Histogram

_FAILURE_KINDS = ("validation", "overloaded", "generation", "incomplete_generation")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def simple(self, kind: str, name: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# TYPE {name} {kind}")
        self.lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples)
        self.lines.append("")

    def histogram(self, name: str, samples: list[tuple[dict[str, str], Histogram]]) -> None:
        self.lines.append(f"# TYPE {name} histogram")
        for labels, hist in samples:
            for le, count in hist.cumulative():
                self.lines.append(f"{name}_bucket{_labels({**labels, 'le': le})} {count}")
            self.lines.append(f"{name}_sum{_labels(labels)} {_number(hist.sum)}")
            self.lines.append(f"{name}_count{_labels(labels)} {hist.count}")
        self.lines.append("")


def render_tgi_metrics(ctx: SimContext) -> bytes:
    engine = ctx.engine
    stats = engine.stats
    scheduler = engine.scheduler
    out = _Writer()
    out.simple("gauge", "tgi_queue_size", [({}, len(scheduler.waiting))])
    out.simple("gauge", "tgi_batch_current_size", [({}, len(scheduler.running))])
    out.simple("gauge", "tgi_batch_current_max_tokens", [({}, scheduler.max_batch_tokens())])
    out.simple("counter", "tgi_request_count", [({}, stats.requests_received)])
    succeeded = sum(count for reason, count in stats.finished.items() if reason in ("stop", "length"))
    out.simple("counter", "tgi_request_success", [({}, succeeded)])
    out.simple("counter", "tgi_request_failure",
               [({"err": kind}, stats.requests_failed.get(kind, 0)) for kind in _FAILURE_KINDS])
    out.simple("counter", "tgi_batch_inference_count",
               [({"method": "prefill"}, stats.steps_prefill), ({"method": "decode"}, stats.steps_decode)])
    out.histogram("tgi_request_duration", [({}, stats.e2e)])
    out.histogram("tgi_request_queue_duration", [({}, stats.queue)])
    out.histogram("tgi_request_inference_duration", [({}, stats.decode)])
    out.histogram("tgi_request_mean_time_per_token_duration", [({}, stats.tpot)])
    out.histogram("tgi_request_input_length", [({}, stats.request_prompt_tokens)])
    out.histogram("tgi_request_generated_tokens", [({}, stats.request_generation_tokens)])
    out.histogram("tgi_request_max_new_tokens", [({}, stats.request_max_tokens)])
    out.histogram("tgi_batch_forward_duration",
                  [({"method": "prefill"}, stats.step_prefill), ({"method": "decode"}, stats.step_decode)])
    out.histogram("tgi_batch_next_size", [({}, stats.batch_size)])
    return ("\n".join(out.lines) + "\n").encode()
