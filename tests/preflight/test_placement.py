"""Checks 13-15 with fake GPUs: capability, memory fit, tensor parallelism, cluster fit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from serve_app.engines.selection import NodeView, cluster_gpus
from serve_app.preflight import GpuInfo, preflight_model, run_preflight, spec_for_checkpoint
from serve_app.preflight.gpu import parse_nvidia_smi, probe_gpu
from serve_app.preflight.placement import HEADROOM_BYTES, check_checkpoint_nodes, check_cluster_fit
from tests.preflight.conftest import A100, GIB, GOOD_ENV, H100, NO_VLLM, check, edit_tensors, failures

GPU_CHECKS = ("gpu_capability", "memory_fit", "parallelism", "vllm_environment", "arch_extras")


def test_a100_fails_capability_naming_the_gpu(qwen2_checkpoint):
    report = check(qwen2_checkpoint, gpu=A100)
    assert failures(report) == {"gpu_capability"}
    assert report.result("gpu_capability").detail.startswith(
        "NVIDIA A100-SXM4-80GB has compute capability 8.0; FP8 W8A8 in vLLM 0.24.0 needs 8.9 or newer"
    )
    assert check(qwen2_checkpoint).result("gpu_capability").detail == (
        "NVIDIA H100 80GB HBM3: compute capability 9.0 >= 8.9"
    )


def test_cpu_engine_skips_gpu_checks(qwen2_checkpoint):
    report = check(qwen2_checkpoint, engine="cpu")
    assert {report.result(n).status for n in GPU_CHECKS} == {"skipped"}
    assert report.result("parallelism").detail == "CPU engine"
    assert "vLLM would need weights" in report.result("memory_fit").detail


def test_vllm_engine_without_a_gpu(qwen2_checkpoint):
    report = check(qwen2_checkpoint, gpu=None, env=NO_VLLM, engine="vllm")
    assert report.result("gpu_capability").detail == "no CUDA GPU visible"
    assert report.result("memory_fit").detail.startswith("no GPU to compare against; vLLM needs weights ")
    assert report.result("parallelism").status == "pass"  # needs no GPU
    override = preflight_model(
        spec_for_checkpoint(qwen2_checkpoint), gpu=None, env=NO_VLLM, gpu_memory_gib=24
    )
    assert override.result("memory_fit").status == "pass"
    assert (
        "24 GiB GPU (--gpu-memory-gib) x gpu_memory_utilization 0.9 = 21.60 GiB"
        in override.result("memory_fit").detail
    )


def test_memory_numbers(qwen2_checkpoint):
    result = check(qwen2_checkpoint, max_model_len=1024).result("memory_fit")
    data = result.data
    # 2 (K and V) x 2 layers x 2 KV heads x head_dim 16 x 2 bytes (BF16)
    assert data["kv_bytes_per_token_per_gpu"] == 256
    assert data["need_bytes_per_gpu"] == data["weights_bytes"] + 256 * 1024 + HEADROOM_BYTES
    assert data["budget_bytes_per_gpu"] == int(80 * GIB * 0.9)
    fp8 = check(qwen2_checkpoint, kv_cache_dtype="fp8").result("memory_fit").data
    assert fp8["kv_bytes_per_token_per_gpu"] == 128


def test_fractional_gpu_share_needs_matching_memory_utilization(qwen2_checkpoint):
    report = check(qwen2_checkpoint, resources={"num_gpus": 0.5})
    assert failures(report) == {"memory_fit"}
    assert report.result("memory_fit").fix == "set gpu_memory_utilization to at most 0.5"
    assert check(qwen2_checkpoint, resources={"num_gpus": 0.5}, gpu_memory_utilization=0.45).ok


def test_max_num_seqs_beyond_the_kv_room_warns(qwen2_checkpoint):
    spec = spec_for_checkpoint(qwen2_checkpoint, max_num_seqs=1024, max_model_len=2048)
    report = preflight_model(spec, gpu=H100, env=GOOD_ENV, gpu_memory_gib=2.5)
    result = report.result("memory_fit")
    assert result.status == "warn" and report.ok
    assert "sequences of 2048 tokens; fewer than max_num_seqs 1024" in result.detail


def test_tensor_parallel_size_larger_than_the_node(qwen2_checkpoint):
    report = check(
        qwen2_checkpoint, gpu=GpuInfo("NVIDIA H100", (9, 0), 80 * GIB, count=1), tensor_parallel_size=2
    )
    assert failures(report) == {"parallelism"}
    assert report.result("parallelism").detail == "a replica needs 2 GPUs on one node; this node has 1"
    assert report.result("parallelism").fix == "use a tensor_parallel_size that fits this node: 1"


def test_tp_that_does_not_divide_the_heads_says_which_would(qwen2_checkpoint):
    result = check(qwen2_checkpoint, tensor_parallel_size=3).result("parallelism")
    assert result.detail.startswith("4 attention heads are not divisible by tensor_parallel_size 3")
    assert result.fix == "use a tensor_parallel_size that fits this node: 1, 2, 4"


def specs(ckpt, count: int, **fields):
    return [spec_for_checkpoint(ckpt, **fields).model_copy(update={"name": f"m{i}"}) for i in range(count)]


def test_cluster_fit_counts_every_models_min_replicas(qwen2_checkpoint):
    models = specs(qwen2_checkpoint, 3, autoscaling={"min_replicas": 3, "max_replicas": 3})
    report = run_preflight(models, gpu=H100, env=GOOD_ENV, read_data=False)
    assert all(m.ok for m in report.models) and not report.ok and report.exit_code == 1
    cluster, _ = report.cluster
    assert cluster.detail.startswith(
        "min_replicas need 9 GPUs (m0: 3 x 1, m1: 3 x 1, m2: 3 x 1) but this node has 8"
    )
    assert run_preflight(models, gpu=H100, env=GOOD_ENV, read_data=False, cluster_gpus=16, cluster_cpus=9).ok


def test_cluster_fit_leaves_out_skipped_models(qwen2_checkpoint, copy_checkpoint):
    broken = copy_checkpoint(qwen2_checkpoint)
    edit_tensors(broken, lambda t: t.pop("model.layers.0.mlp.up_proj.input_scale"))
    good = specs(qwen2_checkpoint, 2, autoscaling={"min_replicas": 4, "max_replicas": 4})
    bad = spec_for_checkpoint(
        broken, on_preflight_failure="skip", autoscaling={"min_replicas": 4, "max_replicas": 4}
    )
    report = run_preflight([*good, bad], gpu=H100, env=GOOD_ENV, cluster_cpus=8)
    assert report.cluster[0].status == "pass" and report.cluster[0].data["need_gpus"] == 8
    assert report.cluster[0].data["need_cpus"] == 8
    assert list(report.unavailable()) == ["ckpt"] and report.blocking() == []


def test_cluster_fit_without_gpus(qwen2_checkpoint):
    two = specs(qwen2_checkpoint, 2)
    cpu_only = run_preflight(two, gpu=None, env=NO_VLLM, read_data=False, cluster_cpus=2)
    assert cpu_only.cluster[0].detail == (
        "no model needs a GPU at min_replicas; "
        "1 of 2 CPUs (the cluster; replicas x CPUs: m0: 1 x 0.5, m1: 1 x 0.5)"
    )
    vllm = run_preflight(
        specs(qwen2_checkpoint, 2, engine="vllm"), gpu=None, env=NO_VLLM, read_data=False, cluster_cpus=2
    )
    assert vllm.cluster[0].status == "skipped"
    assert vllm.cluster[0].detail == (
        "no CUDA GPU visible; min_replicas need 2 GPUs (m0: 1 x 1, m1: 1 x 1); "
        "2 of 2 CPUs (the cluster; replicas x CPUs: m0: 1 x 1, m1: 1 x 1)"
    )


def test_ray_cluster_is_only_asked_when_connected(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert cluster_gpus() is None


# --- the GPU probe ----------------------------------------------------------------------------

SMI = """0, GPU-aaaa1111, NVIDIA H100 80GB HBM3, 9.0, 81559
1, GPU-bbbb2222, NVIDIA H100 80GB HBM3, 9.0, 81559
"""


def test_parse_nvidia_smi():
    assert parse_nvidia_smi(SMI) == GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 81559 * 1024**2, count=2)
    assert parse_nvidia_smi(SMI, "1").count == 1
    assert parse_nvidia_smi(SMI, "GPU-bbbb").count == 1
    assert parse_nvidia_smi(SMI, "7") is None
    assert parse_nvidia_smi("0, GPU-x, Old GPU, [N/A], 16000\n").capability is None


@pytest.mark.parametrize("visible", ["", "-1"])
def test_no_visible_devices_means_no_gpu(monkeypatch, visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert probe_gpu() is None


def test_describe():
    assert A100.describe() == "8x NVIDIA A100-SXM4-80GB (compute capability 8.0, 80 GiB)"


def test_engine_auto_on_a_head_node_without_a_gpu_follows_the_clusters_gpus(qwen2_checkpoint):
    from serve_app.deployments.builder import plan_models

    spec = spec_for_checkpoint(qwen2_checkpoint)  # engine: auto
    report = run_preflight([spec], gpu=None, env=GOOD_ENV, cluster_gpus=4.0)
    # Workers have GPUs: vLLM is what gets deployed, and preflight checks that engine.
    assert report.platform.gpus == 4.0 and report.platform.has_vllm
    assert [p.engine for p in plan_models([spec], report.platform)] == ["vllm"]
    assert report.cluster[0].status == "pass"
    assert report.cluster[0].detail.startswith("min_replicas need 1 of 4 GPUs (Ray cluster")
    # Outside a cluster, the same machine has no GPU: the CPU engine, for both.
    local = run_preflight([spec], gpu=None, env=GOOD_ENV)
    assert [p.engine for p in plan_models([spec], local.platform)] == ["cpu"]
    assert local.models[0].result("parallelism").detail == "CPU engine (engine auto, no CUDA GPU visible)"


def test_cluster_fit_counts_custom_resources(qwen2_checkpoint):
    pinned = specs(
        qwen2_checkpoint,
        2,
        engine="cpu",
        autoscaling={"min_replicas": 2, "max_replicas": 2},
        resources={"resources": {"node_b": 0.5}},
    )
    demands = [(s, "cpu") for s in pinned]
    short = check_cluster_fit(demands, None, None, {"CPU": 8.0, "node_b": 1.0})
    assert short.status == "fail"
    assert short.detail == (
        "min_replicas need custom resources node_b: 2 but the Ray cluster has node_b: 1; "
        "replicas beyond that wait for a node with the resource forever"
    )
    fits = check_cluster_fit(demands, None, None, {"CPU": 2.0, "node_b": 2.0})
    assert fits.status == "pass"
    assert fits.detail == (
        "no model needs a GPU at min_replicas; "
        "2 of 2 CPUs (the Ray cluster; replicas x CPUs: m0: 2 x 0.5, m1: 2 x 0.5); "
        "custom resources node_b: 2 of the Ray cluster's node_b: 2"
    )


def test_cluster_fit_counts_cpus_and_the_routers(qwen2_checkpoint):
    """Ray keeps a replica it has no CPU for pending forever: `serve run` then hangs on "has taken
    more than 30s to be scheduled" instead of failing. Preflight says so first."""
    from serve_app.registry.models import ResourcesSpec, RouterSpec

    models = specs(qwen2_checkpoint, 3, engine="cpu", autoscaling={"min_replicas": 2, "max_replicas": 2})
    demands = [(m, "cpu") for m in models]
    router = RouterSpec(num_replicas=2)
    short = check_cluster_fit(demands, None, 0.0, router=router, cluster_cpus=2)
    assert short.status == "fail"
    assert short.detail == (
        "min_replicas need 3.5 CPUs (replicas x CPUs: m0: 2 x 0.5, m1: 2 x 0.5, m2: 2 x 0.5, "
        "router: 2 x 0.25) but the "
        "cluster has 2; replicas beyond that wait for a CPU forever"
    )
    assert short.fix.startswith("lower resources.num_cpus (fractions such as 0.5 are allowed")
    assert short.data == {"need_cpus": 3.5, "available_cpus": 2.0}
    # The connected Ray cluster's CPUs, when preflight runs inside it (`serve run`'s build task).
    assert check_cluster_fit(demands, None, 0.0, {"CPU": 4.0}, router=router).status == "pass"
    # vLLM replicas take a whole CPU each unless resources.num_cpus says otherwise.
    light = [(m.model_copy(update={"resources": ResourcesSpec(num_cpus=0.1)}), "vllm") for m in models]
    assert check_cluster_fit(light, None, 6.0, {"CPU": 0.6}).status == "pass"
    assert check_cluster_fit([(m, "vllm") for m in models], None, 6.0, {"CPU": 5.0}).status == "fail"


def test_cluster_fit_leaves_cpus_unchecked_for_a_cluster_it_cannot_see(qwen2_checkpoint, monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # not connected
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    models = specs(qwen2_checkpoint, 8, engine="cpu")
    result = check_cluster_fit([(m, "cpu") for m in models], None, 0.0)
    assert result.status == "pass"
    assert result.detail.endswith(
        "CPUs not checked: `serve run` joins the Ray cluster at RAY_ADDRESS, which preflight is not "
        "connected to (pass --cluster-cpus N); min_replicas need 4 CPUs (replicas x CPUs: "
        "m0: 1 x 0.5, m1: 1 x 0.5, "
        "m2: 1 x 0.5, m3: 1 x 0.5, m4: 1 x 0.5, m5: 1 x 0.5, m6: 1 x 0.5, m7: 1 x 0.5)"
    )
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr("serve_app.engines.selection.local_cpus", lambda: 2)
    local = check_cluster_fit([(m, "cpu") for m in models], None, 0.0)
    assert local.status == "fail" and "but this machine has 2;" in local.detail


def test_checkpoint_nodes_says_where_checkpoints_were_read():
    many = check_checkpoint_nodes(NodeView("node abc (10.0.0.1)", 3))
    assert many.status == "warn"
    assert many.detail == (
        "checkpoints read on node abc (10.0.0.1) only; the Ray cluster has 3 nodes, and each replica "
        "checks its checkpoint again on the node where it starts"
    )
    assert check_checkpoint_nodes(NodeView("node abc (10.0.0.1)", 1)).status == "pass"
    assert check_checkpoint_nodes(None).detail.endswith(
        "only (not connected to a Ray cluster); each replica checks its checkpoint again on the node "
        "where it starts"
    )


def test_the_committed_demo_registry_fits_one_gpu_when_auto_picks_vllm(tmp_path):
    """Issue 13: `make serve EXTRAS=gpu,quantize` on a one-GPU machine used to fail cluster_fit
    (three models at a whole GPU each). The demo's models share the GPU when they run on vLLM."""
    import yaml

    from serve_app.registry.layout import MODEL_IMPORT_PATH
    from serve_app.registry.loader import parse_model_args
    from serve_app.registry.models import RouterSpec

    root = Path(__file__).resolve().parents[2]
    document = yaml.safe_load((root / "models.yaml").read_text())
    models = [
        parse_model_args(app["args"], base_dir=root, check_paths=False)
        for app in document["applications"]
        if app["import_path"] == MODEL_IMPORT_PATH
    ]
    one_h100 = GpuInfo("NVIDIA H100", (9, 0), 80 * GIB, count=1)
    router = RouterSpec()
    fit = check_cluster_fit([(m, "vllm") for m in models], one_h100, 1.0, router=router, cluster_cpus=4)
    assert fit.status == "pass", fit.detail
    # `make serve` on the 2-core CI machine: three CPU-engine models and the router.
    on_cpu = check_cluster_fit([(m, "cpu") for m in models], None, 0.0, router=router, cluster_cpus=2)
    assert on_cpu.status == "pass", on_cpu.detail
    assert on_cpu.data["need_cpus"] == 1.75


def test_replicas_sharing_a_gpu_without_a_fixed_kv_cache_are_warned(qwen2_checkpoint):
    """examples/gpu-two-replicas.yaml (issue 13, run 8): replicas that start at once on one GPU
    count each other's allocations in vLLM's memory profiling."""
    report = check(qwen2_checkpoint, resources={"num_gpus": 0.5}, gpu_memory_utilization=0.45)
    result = report.result("memory_fit")
    assert result.status == "warn" and report.ok
    assert "a replica gets 0.5 of each GPU (resources.num_gpus 0.5 / tensor_parallel_size 1)" in result.detail
    assert "(vllm/utils/mem_utils.py, memory_profiling)" in result.detail
    assert result.fix.startswith("set engine_args.kv_cache_memory_bytes (at most ")
    assert check(qwen2_checkpoint).result("memory_fit").status == "pass"  # a whole GPU: nothing to share


def test_a_fixed_kv_cache_is_measured_against_the_replicas_share(qwen2_checkpoint):
    """With kv_cache_memory_bytes vLLM ignores gpu_memory_utilization for the cache: weights + that
    cache + headroom must fit the replica's share of the GPU."""
    shared = {"resources": {"num_gpus": 0.5}, "gpu_memory_utilization": 0.45}
    fits = check(qwen2_checkpoint, engine_args={"kv_cache_memory_bytes": 30 * GIB}, **shared)
    result = fits.result("memory_fit")
    assert result.status == "pass", result.detail
    assert "KV cache 30.00 GiB (engine_args.kv_cache_memory_bytes)" in result.detail
    assert "available NVIDIA H100 80GB HBM3 (80.00 GiB) x a replica's share 0.5 = 40.00 GiB" in result.detail
    assert result.data["kv_cache_memory_bytes"] == 30 * GIB

    too_big = check(qwen2_checkpoint, engine_args={"kv_cache_memory_bytes": 39 * GIB}, **shared)
    assert failures(too_big) == {"memory_fit"}
    weights = too_big.result("memory_fit").data["weights_bytes"]
    most = 40 * GIB - weights - HEADROOM_BYTES
    assert too_big.result("memory_fit").detail.startswith("does not fit: weights ")
    assert too_big.result("memory_fit").fix == (
        f"lower kv_cache_memory_bytes to at most {most} ({most / GIB:.2f} GiB), or raise resources.num_gpus"
        " (this replica's share of a GPU)"
    )


def test_a_fixed_kv_cache_smaller_than_one_sequence_fails(qwen2_checkpoint):
    report = check(qwen2_checkpoint, max_model_len=2048, engine_args={"kv_cache_memory_bytes": 4096})
    assert failures(report) == {"memory_fit"}
    result = report.result("memory_fit")
    # one sequence: 2048 tokens x 256 bytes
    assert result.detail == (
        "engine_args.kv_cache_memory_bytes 4096 holds less than one 2048-token sequence (524288 bytes in "
        "whole 16-token blocks); vLLM refuses to start"
    )
    assert result.fix == "raise kv_cache_memory_bytes to at least 524288, or lower max_model_len"


@pytest.mark.parametrize("value", [39.0 * GIB, str(39 * GIB)])
def test_a_fixed_kv_cache_is_read_as_vllms_config_reads_it(qwen2_checkpoint, value):
    """vLLM's pydantic config takes 41875931136.0 and "41875931136" as whole numbers: so does preflight."""
    shared = {"resources": {"num_gpus": 0.5}, "gpu_memory_utilization": 0.45}
    report = check(qwen2_checkpoint, engine_args={"kv_cache_memory_bytes": value}, **shared)
    assert failures(report) == {"memory_fit"}
    assert report.result("memory_fit").detail.startswith("does not fit: weights ")
    assert report.result("memory_fit").data["need_bytes_per_gpu"] > 39 * GIB


@pytest.mark.parametrize("value", [True, -5, 0, 1.5, "20G", "2e10", 10**400])
def test_a_kv_cache_size_that_is_not_one_fails_naming_the_field(qwen2_checkpoint, value):
    report = check(qwen2_checkpoint, engine_args={"kv_cache_memory_bytes": value})
    assert failures(report) == {"memory_fit"}
    result = report.result("memory_fit")
    assert result.detail.startswith(f"engine_args.kv_cache_memory_bytes {value!r} is not a KV cache size")
    assert result.fix.startswith("set it in bytes, e.g. 21474836480 for 20 GiB")
    slips = {
        "20G": "; `vllm serve --kv-cache-memory-bytes` takes suffixes such as 20G, engine_args not",
        "2e10": " (YAML read this one as text: 2e10 is text to YAML, 2.0e+10 a number)",
        0: "; vLLM would take 0 as unset and size the cache by profiling",
    }
    assert result.detail.endswith(slips.get(value, "above 0 and at most 1125899906842624 (1 PiB)"))


def test_vllm_with_no_gpu_share_fails(qwen2_checkpoint):
    report = check(qwen2_checkpoint, resources={"num_gpus": 0})
    assert failures(report) == {"memory_fit"}
    assert report.result("memory_fit").detail == (
        "resources.num_gpus 0: Ray gives the replica no GPU, and vLLM cannot start without one"
    )


def test_a_shared_gpu_with_too_many_sequences_gives_both_warnings(qwen2_checkpoint):
    spec = spec_for_checkpoint(
        qwen2_checkpoint, max_num_seqs=1024, resources={"num_gpus": 0.5}, gpu_memory_utilization=0.45
    )
    result = preflight_model(spec, gpu=H100, env=GOOD_ENV, gpu_memory_gib=5).result("memory_fit")
    assert result.status == "warn"
    assert "; fewer than max_num_seqs 1024; a replica gets 0.5 of each GPU" in result.detail
    assert result.fix.startswith("lower max_num_seqs or max_model_len to what fits")
    assert "; set engine_args.kv_cache_memory_bytes (at most " in result.fix


def test_one_sequence_is_counted_in_whole_kv_blocks(qwen2_checkpoint):
    """vLLM sizes a sequence in 16-token blocks: 1000 tokens take 63 blocks (1008 tokens)."""
    per_token = 256
    short = check(
        qwen2_checkpoint, max_model_len=1000, engine_args={"kv_cache_memory_bytes": 1000 * per_token}
    )
    assert failures(short) == {"memory_fit"}
    assert "(258048 bytes in whole 16-token blocks)" in short.result("memory_fit").detail
    enough = check(
        qwen2_checkpoint, max_model_len=1000, engine_args={"kv_cache_memory_bytes": 1008 * per_token}
    )
    assert enough.result("memory_fit").status == "pass"
    assert "KV cache = 1 sequence of 1000 tokens" in enough.result("memory_fit").detail


def test_a_max_model_len_past_the_checkpoint_fails_once(qwen2_checkpoint):
    """The registry's max_model_len past the checkpoint's is check max_model_len's failure; the
    fixed cache sized for it is not a second one."""
    report = check(qwen2_checkpoint, max_model_len=8192, engine_args={"kv_cache_memory_bytes": 1024 * 1024})
    assert failures(report) == {"max_model_len"}


def test_a_fixed_kv_cache_with_tensor_parallelism_is_per_gpu(qwen2_checkpoint):
    """num_gpus 1 over tensor_parallel_size 2 is half of each of two GPUs: the fixed cache (per GPU,
    as vLLM counts it) must fit 40 GiB of an 80 GiB H100, and nothing bigger helps but more GPU."""
    spec = {"tensor_parallel_size": 2, "resources": {"num_gpus": 1}, "gpu_memory_utilization": 0.5}
    fits = check(qwen2_checkpoint, engine_args={"kv_cache_memory_bytes": 30 * GIB}, **spec).result(
        "memory_fit"
    )
    assert fits.status == "pass" and "x a replica's share 0.5 = 40.00 GiB" in fits.detail
    nothing_fits = check(
        qwen2_checkpoint, gpu_memory_utilization=0.02, engine_args={"kv_cache_memory_bytes": GIB},
        tensor_parallel_size=2, resources={"num_gpus": 0.04},  # 0.02 of each GPU, 1.6 GiB: under the headroom
    )  # fmt: skip
    result = nothing_fits.result("memory_fit")
    assert failures(nothing_fits) == {"memory_fit"}
    assert result.fix == (
        "place the model on a larger GPU, or raise resources.num_gpus (this replica's share of a GPU), "
        "or spread its weights with a larger tensor_parallel_size"
    )


def test_a_fixed_kv_cache_with_fewer_sequences_than_max_num_seqs_warns(qwen2_checkpoint):
    report = check(
        qwen2_checkpoint,
        max_model_len=2048,
        max_num_seqs=8,
        engine_args={"kv_cache_memory_bytes": 4 * 524288},
    )
    result = report.result("memory_fit")
    assert result.status == "warn" and report.ok
    assert result.detail.endswith("KV cache = 4 sequences of 2048 tokens, fewer than max_num_seqs 8")


def test_max_replicas_beyond_the_gpus_warns(qwen2_checkpoint):
    """Two replicas at 0.45 fit one GPU; an autoscaler allowed a third would leave it pending."""
    shared = {"resources": {"num_gpus": 0.45}, "gpu_memory_utilization": 0.45,
              "engine_args": {"kv_cache_memory_bytes": 20 * GIB}}  # fmt: skip
    fits = specs(qwen2_checkpoint, 1, autoscaling={"min_replicas": 2, "max_replicas": 2}, **shared)
    assert (
        run_preflight(fits, gpu=H100, env=GOOD_ENV, cluster_gpus=1, cluster_cpus=4).cluster[0].status
        == "pass"
    )
    more = specs(qwen2_checkpoint, 1, autoscaling={"min_replicas": 2, "max_replicas": 3}, **shared)
    report = run_preflight(more, gpu=H100, env=GOOD_ENV, cluster_gpus=1, cluster_cpus=4)
    cluster = report.cluster[0]
    assert cluster.status == "warn" and report.ok
    assert "; max_replicas would need 1.35 (m0: 3 x 0.45): replicas the autoscaler adds beyond the GPUs" in (
        cluster.detail
    )
    assert cluster.fix == "lower autoscaling.max_replicas to what fits"


def test_engine_auto_without_vllm_here_says_what_it_would_claim_on_the_gpus(qwen2_checkpoint):
    """A user checking a GPU registry on a laptop (--cluster-gpus 1, no vLLM): engine auto means
    the CPU engine here, which claims no GPU, so cluster_fit says what vLLM would claim."""
    model = specs(qwen2_checkpoint, 3, autoscaling={"min_replicas": 3, "max_replicas": 3})[:1]  # engine auto
    report = run_preflight(model, gpu=None, env=NO_VLLM, cluster_gpus=1, cluster_cpus=8)
    cluster = report.cluster[0]
    assert cluster.status == "warn"
    assert cluster.detail.startswith(
        "no model needs a GPU at min_replicas; engine auto runs the CPU engine where vLLM is not "
        "installed (here), so m0 claims no GPU; where vLLM is, min_replicas need 3 GPUs (m0: 3 x 1), "
        "more than the 1 there are: cluster_fit fails there"
    )
    assert cluster.fix == "set engine: vllm on m0 to check it as a GPU machine runs it"
    checked = run_preflight([model[0].model_copy(update={"engine": "vllm"})], gpu=None, env=NO_VLLM,
                            cluster_gpus=1, cluster_cpus=8)  # fmt: skip
    assert checked.cluster[0].status == "fail"
    assert checked.cluster[0].detail.startswith("min_replicas need 3 GPUs (m0: 3 x 1) but Ray cluster has 1")


def test_max_replicas_beyond_the_gpus_warns_when_min_replicas_is_zero(qwen2_checkpoint):
    """Scale to zero: nothing at min_replicas, three whole-GPU replicas at most on one GPU."""
    model = specs(qwen2_checkpoint, 1, engine="vllm", autoscaling={"min_replicas": 0, "max_replicas": 3})
    cluster = run_preflight(model, gpu=H100, env=GOOD_ENV, cluster_gpus=1, cluster_cpus=4).cluster[0]
    assert cluster.status == "warn"
    assert cluster.detail.startswith(
        "no model needs a GPU at min_replicas; max_replicas would need 3 (m0: 3 x 1)"
    )


def test_an_engine_args_block_size_sets_the_whole_blocks_of_a_sequence(qwen2_checkpoint):
    """engine_args.block_size 64: 1000 tokens take 16 blocks (1024 tokens), not 63 of 16."""
    fields = {"max_model_len": 1000, "engine_args": {"kv_cache_memory_bytes": 1008 * 256, "block_size": 64}}
    result = check(qwen2_checkpoint, **fields).result("memory_fit")
    assert result.status == "fail"
    assert "(262144 bytes in whole 64-token blocks)" in result.detail
