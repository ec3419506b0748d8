"""The simulated LLM engine: an HTTP server that behaves like vLLM or TGI under load.

Run it with ``python -m backends.sim --dialect vllm|tgi --port P --model NAME``; embed it with
``backends.sim.app.start(SimConfig(...))``. Modules: ``tokenizer`` / ``textgen`` / ``chat`` (deterministic
tokens and text), ``kv_cache`` / ``scheduler`` / ``profiles`` / ``engine`` (the engine model),
``faults``, ``dialect_vllm`` / ``dialect_tgi`` (+ their protocol, response and metrics modules), ``app``.
"""
