"""One evaluation across several processes with torchrun (CPU, gloo), each test launching real
``torchrun`` jobs (``python -m torch.distributed.run`` is the ``torchrun`` command):

- world sizes 1, 2 and 3 give the same record: every per-example array bit for bit, the summary
  equal apart from timings and provenance (all stages, 48 MNIST points in blocks of 16);
- SIGKILL of one rank in the middle of AutoAttack: the job fails without a record; the rerun
  computes only the blocks that were missing (no finished block file is touched, the new attempt's
  claims are exactly the missing blocks) and gives the uninterrupted run's record;
- a rank whose block fails: the job exits non-zero with that rank's one-line error, no traceback
  of ours, no record.

The model is the IBP-trained MNIST CNN at eps 0.4, where most points are certified (so AutoAttack
skips them, block by block, from the certify stage's arrays) and the rest go through all four
attacks, Square breaking two points the white-box attacks did not: every stage has work to split.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.core.files import sha256_file

pytestmark = pytest.mark.slow  # every test runs real multi-process evaluations: 9-40 s each on 2 cores

REPO = Path(__file__).resolve().parents[2]
N, BATCH = 48, 16


def _torchrun(nproc: int, *args, timeout: float = 300, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "harness", "eval", *map(str, args), "--no-progress"]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def submission(tmp_path_factory) -> Path:
    """mnist-ibp's checkpoint at eps 0.4, certified with IBP and CROWN-IBP."""
    folder = tmp_path_factory.mktemp("dist") / "submissions" / "dist-ibp"
    folder.mkdir(parents=True)
    shutil.copy(REPO / "submissions" / "mnist-ibp" / "model.safetensors", folder)
    spec = yaml.safe_load((REPO / "submissions" / "mnist-ibp" / "submission.yaml").read_text())
    spec["id"] = "dist-ibp"
    spec["threat_model"]["eps"] = 0.4
    spec["evaluation"].update(n_examples=N, batch_size=BATCH, certify=["ibp", "crown-ibp"])
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "submission.yaml"


def _read(out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from harness.record.read import read_record

    read_record(out)  # the strict reader accepts it (schema, invariants, arrays)
    rec = json.loads(out.read_text())
    with np.load(out.with_name(out.name.replace(".json", ".examples.npz"))) as z:
        return rec, {k: z[k] for k in z.files}


def _comparable(rec: dict) -> dict:
    rec = json.loads(json.dumps(rec))
    rec.pop("provenance")
    rec["autoattack"].pop("seconds_per_attack")
    rec["autoattack"].pop("seconds_saved_by_certify_first")
    for c in rec["certified"].values():
        c.pop("seconds")
    return rec


def _assert_same(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    assert _comparable(a[0]) == _comparable(b[0])
    assert sorted(a[1]) == sorted(b[1])
    for key in a[1]:
        x, y = a[1][key], b[1][key]
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), key


@pytest.fixture(scope="module")
def single(submission, tmp_path_factory):
    out = tmp_path_factory.mktemp("ws1") / "rec.json"
    proc = _torchrun(1, submission, "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _read(out)


def test_world_size_1_record_is_a_full_multi_block_evaluation(single):
    rec, arrays = single
    prov = rec["provenance"]
    assert prov["world_size"] == 1 and prov["backend"] == "gloo" and prov["block_size"] == BATCH
    assert prov["blocks"] == {"clean": 3, "flops": 1, "certify": 3, "autoattack": 3, "diagnostics": 3}
    assert [r["rank"] for r in prov["ranks"]] == [0] and prov["ranks"][0]["blocks"] == 13
    assert rec["stages"] == ["clean", "flops", "certify", "autoattack", "diagnostics"]
    aa = rec["autoattack"]
    # the work is really split: points certified in the blocks are skipped, the others attacked, and
    # more than one attack breaks points (several blocks' attacks go into one accuracy curve)
    assert aa["n_skipped_certified"] > 0 and aa["n_attacked"] > 0
    broken = arrays["autoattack_broken_by"]
    assert len(set(broken[broken >= 0].tolist())) > 1
    assert any("Square" in m for m in aa["checks"])


@pytest.mark.parametrize("world_size", [2, 3])
def test_records_do_not_depend_on_the_world_size(submission, single, tmp_path, world_size):
    out = tmp_path / "rec.json"
    proc = _torchrun(world_size, submission, "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = _read(out)
    _assert_same(single, got)
    prov = got[0]["provenance"]
    assert prov["world_size"] == world_size and prov["backend"] == "gloo"
    assert [r["rank"] for r in prov["ranks"]] == list(range(world_size))
    assert all(r["device"] == "cpu" for r in prov["ranks"])
    assert sum(r["blocks"] for r in prov["ranks"]) == 13  # every block computed once, by someone
    # only rank 0 printed the summary table
    assert proc.stdout.count("record:") == 1


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The supervisor of ``rank`` among torchrun's children (read from their environment)."""
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"harness" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    return None


def _block_files(state: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(state)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in state.glob("*/blocks/*") if ".progress." not in p.name}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's process in /proc")
def test_a_rank_killed_mid_autoattack_is_finished_by_a_rerun(submission, single, tmp_path):
    out = tmp_path / "rec.json"
    proc = _torchrun(2, submission, "--out", out, wait=False)
    state = None
    killed = False
    deadline = time.time() + 240
    try:
        # kill rank 1 while it holds an AutoAttack block that is not finished (after at least one
        # of that block's attacks, when it gets there): that block cannot be finished in this attempt
        while time.time() < deadline and proc.poll() is None:
            claims = list(tmp_path.glob(".state/dist-ibp/*/autoattack/claims/1/*"))
            for claim in claims:
                state = claim.parents[3]
                blocks = state / "autoattack" / "blocks"
                if claim.read_text().startswith("1 ") and not (blocks / f"{claim.name}.json").exists():
                    progress = blocks / f"{claim.name}.progress.json"
                    midway = progress.exists() and json.loads(progress.read_text())["done"]
                    if midway or time.time() - claim.stat().st_mtime > 1.0:
                        pid = _rank_pid(proc.pid, 1)
                        if pid is not None:
                            os.kill(pid, signal.SIGKILL)
                            killed = True
                    break
            if killed:
                break
            time.sleep(0.02)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed, output[-3000:]
    assert proc.returncode != 0
    assert not out.exists() and not out.with_name("rec.examples.npz").exists()
    before = _block_files(state)
    aa_done = {int(p.stem) for p in (state / "autoattack" / "blocks").glob("*.json") if p.stem.isdigit()}
    assert len(aa_done) < 3, "AutoAttack had finished: the kill came too late"

    proc = _torchrun(2, submission, "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = _block_files(state)
    assert all(after[k] == v for k, v in before.items()), "a finished block was computed again"
    # the rerun (attempt 2) claimed exactly the blocks that were missing
    for stage in ("clean", "flops", "certify", "autoattack", "diagnostics"):
        count = 1 if stage == "flops" else 3
        done_before = {k for k in before if k.startswith(f"{stage}/") and k.endswith(".json")}
        claims = {int(p.name) for p in (state / stage / "claims" / "2").glob("*")} \
            if (state / stage / "claims" / "2").exists() else set()
        assert len(claims) == count - len(done_before), (stage, claims, done_before)
    got = _read(out)
    _assert_same(single, got)
    resumed = got[0]["provenance"]["resumed_blocks"]
    assert resumed.get("autoattack", 0) == len(aa_done)


PIXEL = 3 * 28 + 10  # 255 in example 22 alone among the first 32 MNIST test images


def _nan_on_one_image(path: Path) -> None:
    """A linear model times (p - 1) / (p - 1), p one pixel: NaN exactly where that pixel is 255
    (never on the uniform noise the load check uses)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(10, 784)).astype(np.float32), rng.normal(size=10).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "W", "B"], ["z"], transB=1),
         helper.make_node("Gather", ["f", "C"], ["p"], axis=1),
         helper.make_node("Sub", ["p", "One"], ["d"]),
         helper.make_node("Div", ["d", "d"], ["r"]),
         helper.make_node("Mul", ["z", "r"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
         numpy_helper.from_array(np.array([PIXEL], np.int64), "C"),
         numpy_helper.from_array(np.array([1.0], np.float32), "One")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_rank_that_fails_stops_the_job_with_its_one_line_error(tmp_path):
    with np.load(REPO / "harness" / "data" / "mnist_test.npz") as d:
        assert np.nonzero(d["x"][:32].reshape(32, -1)[:, PIXEL] == 255)[0].tolist() == [22]
    folder = tmp_path / "submissions" / "nan-22"
    folder.mkdir(parents=True)
    _nan_on_one_image(folder / "model.onnx")
    spec = {"id": "nan-22", "name": "nan-22", "authors": ["tester"], "license": "MIT", "dataset": "mnist",
            "threat_model": {"norm": "Linf", "eps": 0.3},
            "model": {"format": "onnx", "checkpoint": {"path": "model.onnx",
                                                       "sha256": sha256_file(folder / "model.onnx")}},
            "training": {"method": "standard", "epochs": 1},
            "evaluation": {"n_examples": 32, "batch_size": 8}}
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "results" / "rec.json"
    proc = _torchrun(2, folder / "submission.yaml", "--only", "clean", "--out", out)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [line for line in text.splitlines() if line.startswith("error: rank ")]
    failed = [line for line in errors if "stopped because" not in line]
    assert len(failed) == 1, text[-4000:]
    rank = failed[0].split(":")[1].strip()  # "rank 0" or "rank 1"
    assert failed[0] == f"error: {rank}: model returned NaN logits for example 22 (stage clean)"
    # the other rank stopped on its own, naming the failed rank (unless torchrun stopped it first)
    for line in errors:
        if line != failed[0]:
            assert f"stopped because {rank} failed: model returned NaN logits for example 22" in line, line
    # torchrun's failure summary names that rank as the root cause, with our line (its error file)
    root = text.split("Root Cause")[-1]
    assert re.search(rf"rank +: {rank.split()[1]} \(local_rank", root), root
    assert f"traceback : {failed[0].removeprefix('error: ')}" in root, root
    # torchrun prints its own traceback; none of ours
    assert not [line for line in text.splitlines() if line.lstrip().startswith('File "') and "harness" in line]
    assert not out.exists() and not out.with_name("rec.examples.npz").exists()
