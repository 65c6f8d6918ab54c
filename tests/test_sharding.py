"""Sharded forward on 8 CPU devices equals the single-device forward (see tests/sharding_check.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def report() -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharding_check.py")], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON report; stdout={proc.stdout!r}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("mesh", ["fsdp4_tensor2", "data2_fsdp2_tensor2"])
def test_sharded_forward_matches_single_device(report, mesh):
    res = report["results"][mesh]
    assert report["ref_scale"] > 1.0  # logits large enough for 1e-5 to be a real bound
    print(f"{mesh}: max |sharded - single| = {res['max_diff']:.2e}")
    assert res["max_diff"] <= 1e-5


@pytest.mark.parametrize("mesh,fsdp", [("fsdp4_tensor2", 4), ("data2_fsdp2_tensor2", 2)])
def test_parameters_are_sharded(report, mesh, fsdp):
    res = report["results"][mesh]
    # q_proj kernel [layers, embed, heads]: embed over fsdp, heads over tensor.
    assert res["spec"] == [None, "fsdp", "tensor"]
    layers, embed, heads = res["global"]
    assert res["shard"] == [layers, embed // fsdp, heads // 2]
    assert res["lora_a_spec"] == "P(None, 'fsdp')"  # [layers, embed, rank]: rank replicated


def test_activation_constraints_follow_the_mesh(report):
    """`constrain` sees the mesh set with jax.set_mesh inside jit (it is a no-op without one)."""
    res = report["results"]["data2_fsdp2_tensor2"]
    assert res["constrain_spec"] == "P(('data', 'fsdp'), 'tensor')"
    assert res["logits_spec"] == "P(('data', 'fsdp'), None, 'tensor')"
