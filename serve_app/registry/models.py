"""The registry schema: what one served model and the router accept in models.yaml.

Everything here is strict (``extra="forbid"``): a typo fails at load time instead of being
ignored. Nothing here imports Ray or vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.registry.tool_call_parsers import TOOL_CALL_PARSERS, check_parser_name

EngineKind = Literal["auto", "vllm", "cpu"]
KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "bfloat16"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# Resources Ray names itself; a custom resource must not use these names (Ray refuses "CPU" and
# "GPU" in ray_actor_options.resources and counts memory through its own options).
RAY_BUILTIN_RESOURCES = {
    "CPU": "resources.num_cpus",
    "GPU": "resources.num_gpus",
    "memory": "Ray's memory option",
    "object_store_memory": "Ray's object_store_memory option",
}


# Ray counts resources in units of 1/10000 (ray._raylet.RESOURCE_UNIT_SCALING).
RAY_RESOURCE_PRECISION = 0.0001


class ResourcesSpec(StrictModel):
    num_gpus: float | None = Field(
        default=None,
        ge=0,
        description="GPUs per vLLM replica; fractions let several models share one GPU (pair them "
        "with gpu_memory_utilization). Default: tensor_parallel_size. The CPU engine never asks for "
        "a GPU, so a registry with GPU shares and engine: auto also runs on a CPU machine.",
    )
    num_cpus: float | None = Field(
        default=None,
        ge=0,
        description="CPUs Ray reserves per replica. Default 1 for vLLM (its scheduler loop), "
        "0.5 for the CPU engine so two demo models and the router fit a 2-core machine.",
    )
    accelerator_type: str | None = Field(
        default=None, description="Ray accelerator type to pin replicas to, e.g. 'H100'."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica, {name: amount}, as in Ray Serve's "
        "ray_actor_options.resources: a replica goes only to a node started with that resource "
        "(`ray start --resources '{\"node_a\": 1}'`), which pins a model to chosen nodes.",
    )

    @field_validator("resources")
    @classmethod
    def custom_resources_as_ray_accepts(cls, value: dict[str, float]) -> dict[str, float]:
        """Ray's own rules (ray/_common/ray_option_utils.py in Ray 2.60, ``_validate_resources``
        and ``_validate_resource_quantity``), checked at load time instead of at deploy time."""
        for name, amount in value.items():
            if not name.strip() or name.strip() != name:
                raise ValueError(f"resource name {name!r} must be non-empty, without surrounding spaces")
            if name in RAY_BUILTIN_RESOURCES:
                raise ValueError(
                    f"{name!r} is a built-in Ray resource; use {RAY_BUILTIN_RESOURCES[name]} instead"
                )
            if amount < RAY_RESOURCE_PRECISION:
                raise ValueError(
                    f"resource {name!r}: amount must be at least {RAY_RESOURCE_PRECISION:g} "
                    f"(Ray's precision; 0 would pin nothing), got {amount:g}"
                )
        return value


class AutoscalingSpec(StrictModel):
    """Replica autoscaling on ongoing requests.

    Defaults are for LLM engines that batch continuously: one replica keeps up to
    ``target_ongoing_requests`` streams in flight before another is worth adding. Ray Serve LLM
    sets this target to 1e9, which means it never scales on load; 64 is about half of vLLM's
    default max_num_seqs on an H100 at the context lengths we serve, so a replica scales out
    before its batch is full and its TTFT climbs.
    """

    min_replicas: int = Field(default=1, ge=0, description="Replicas kept up even when idle.")
    max_replicas: int = Field(default=1, ge=1, description="Upper bound on replicas (GPUs permitting).")
    initial_replicas: int | None = Field(default=None, ge=0, description="Replicas at start.")
    target_ongoing_requests: float = Field(
        default=64, gt=0, description="Ongoing requests per replica that autoscaling aims for."
    )
    upscale_delay_s: float = Field(
        default=15.0, ge=0, description="Load must persist this long before a replica is added."
    )
    downscale_delay_s: float = Field(
        default=300.0,
        ge=0,
        description="Idle time before a replica is removed; long, because a cold vLLM start costs minutes.",
    )

    @model_validator(mode="after")
    def min_not_above_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is larger than max_replicas ({self.max_replicas})"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class MediaSpec(StrictModel):
    """Images in chat requests (vision-language checkpoints only; a text-only model refuses them)."""

    limit_per_prompt: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Most images in one request; more get 400. Passed to vLLM as "
        "limit_mm_per_prompt={'image': N}, which also bounds its start-up memory profiling.",
    )
    allowed_media_domains: list[str] = Field(
        default_factory=list,
        description="Hosts whose http(s) image URLs the server may fetch (vLLM's "
        "--allowed-media-domains). Empty (the default): remote images are refused and clients "
        "send data URLs, so no request can make the server fetch a URL. file:// is never allowed.",
    )
    max_image_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="Largest encoded image (a data URL's or a download's bytes).",
    )
    max_image_pixels: int = Field(
        default=4096 * 4096,
        ge=64,
        description="Most pixels (width x height) of one decoded image, read from its header before "
        "decoding, so a decompression bomb is refused without decoding it.",
    )
    fetch_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Time for one remote image's whole download (vLLM's default: 5 s).",
    )

    @field_validator("allowed_media_domains")
    @classmethod
    def domains_are_host_names(cls, value: list[str]) -> list[str]:
        for host in value:
            if not host or host != host.strip().lower() or any(c in host for c in "/:@ "):
                raise ValueError(f"{host!r} is not a lower-case host name (no scheme, port or path)")
        return value


class ModelSpec(StrictModel):
    """One served model: a ModelOpt FP8 checkpoint and how to run it."""

    name: str = Field(min_length=1, description="The id clients send in the `model` field.")
    aliases: list[str] = Field(default_factory=list, description="Other ids that route to this model.")
    checkpoint: Path = Field(
        description="Local checkpoint directory; a relative path is resolved against the YAML's folder."
    )
    engine: EngineKind = Field(
        default="auto", description="auto: vLLM where a CUDA GPU and vLLM are present, else cpu."
    )
    on_preflight_failure: Literal["fail", "skip"] = Field(
        default="fail",
        description="fail: a failed preflight check stops the app. skip: serve the other models and "
        "list this one as unavailable in /readyz.",
    )

    # Engine options (vLLM names; the CPU engine honours max_model_len and max_num_seqs).
    max_model_len: int | None = Field(
        default=None, ge=1, le=1 << 32, description="Context window; default: config's."
    )  # 4G tokens: far past any checkpoint, and within the float arithmetic of preflight's messages
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of the GPU's memory this replica's vLLM may use."
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one replica shards over.")
    max_num_seqs: int | None = Field(default=None, ge=1, description="Sequences batched at once.")
    enforce_eager: bool = Field(default=False, description="Skip CUDA graphs and torch.compile.")
    kv_cache_dtype: KvCacheDtype = Field(default="auto", description="KV-cache dtype.")
    trust_remote_code: bool = Field(default=False, description="Run code shipped in the checkpoint.")
    compile_cache_dir: Path | None = Field(
        default=None,
        description="Persistent torch.compile cache for this model, so a restarted or added replica "
        "skips compilation. Default: ~/.cache/modelopt-serve/compile/<name>.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vLLM AsyncEngineArgs, checked against vLLM's own fields at load.",
    )

    stream_interval_ms: float = Field(
        default=50.0,
        ge=0,
        le=1000,
        description="After a stream's first chunk (sent at once), read the engine's stream at most "
        "this often; the engine merges the tokens in between into one chunk. Each chunk crosses "
        "the Ray hops with its own cost, which is what limits throughput under load "
        "(docs/benchmarks.md). 0 sends every engine output on its own. The most a stream waits: "
        "under light load it waits less (stream_items_per_s).",
    )
    stream_items_per_s: float = Field(
        default=2560.0,
        ge=0,
        le=1_000_000,
        description="Chunks per second one replica's streams may yield together before they are "
        "coalesced: each stream's interval is its replica's streams in flight / this, at most "
        "stream_interval_ms. One stream gets every engine output (inter-token latency as bare "
        "vLLM); 128 streams get 50 ms. 0 always waits stream_interval_ms.",
    )

    allow_request_chat_template: bool = Field(
        default=False,
        description="Accept a request's own `chat_template` (vLLM's request field). Off by default, as "
        "in vLLM: a request template is code the server runs. When on, it renders in a separate "
        "process that is killed when it runs past chat_template_timeout_s.",
    )
    chat_template_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Time budget for rendering a request-supplied chat template; past it the request "
        "gets 400 and the render process is replaced. Other requests are not held up.",
    )

    tool_call_parser: str | None = Field(
        default=None,
        description="vLLM's --tool-call-parser name for this model's tool-call output ("
        + ", ".join(TOOL_CALL_PARSERS)
        + "). Default: chosen from the checkpoint's architecture (registry/tool_call_parsers.py).",
    )

    media: MediaSpec = Field(default_factory=MediaSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    max_ongoing_requests: int = Field(
        default=1024,
        ge=1,
        description="Requests one replica takes at once. Serve's default of 5 would starve the "
        "engine's continuous batching; 1024 is vLLM's own max_num_seqs for the OpenAI server on "
        "an H100 or H200, so Serve does not cap what the engine would batch. The rest wait in "
        "the handle's queue.",
    )
    max_queued_requests: int = Field(
        default=1024,
        ge=-1,
        description="Requests waiting for a replica before new ones get 503 + Retry-After (-1: no limit).",
    )
    health_check_period_s: float = Field(
        default=1.0,
        gt=0,
        description="How often Ray Serve calls a replica's check_health (only once it has started: a "
        "long vLLM start is not cut short). Three failures in a row take the replica out of routing, "
        "so a dead engine leaves within about 3 x this, a hung one within about 2 x this plus the "
        "engine's 1 s answer limit, plus up to one period before the first check (3-4 s at 1 s).",
    )
    health_check_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long Ray Serve waits for one check_health answer before counting a failure: "
        "a backstop for a replica whose event loop is stuck. The model server itself fails a check "
        "whose engine has not answered in 1 s of loop time (0.6 x this of wall time at most, and "
        "never more than 8 s). Under full load on an H200 the 2 s of before was missed (run 6).",
    )

    # Changing the fleet (docs/architecture.md): draining and scale to zero.
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="How long a replica being stopped (scale-down, redeploy, shutdown) lets its "
        "requests in flight finish; it takes no new ones meanwhile. Past it, streams still open end "
        "with an SSE error event and `data: [DONE]`. vLLM's --shutdown-timeout is the precedent; "
        "Ray Serve's graceful_shutdown_timeout_s carries it.",
    )
    cold_start_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="How long a request waits for a replica when the model has none running "
        "(scaled to zero, or starting); past it the request gets 503 with Retry-After.",
    )

    @field_validator("name")
    @classmethod
    def name_is_routable(cls, value: str) -> str:
        if value.strip() != value or any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace")
        return value

    @field_validator("tool_call_parser")
    @classmethod
    def tool_call_parser_is_known(cls, value: str | None) -> str | None:
        return None if value is None else check_parser_name(value)

    @property
    def served_names(self) -> list[str]:
        return [self.name, *self.aliases]


class AuthSpec(StrictModel):
    """API keys for the router. Off unless a key source is named; keys never live in the YAML."""

    api_keys_env: str | None = Field(
        default=None,
        min_length=1,
        description="Name of an environment variable (where the Ray cluster started) holding the "
        "accepted keys, comma-separated; each may use every model.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="A YAML file, readable where the router runs, with `keys: [{key: ..., models: "
        "[...]}]`; `models` (optional) lists the model names and aliases that key may use.",
    )
    protect_metrics: bool = Field(
        default=False,
        description="Require a key for GET /metrics (GET /stats always needs one when keys are on).",
    )
    protect_readyz: bool = Field(
        default=False, description="Require a key for GET /readyz and GET /health (/healthz stays open)."
    )

    @property
    def enabled(self) -> bool:
        return self.api_keys_env is not None or self.api_keys_file is not None

    @model_validator(mode="after")
    def protection_needs_keys(self) -> AuthSpec:
        if (self.protect_metrics or self.protect_readyz) and not self.enabled:
            raise ValueError("protect_metrics / protect_readyz need api_keys_env or api_keys_file")
        return self


class RouterSpec(StrictModel):
    num_replicas: int = Field(default=1, ge=1, description="Router (ingress) replicas.")
    model_app_prefix: str = Field(
        default="",
        description="Serve only the model applications whose application names start with this "
        "(several fleets on one Ray cluster, each behind its own router). Default: every model "
        "application on the cluster.",
    )
    num_cpus: float = Field(
        default=0.25,
        ge=0,
        description="CPUs reserved per router replica; small so the router never waits for a CPU "
        "that model replicas hold (on a 2-core machine the default of 1 deadlocks scheduling).",
    )
    max_ongoing_requests: int = Field(default=4096, ge=1, description="Streams one router replica relays.")
    drain_timeout_s: float = Field(
        default=40.0,
        ge=0,
        le=3600,
        description="How long a router replica being stopped keeps relaying its streams. Keep it above "
        "every model's drain_timeout_s, so the router is still there to end a stream that a model's "
        "drain cut with an SSE error event and [DONE].",
    )
    # Request limits, checked by the router before it parses (bytes) or validates (the rest).
    max_request_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=48 * 1024 * 1024,
        description="Largest request body in bytes; larger ones get 413. At most 48 MiB: the router "
        "passes the request to the model replica as one gRPC message in Ray Serve's throughput mode, "
        "whose limit the app raises to 64 MiB (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH, Ray's "
        "default 4 MiB), and the pickled request is never larger than its JSON plus a small margin.",
    )
    request_body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Longest time the router waits, in all, for a request body to arrive; past it "
        "the request gets 408 with Connection: close, so a client that declares a body and sends "
        "it slowly (or never) does not hold a request open. 60 s carries the largest body (48 MiB) "
        "at about 7 Mbit/s.",
    )
    max_messages: int = Field(default=2048, ge=1, description="Most chat messages in one request.")
    max_content_parts: int = Field(default=256, ge=1, description="Most content parts in one message.")
    max_prompt_chars: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="Most characters of prompt text: the chat messages' text together, or the "
        "completions prompt (all prompts of a list together).",
    )
    max_prompt_token_ids: int = Field(
        default=1024 * 1024, ge=1, description="Longest completions prompt given as token ids."
    )
    max_json_depth: int = Field(
        default=64, ge=4, le=512, description="Deepest nesting of arrays and objects in a request body."
    )
    auth: AuthSpec = Field(default_factory=AuthSpec, description="API keys (off by default).")


class RegistrySpec(StrictModel):
    """The ``args`` of the application in models.yaml."""

    models: list[ModelSpec] = Field(min_length=1, description="The served models.")
    router: RouterSpec = Field(default_factory=RouterSpec)
    base_dir: Path | None = Field(
        default=None, description="Folder relative checkpoint paths resolve against (default: the YAML's)."
    )

    @model_validator(mode="after")
    def names_are_unique(self) -> RegistrySpec:
        owner: dict[str, str] = {}
        for model in self.models:
            for served in model.served_names:
                if served in owner:
                    raise ValueError(
                        f"model name {served!r} is used twice (by {owner[served]!r} and {model.name!r}); "
                        "each name and alias must be unique"
                    )
                owner[served] = model.name
        return self

    def model(self, name: str) -> ModelSpec:
        for spec in self.models:
            if name in spec.served_names:
                return spec
        raise KeyError(name)
