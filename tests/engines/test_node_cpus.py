"""Preflight counts a machine's CPUs as Ray 2.60 does, container limits included
(ray/_private/utils.py get_num_cpus and _get_docker_cpus)."""

import multiprocessing

import pytest

from serve_app.engines.node_cpus import CgroupFiles, container_cpus, node_cpus


def files_in(tmp_path, **contents) -> CgroupFiles:
    """CgroupFiles under tmp_path, with the given files written (the others absent)."""
    files = CgroupFiles(*(tmp_path / name for name in ("quota", "period", "cpuset", "cpu_max")))
    for name, text in contents.items():
        getattr(files, name).write_text(text)
    return files


@pytest.mark.parametrize(
    ("contents", "limit"),
    [
        ({}, None),
        ({"cpu_max": "max 100000\n"}, None),  # cgroup v2, no quota
        ({"cpu_max": "200000 100000\n"}, 2.0),
        ({"cpu_max": "150000 100000\n"}, 1.5),
        ({"quota": "300000\n", "period": "100000\n"}, 3.0),  # cgroup v1
        ({"quota": "-1\n", "period": "100000\n"}, None),  # v1, no quota
        ({"quota": "0\n", "period": "100000\n"}, 1.0),
        ({"cpuset": "0-3,6\n"}, 5),
        ({"cpuset": "0-7\n", "cpu_max": "200000 100000\n"}, 2.0),  # the smaller of the two
        ({"cpuset": "0-1\n", "cpu_max": "400000 100000\n"}, 2),
        ({"cpu_max": "garbage\n"}, None),
    ],
)
def test_container_limits_read_as_ray_reads_them(tmp_path, contents, limit):
    assert container_cpus(files_in(tmp_path, **contents)) == limit


def test_a_container_quota_is_what_ray_offers_truncated_to_whole_cpus(tmp_path):
    machine = multiprocessing.cpu_count()
    assert node_cpus(files_in(tmp_path), environ={}) == machine
    files = files_in(tmp_path, cpu_max=f"{(machine + 0.5) * 100000:.0f} 100000")
    assert node_cpus(files, environ={}) == machine  # 2.5 on a 2-core machine: Ray says 2
    limited = files_in(tmp_path, cpu_max="150000 100000")
    assert node_cpus(limited, environ={}) == 1
    assert node_cpus(limited, environ={"RAY_USE_MULTIPROCESSING_CPU_COUNT": "1"}) == machine
