"""Check 11 (vLLM, torch, CUDA) with injected environments, and the probes that feed it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from serve_app.preflight.elf import ElfError, cuda_major, needed_libraries
from serve_app.preflight.environment import probe_environment, torch_build
from tests.preflight.conftest import GOOD_ENV, NO_VLLM, check, failures

ROOT = Path(__file__).resolve().parents[2]


def test_good_environment_passes(qwen2_checkpoint):
    result = check(qwen2_checkpoint).result("vllm_environment")
    assert result.status == "pass"
    assert result.detail == (
        "vLLM 0.24.0, torch 2.11.0+cu130 (vLLM requires torch==2.11.0), torch CUDA 13.0, vLLM kernels link "
        "libcudart.so.13"
    )


def test_vllm_absent_is_skipped_with_reason(qwen2_checkpoint):
    report = check(qwen2_checkpoint, env=NO_VLLM, engine="vllm")
    assert (
        report.result("vllm_environment").detail == "vLLM not installed here; the GPU host needs vllm==0.24.0"
    )
    assert report.result("arch_extras").detail == (
        "vLLM not installed here; with vLLM 0.24.0 Qwen2ForCausalLM needs no extra packages"
    )
    assert report.ok


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vllm_version": "0.23.1"}, "vLLM 0.23.1 is outside the supported range (>=0.24.0,<0.25)"),
        (
            {"torch_version": "2.10.0+cu130"},
            "torch 2.10.0+cu130 is installed but vLLM 0.24.0 requires torch==2.11.0",
        ),
        (
            {"torch_cuda": "12.8"},
            "torch is built for CUDA 12.8 but vLLM's kernels (vllm/_C*.so) link libcudart.so.13: "
            "CUDA 12 vs 13 "
            "segfaults in the first kernel",
        ),
        ({"torch_version": "2.11.0+cpu", "torch_cuda": None}, "torch 2.11.0+cpu is a CPU-only build"),
        ({"torch_version": None}, "torch is not installed"),
    ],
)
def test_environment_defects_fail_only_the_environment_check(qwen2_checkpoint, changes, message):
    report = check(qwen2_checkpoint, env=replace(GOOD_ENV, **changes))
    assert failures(report) == {"vllm_environment"}
    assert report.result("vllm_environment").detail == message


def test_torch_requirement_falls_back_to_the_rules_table(qwen2_checkpoint):
    env = replace(GOOD_ENV, vllm_torch_requirement=None, torch_version="2.12.0+cu130")
    assert "requires torch==2.11.0" in check(qwen2_checkpoint, env=env).result("vllm_environment").detail


def test_probes_of_this_machine():
    version, cuda = torch_build()
    assert version == importlib.metadata.version("torch")
    import torch

    assert cuda == torch.version.cuda
    env = probe_environment()
    assert env.torch_version == version
    if importlib.util.find_spec("vllm") is None:
        assert env.vllm_version is None and env.vllm_cuda_major is None


def test_preflight_imports_neither_vllm_nor_ray_nor_torch(qwen2_checkpoint):
    code = (
        "import sys\n"
        "from serve_app.preflight import run_preflight, spec_for_checkpoint\n"
        "import serve_app.preflight.cli, serve_app.preflight.render\n"
        f"report = run_preflight([spec_for_checkpoint({str(qwen2_checkpoint)!r})])\n"
        "heavy = ('vllm', 'ray', 'torch', 'transformers')\n"
        "print(sorted(m for m in heavy if m in sys.modules), report.exit_code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[] 0"


# --- ELF DT_NEEDED ----------------------------------------------------------------------------


def write_elf(path: Path, needed: list[str], wide: bool = True) -> Path:
    """A minimal ELF shared object: header, PT_LOAD + PT_DYNAMIC, the dynamic entries, a string table."""
    strtab = b"\0" + b"".join(name.encode() + b"\0" for name in needed)
    offsets = [1 + sum(len(n) + 1 for n in needed[:i]) for i in range(len(needed))]
    ehsize, phentsize, dynsize = (64, 56, 16) if wide else (52, 32, 8)
    phoff = ehsize
    dyn_off = phoff + 2 * phentsize
    entries = [(1, o) for o in offsets]
    str_off = dyn_off + (len(entries) + 2) * dynsize
    vaddr = 0x1000
    entries += [(5, vaddr + str_off), (0, 0)]
    dyn_fmt, ph_fmt = ("<qQ", "<IIQQQQQQ") if wide else ("<iI", "<IIIIIIII")
    dynamic = b"".join(struct.pack(dyn_fmt, tag, value) for tag, value in entries)
    total = str_off + len(strtab)
    if wide:
        load = struct.pack(ph_fmt, 1, 5, 0, vaddr, vaddr, total, total, 0x1000)
        dyn = struct.pack(
            ph_fmt, 2, 6, dyn_off, vaddr + dyn_off, vaddr + dyn_off, len(dynamic), len(dynamic), 8
        )
        header = (
            b"\x7fELF\x02\x01\x01"
            + b"\0" * 9
            + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, phoff, 0, 0, ehsize, phentsize, 2, 0, 0, 0)
        )
    else:
        load = struct.pack(ph_fmt, 1, 0, vaddr, vaddr, total, total, 5, 0x1000)
        dyn = struct.pack(
            ph_fmt, 2, dyn_off, vaddr + dyn_off, vaddr + dyn_off, len(dynamic), len(dynamic), 6, 4
        )
        header = (
            b"\x7fELF\x01\x01\x01"
            + b"\0" * 9
            + struct.pack("<HHIIIIIHHHHHH", 3, 3, 1, 0, phoff, 0, 0, ehsize, phentsize, 2, 0, 0, 0)
        )
    path.write_bytes(header + load + dyn + dynamic + strtab)
    return path


@pytest.mark.parametrize("wide", [True, False], ids=["elf64", "elf32"])
def test_needed_libraries_of_a_synthetic_extension(tmp_path, wide):
    libs = ["libc10.so", "libcudart.so.12", "libtorch_cuda.so"]
    path = write_elf(tmp_path / "_C.abi3.so", libs, wide)
    assert needed_libraries(path) == libs
    assert cuda_major(needed_libraries(path)) == 12


def test_needed_libraries_agree_with_readelf():
    ssl = next(Path(sys.base_prefix).glob("lib/python3*/lib-dynload/_ssl*.so"), None)
    readelf = shutil.which("readelf")
    if ssl is None or readelf is None:
        pytest.skip("needs readelf and Python's _ssl extension module")
    listing = subprocess.run([readelf, "-d", str(ssl)], capture_output=True, text=True, check=True).stdout
    assert needed_libraries(ssl) == re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", listing)


def test_not_an_elf_file(tmp_path):
    (tmp_path / "x.so").write_bytes(b"MZ not elf at all")
    with pytest.raises(ElfError, match=r"x\.so: not an ELF file"):
        needed_libraries(tmp_path / "x.so")
