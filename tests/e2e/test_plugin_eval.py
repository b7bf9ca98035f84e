"""A certifier from an installed plug-in package runs through ``harness eval`` on the CLI, in the
sandboxed worker: the package is built and installed (pip, offline, into a folder on PYTHONPATH), its
entry point registers IBP under the name ``toy-ibp``, and the record's certificates for ``toy-ibp``
equal the built-in IBP's on the same run, example by example."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from helpers.plugin_pkg import TOY_CERTIFIER, write_plugin_source
from helpers.spec import REPO


def test_plugin_certifier_through_harness_eval_in_the_worker(tmp_path):
    src = write_plugin_source(tmp_path / "src")
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                          "--no-build-isolation", "--target", str(site), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert any(p.name.endswith(".dist-info") for p in site.iterdir())

    sub = tmp_path / "submissions" / "mnist-ibp"
    shutil.copytree(REPO / "submissions" / "mnist-ibp", sub)
    yaml_path = sub / "submission.yaml"
    text = yaml_path.read_text()
    assert "certify: [ibp, crown-ibp, crown]" in text
    yaml_path.write_text(text.replace("certify: [ibp, crown-ibp, crown]", f"certify: [ibp, {TOY_CERTIFIER}]"))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "TQDM_DISABLE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("ROBUST_FRONTIER_PLUGINS", None)
    # without the plug-in, the name is unknown: a one-line error from validation
    bare = subprocess.run([sys.executable, "-m", "harness", "validate", str(yaml_path)], capture_output=True,
                          text=True, env={**env, "PYTHONPATH": str(REPO)}, timeout=120)
    assert bare.returncode != 0 and TOY_CERTIFIER in bare.stdout + bare.stderr

    out = tmp_path / "rec.json"
    run = subprocess.run([sys.executable, "-m", "harness", "eval", str(yaml_path), "--n-examples", "40",
                          "--only", "clean,certify", "--out", str(out), "--no-progress", "--device", "cpu",
                          "--sandbox", "worker"], capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    rec = json.loads(out.read_text())
    methods = rec["certified"]
    assert set(methods) == {"ibp", TOY_CERTIFIER}
    assert methods[TOY_CERTIFIER]["certified_accuracy"] == methods["ibp"]["certified_accuracy"] > 0
    assert methods[TOY_CERTIFIER]["acr"] == methods["ibp"]["acr"]
    ex = np.load(out.with_suffix(".examples.npz"), allow_pickle=False)
    assert np.array_equal(ex[f"certified_{TOY_CERTIFIER}"], ex["certified_ibp"])
    assert ex["certified_ibp"].sum() > 0
    # the model ran in the confined worker: the record says so
    assert "network" in rec["provenance"]["sandbox"] and "user" in rec["provenance"]["sandbox"]
