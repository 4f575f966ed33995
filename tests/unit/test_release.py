"""Release files: Dockerfiles lint clean and say what SPEC §11 asks; CircleCI config is consistent."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.release import ROOT, build_args, dockerfile, instruction, version_json_command

pytestmark = pytest.mark.unit

HADOLINT = Path(sys.executable).with_name("hadolint")


@pytest.mark.parametrize("name", ["Dockerfile.web", "Dockerfile.etl"])
def test_hadolint_has_no_warning_or_error(name):
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "warning", "--no-color", name],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name, extra", [("Dockerfile.web", "web"), ("Dockerfile.etl", "etl")])
def test_images_are_slim_non_root_and_install_one_extra(name, extra):
    text = dockerfile(name)
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "--uid 10001" in text and re.search(r"^USER 10001", text, re.M)
    assert f"pip install -c constraints.txt '.[{extra}]'" in text
    assert "openjdk" not in text.lower()


def test_web_image_runs_gunicorn_with_the_project_config():
    assert instruction("Dockerfile.web", "CMD") == ["gunicorn", "-c", "python:taar_web.gunicorn_conf",
                                                    "taar_web.wsgi:app"]
    text = dockerfile("Dockerfile.web")
    assert "EXPOSE 8000" in text and "__lbheartbeat__" in text.split("HEALTHCHECK", 1)[1]
    assert re.search(r"PORT=8000 \\\s+WORKERS=4 \\\s+THREADS=8", text)


def test_etl_image_entrypoint():
    assert instruction("Dockerfile.etl", "ENTRYPOINT") == ["python", "-m"]
    assert instruction("Dockerfile.etl", "CMD") == ["taar_etl"]


@pytest.mark.parametrize("name", ["Dockerfile.web", "Dockerfile.etl"])
def test_version_json_written_at_build_has_the_spec_format(name, tmp_path):
    target = tmp_path / "version.json"
    env = {**os.environ, "SOURCE": "https://example.invalid/taar", "VERSION": "v1.2.3", "COMMIT": "abc123",
           "BUILD": "https://ci.invalid/42"}
    subprocess.run(["bash", "-c", version_json_command(name, target)], env=env, check=True)
    assert json.loads(target.read_text()) == {"source": "https://example.invalid/taar", "version": "v1.2.3",
                                              "commit": "abc123", "build": "https://ci.invalid/42"}
    assert build_args(name) == ["SOURCE", "VERSION", "COMMIT", "BUILD"]


# --------------------------------------------------------------------------- CircleCI


@pytest.fixture(scope="module")
def circleci():
    return yaml.safe_load((ROOT / ".circleci" / "config.yml").read_text())


def _workflow_jobs(workflow):
    for entry in workflow["jobs"]:
        if isinstance(entry, str):
            yield entry, entry, {}
        else:
            ((job, params),) = entry.items()
            params = params or {}
            yield params.get("name", job), job, params


def test_every_workflow_job_is_defined_and_requires_existing_names(circleci):
    defined = set(circleci["jobs"])
    for workflow in circleci["workflows"].values():
        names = {name for name, _, _ in _workflow_jobs(workflow)}
        for name, job, params in _workflow_jobs(workflow):
            assert job in defined or params.get("type") == "approval", job
            assert set(params.get("requires", [])) <= names, (name, params.get("requires"))


def test_tests_run_on_every_push(circleci):
    main = circleci["workflows"]["test-and-publish-main"]
    test = next(p for name, job, p in _workflow_jobs(main) if job == "test")
    assert "filters" not in test  # no branch filter: every push
    steps = json.dumps(circleci["jobs"]["test"]["steps"])
    assert "make test" in steps


def test_main_syncs_jobs_and_builds_without_pushing(circleci):
    main = {name: (job, p) for name, job, p in _workflow_jobs(circleci["workflows"]["test-and-publish-main"])}
    for name in ("sync-jobs-main", "build-images-main"):
        assert main[name][1]["filters"] == {"branches": {"only": "main"}}
        assert main[name][1]["requires"] == ["test"]
    assert main["build-images-main"][1]["push"] is False
    assert main["sync-jobs-main"][1]["ref"] == "main"
    assert "jobs/*.py" in json.dumps(circleci["jobs"]["sync-jobs"]["steps"])


def test_tag_workflow_is_tag_only_and_gates_production(circleci):
    release = {name: (job, p) for name, job, p in _workflow_jobs(circleci["workflows"]["release"])}
    for name, (_, params) in release.items():
        assert params["filters"] == {"tags": {"only": "/^v.*/"}, "branches": {"ignore": "/.*/"}}, name
    assert release["push-images"][1]["push"] is True
    assert release["promote-to-prod"][1]["type"] == "approval"
    assert release["deploy-prod"][1]["requires"] == ["promote-to-prod"]
    assert release["sync-dags"][1]["requires"] == ["promote-to-prod"]
    assert "promote-to-prod" not in release["deploy-stage"][1]["requires"]


def test_secrets_come_only_from_contexts(circleci):
    text = (ROOT / ".circleci" / "config.yml").read_text()
    assert not re.search(r"(?i)(private_key|BEGIN [A-Z ]*KEY|password:)", text)
    for workflow in circleci["workflows"].values():
        for name, job, params in _workflow_jobs(workflow):
            steps = json.dumps(circleci["jobs"].get(job, {}).get("steps", []))
            if "gcloud-auth" in steps or "DOCKER_REGISTRY_KEY" in steps and params.get("push"):
                assert params.get("context"), f"{name} uses credentials without a context"
