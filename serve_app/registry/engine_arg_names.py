"""vLLM engine arguments a registry entry takes only under ``engine_args``.

A model entry's own fields are the ones this app maps itself (``max_model_len``,
``gpu_memory_utilization``, ...); every other vLLM ``AsyncEngineArgs`` field goes in
``engine_args``, where the vLLM engine checks it against vLLM's own names when it loads. vLLM is
an optional extra, so the registry cannot ask vLLM which names exist: this table lists the ones
people set most (vLLM 0.24, ``vllm/engine/arg_utils.py``, ``EngineArgs``), so that one written
next to ``checkpoint:`` gets "set it under engine_args" instead of a guess at a similar name.
None of them is one the app maps itself (``serve_app.engines.vllm_mapping.FIRST_CLASS_FIELDS``,
``RESERVED_FIELDS``), which engine_args refuses.
"""

from __future__ import annotations

VLLM_ENGINE_ARGS = frozenset({
    "async_scheduling", "block_size", "calculate_kv_scales", "compilation_config", "cpu_offload_gb",
    "data_parallel_size", "disable_custom_all_reduce", "disable_log_stats", "disable_sliding_window",
    "distributed_executor_backend", "dtype", "enable_chunked_prefill", "enable_expert_parallel",
    "enable_lora", "enable_prefix_caching", "generation_config", "hf_overrides", "kv_cache_memory_bytes",
    "load_format", "max_logprobs", "max_lora_rank", "max_loras",
    "max_num_batched_tokens", "mm_processor_kwargs", "num_gpu_blocks_override",
    "override_generation_config", "pipeline_parallel_size", "revision", "scheduling_policy", "seed",
    "speculative_config", "tokenizer_mode",
})  # fmt: skip
