"""The submission schema accepts valid submissions and names the exact field in error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.spec import base_spec

from harness.cli import main
from harness.core.errors import HarnessError
from harness.submission.load import load_submission, parse_submission
from harness.submission.schema import Submission, parse_eps


def problems_of(tmp_path, spec) -> list[str]:
    folder = tmp_path / "submissions" / spec.get("id", "x")
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "submission.yaml"
    p.write_text(yaml.safe_dump(spec))
    sub, problems = parse_submission(p)
    return [str(x) for x in problems]


def test_committed_submissions_are_valid(repo, capsys):
    paths = sorted(str(p) for p in (repo / "submissions").glob("*/submission.yaml"))
    assert sorted(Path(p).parent.name for p in paths) == ["cifar10-autoattack-resnet18", "mnist-fgsm", "mnist-fgsm-co",
                                                          "mnist-ibp", "mnist-pgd", "mnist-standard"]
    assert main(["validate", *paths]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok") == len(paths)


def test_valid_spec_roundtrip():
    s = Submission.model_validate(base_spec("a-b", "0" * 64, threat_model={"norm": "Linf", "eps": "8/255"}))
    assert s.threat_model.eps == pytest.approx(8 / 255)
    assert s.evaluation.autoattack_version == "standard"
    assert s.model.forward_passes == 1


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s["threat_model"].update(eps=-0.1), "threat_model.eps"),
    (lambda s: s["threat_model"].update(norm="L1"), "threat_model.norm"),
    (lambda s: s["threat_model"].update(eps="eight"), "threat_model.eps"),
    (lambda s: s["model"]["checkpoint"].update(sha256="abc"), "model.checkpoint.sha256"),
    (lambda s: s["model"]["checkpoint"].update(path="../outside.pt"), "model.checkpoint.path"),
    (lambda s: s["model"].update(forward_passes=0), "model.forward_passes"),
    (lambda s: s["model"].pop("architecture"), "model.architecture"),
    (lambda s: s["model"].update(preprocesing={"mean": [0]}), "model.preprocesing"),
    (lambda s: s.update(dataset="svhn"), "dataset"),
    (lambda s: s.update(dataset="custom"), "dataset_path"),
    (lambda s: s.update(authors=[]), "authors"),
    (lambda s: s.update(id="Bad Id!"), "id"),
    (lambda s: s["training"].update(method="pgd", attack_steps=0), "training.attack_steps"),
    (lambda s: s["model"].update(preprocessing={"mean": [0, 0], "std": [1]}), "model.preprocessing.mean"),
    (lambda s: s["evaluation"].update(n_examples="many"), "evaluation.n_examples"),
    (lambda s: s["evaluation"].update(certify=["ibp", "magic"]), "evaluation.certify[1]"),
])
def test_invalid_specs_name_the_field(tmp_path, mutate, field):
    spec = base_spec("x", "0" * 64)
    mutate(spec)
    problems = problems_of(tmp_path, spec)
    assert problems, "an invalid submission was accepted"
    assert any(p.split(": ", 1)[0] == field for p in problems), problems


def test_parse_eps():
    assert parse_eps("8/255") == pytest.approx(0.031372549)
    assert parse_eps(0.3) == 0.3
    with pytest.raises(ValueError):
        parse_eps("1/0")


def test_validate_cli_prints_each_problem_with_field(tmp_path, capsys):
    spec = base_spec("x", "0" * 64)
    spec["threat_model"]["eps"] = -1
    spec["model"]["checkpoint"]["sha256"] = "nothex"
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec))
    assert main(["validate", str(folder)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    fields = {line.split(": ")[1] for line in lines}
    assert {"threat_model.eps", "model.checkpoint.sha256"} <= fields


def test_validate_checks_files_and_folder_name(make_submission, capsys):
    path = make_submission("good-one")
    assert main(["validate", str(path)]) == 0
    spec = yaml.safe_load(path.read_text())
    spec["id"] = "other-name"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 1
    assert "id: must equal the folder name" in capsys.readouterr().out


def test_malformed_yaml_is_one_line_error(tmp_path, capsys):
    p = tmp_path / "submission.yaml"
    p.write_text("id: [unclosed\nname: x\n")
    with pytest.raises(HarnessError) as e:
        load_submission(p)
    assert "malformed YAML at line" in str(e.value)
    assert "\n" not in str(e.value)
    assert main(["eval", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_schema_command_prints_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Submission"
    assert {"id", "dataset", "threat_model", "model", "training"} <= set(schema["required"])
