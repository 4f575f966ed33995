"""Release files (SPEC §11): images, build context, CI/CD and RELEASING.md checked by what they do.

The images cannot be built here (no Docker daemon), so the Dockerfile is replayed:
its COPY instructions against the real build context (.dockerignore applied), its
``pip install`` commands recorded with the files present at that moment, and the
packages ``pip install .`` would install computed by running ``setup.py`` on the
copied tree. tests/e2e/test_image_smoke.py runs the same replay with real installs.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.release import (
    ROOT,
    build_args,
    build_context,
    dockerfile,
    in_build_context,
    instruction,
    instructions,
    replay_build,
    version_json_command,
)

pytestmark = pytest.mark.unit

HADOLINT = Path(sys.executable).with_name("hadolint")
IMAGES = {"Dockerfile.web": "taar_web", "Dockerfile.etl": "taar_etl"}


@pytest.mark.parametrize("name", ["Dockerfile.web", "Dockerfile.etl"])
def test_hadolint_has_no_warning_or_error(name):
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "warning", "--no-color", name],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- build context


def test_build_context_holds_only_what_the_images_copy():
    context = build_context()
    tops = {p.split("/")[0] for p in context}
    assert tops == {"constraints.txt", "setup.py", "README.md", "requirements", "taar", "taar_etl", "taar_web"}
    assert "taar_web/openapi.json" in context and "taar/__init__.py" in context
    for path in ("taar_dev/demo.py", "tests/conftest.py", "dags/taar_daily.py", "jobs/taar_locale.py",
                 ".git/HEAD", ".venv/bin/python", "var/models/x", "taar/__pycache__/x.pyc", "Dockerfile.web"):
        assert not in_build_context(path), path


# --------------------------------------------------------------------------- image builds, replayed


def _setup_packages(tree: Path) -> set[str]:
    """The packages ``pip install .`` installs from ``tree`` (setup.py run there, setup() captured)."""
    code = ("import json, runpy, sys, setuptools; out = {}; setuptools.setup = lambda **k: out.update(k); "
            "sys.argv = ['setup.py']; runpy.run_path('setup.py'); print(json.dumps(sorted(out['packages'])))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout))


def _requirement_names(tree: Path, command: str) -> set[str]:
    """Distribution names a ``pip install -r ...`` command asks for (``-r`` includes followed)."""
    names = set()

    def read(path: Path):
        for raw in path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if line.startswith("-r "):
                read(path.parent / line[3:].strip())
            elif line:
                names.add(re.split(r"[<>=\[ ;]", line, maxsplit=1)[0].lower())

    args = shlex.split(command)
    for i, arg in enumerate(args):
        if arg == "-r":
            read(tree / args[i + 1])
    return names


@pytest.fixture(params=sorted(IMAGES))
def replayed(request, tmp_path):
    commands = []
    runs = replay_build(request.param, tmp_path, lambda command, cwd: commands.append(command))
    return request.param, tmp_path, runs


def test_dependencies_install_from_constraints_before_any_code(replayed):
    name, tree, runs = replayed
    (first_index, deps, present), (second_index, code, _) = runs  # exactly two installs, in this order
    assert "-c constraints.txt" in deps and "-r requirements/base.txt" in deps
    # nothing of ours is in the image when the dependencies install: a code change reuses that layer
    assert not [p for p in present if p.endswith(".py")], present
    assert set(present) >= {"constraints.txt", "requirements/base.txt"}
    # the code install adds only our packages, with the constraints, and no dependency resolution
    assert re.search(r"pip install --no-deps -c constraints\.txt \.$", code)
    copies_of_code = [i for i, (kw, args) in enumerate(instructions(name)) if kw == "COPY" and "taar" in args]
    assert copies_of_code and min(copies_of_code) > first_index and max(copies_of_code) < second_index


def test_each_image_installs_only_its_own_packages(replayed):
    name, tree, _ = replayed
    service = IMAGES[name]
    packages = _setup_packages(tree)
    tops = {p.split(".")[0] for p in packages}
    assert tops == {"taar", service}
    assert "taar_dev" not in tops and not (tree / "taar_dev").exists()


def test_web_image_install_does_not_include_taar_etl_or_its_dependencies(tmp_path):
    runs = replay_build("Dockerfile.web", tmp_path, lambda *a: None)
    wanted = _requirement_names(tmp_path, runs[0][1])
    assert {"flask", "gunicorn", "numpy", "google-cloud-bigtable"} <= wanted
    assert not wanted & {"pyarrow", "pandas", "google-cloud-bigquery", "matplotlib", "pyspark"}
    assert not (tmp_path / "taar_etl").exists()
    assert "taar_etl" not in {p.split(".")[0] for p in _setup_packages(tmp_path)}


def test_etl_image_install_carries_no_development_tools(tmp_path):
    runs = replay_build("Dockerfile.etl", tmp_path, lambda *a: None)
    wanted = _requirement_names(tmp_path, runs[0][1])
    assert {"pyarrow", "google-cloud-bigquery", "requests"} <= wanted
    # no test tools, no Spark, no Airflow
    assert not wanted & {"pytest", "hypothesis", "ruff", "pyspark", "apache-airflow", "gcp-storage-emulator"}
    assert not (tmp_path / "taar_dev").exists() and not (tmp_path / "taar_web").exists()


def test_images_are_slim_and_non_root():
    for name in IMAGES:
        steps = instructions(name)
        assert steps[0][0] == "FROM" and steps[0][1].startswith("python:3.11-slim")
        assert ("USER", "10001:10001") in steps
        assert "--uid 10001" in dockerfile(name) and "openjdk" not in dockerfile(name).lower()


def test_etl_image_runs_the_job_under_tini():
    entry = instruction("Dockerfile.etl", "ENTRYPOINT")
    assert entry == ["tini", "--", "python", "-m"] and instruction("Dockerfile.etl", "CMD") == ["taar_etl"]
    steps = instructions("Dockerfile.etl")
    install = next(i for i, (kw, args) in enumerate(steps) if kw == "RUN" and "apt-get install" in args)
    assert re.search(r"\btini=\S+", steps[install][1])  # pinned
    assert install < steps.index(("USER", "10001:10001"))


def test_web_image_runs_gunicorn_with_the_project_config():
    assert instruction("Dockerfile.web", "CMD") == ["gunicorn", "-c", "python:taar_web.gunicorn_conf",
                                                    "taar_web.wsgi:app"]
    text = dockerfile("Dockerfile.web")
    assert "EXPOSE 8000" in text and "__lbheartbeat__" in text.split("HEALTHCHECK", 1)[1]
    assert re.search(r"PORT=8000 \\\s+WORKERS=4 \\\s+THREADS=8", text)


@pytest.mark.parametrize("name", ["Dockerfile.web", "Dockerfile.etl"])
def test_version_json_written_at_build_has_the_spec_format(name, tmp_path):
    target = tmp_path / "version.json"
    env = {**os.environ, "SOURCE": "https://example.invalid/taar", "VERSION": "v1.2.3", "COMMIT": "abc123",
           "BUILD": "https://ci.invalid/42"}
    subprocess.run(["bash", "-c", version_json_command(name, target)], env=env, check=True)
    assert json.loads(target.read_text()) == {"source": "https://example.invalid/taar", "version": "v1.2.3",
                                              "commit": "abc123", "build": "https://ci.invalid/42"}
    assert build_args(name) == ["SOURCE", "VERSION", "COMMIT", "BUILD"]


def test_setup_extras_come_from_the_requirement_files_the_images_install():
    code = ("import json, runpy, sys, setuptools; out = {}; setuptools.setup = lambda **k: out.update(k); "
            "sys.argv = ['setup.py']; runpy.run_path('setup.py'); print(json.dumps(out['extras_require']))")
    extras = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                       check=True).stdout)
    assert set(extras) == {"web", "etl", "spark", "dataproc", "airflow", "dev"}
    assert "google-cloud-storage>=2.14" in extras["web"] and "google-cloud-storage>=2.14" in extras["etl"]
    assert set(extras["dev"]) >= set(extras["etl"]) | set(extras["airflow"]) | {"pytest>=8"}


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


def _commands(circleci, job, params=None):
    """Shell lines the job runs with workflow ``params`` (its commands' steps and the ``when`` steps whose
    parameter is true included), continuation lines joined."""
    defaults = {k: v.get("default") for k, v in circleci["jobs"][job].get("parameters", {}).items()}
    values = {**defaults, **(params or {})}
    lines = []
    for step in circleci["jobs"][job]["steps"]:
        if isinstance(step, str) and step in circleci.get("commands", {}):
            steps = circleci["commands"][step]["steps"]
        elif isinstance(step, dict) and "when" in step:
            condition = re.fullmatch(r"<< parameters\.(\w+) >>", step["when"]["condition"]).group(1)
            steps = step["when"]["steps"] if values.get(condition) else []
        else:
            steps = [step]
        for inner in steps:
            if isinstance(inner, dict) and "run" in inner:
                run = inner["run"]
                text = run if isinstance(run, str) else run["command"]
                lines += [" ".join(line.split()) for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def test_every_workflow_job_is_defined_and_requires_existing_names(circleci):
    defined = set(circleci["jobs"])
    for workflow in circleci["workflows"].values():
        names = {name for name, _, _ in _workflow_jobs(workflow)}
        for name, job, params in _workflow_jobs(workflow):
            assert job in defined or params.get("type") == "approval", job
            assert set(params.get("requires", [])) <= names, (name, params.get("requires"))


def test_tests_run_on_every_push(circleci):
    main = circleci["workflows"]["test-and-build-main"]
    test = next(p for name, job, p in _workflow_jobs(main) if job == "test")
    assert "filters" not in test  # no branch filter: every push
    assert "make test" in _commands(circleci, "test")


def test_main_builds_but_uploads_and_pushes_nothing(circleci):
    main = {name: (job, p) for name, job, p in _workflow_jobs(circleci["workflows"]["test-and-build-main"])}
    assert {job for job, _ in main.values()} == {"test", "package", "build-images"}
    assert main["build-images-main"][1]["push"] is False
    for job, params in main.values():
        assert not [c for c in _commands(circleci, job, params) if "gcloud storage" in c or "docker push" in c]
    release = {name: (job, p) for name, job, p in _workflow_jobs(circleci["workflows"]["release"])}
    assert any("docker push" in c for c in _commands(circleci, "build-images", release["push-images"][1]))


def test_tag_workflow_is_tag_only_and_orders_the_release(circleci):
    release = {name: (job, p) for name, job, p in _workflow_jobs(circleci["workflows"]["release"])}
    for name, (_, params) in release.items():
        assert params["filters"] == {"tags": {"only": "/^v.*/"}, "branches": {"ignore": "/.*/"}}, name
    assert release["push-images"][1]["push"] is True
    assert release["promote-to-prod"][1]["type"] == "approval"
    assert release["deploy-prod"][1]["requires"] == ["promote-to-prod"]
    assert "promote-to-prod" not in release["deploy-stage"][1]["requires"]
    # the DAGs go out last: after the approval and after the job files and image they name exist
    assert set(release["sync-dags"][1]["requires"]) == {"promote-to-prod", "push-images", "upload-release"}


def test_check_version_compares_the_tag_with_the_code_and_the_dags(circleci, tmp_path):
    script = "\n".join(_commands(circleci, "check-version"))
    import taar

    def run(tag, cwd=ROOT):
        return subprocess.run(["bash", "-ec", script], cwd=cwd, env={**os.environ, "CIRCLE_TAG": tag},
                              capture_output=True, text=True)

    assert run(f"v{taar.__version__}").returncode == 0
    assert run("v999.0.0").returncode != 0
    # a DAG package of another release is refused even when the tag matches the code
    fake = tmp_path / "repo"
    (fake / "taar").mkdir(parents=True)
    (fake / "dags" / "taar_dags").mkdir(parents=True)
    (fake / "taar" / "__init__.py").write_text(f'__version__ = "{taar.__version__}"\n')
    (fake / "dags" / "taar_dags" / "__init__.py").write_text('VERSION = "0.0.1"\n')
    refused = run(f"v{taar.__version__}", cwd=fake)
    assert refused.returncode != 0 and "dags/taar_dags VERSION" in refused.stdout


def test_no_long_lived_keys_and_no_gsutil(circleci):
    text = (ROOT / ".circleci" / "config.yml").read_text()
    assert not re.search(r"(?i)(private_key|BEGIN [A-Z ]*KEY|password:|_json_key|activate-service-account|"
                         r"SERVICE_KEY|key-file)", text)
    assert "gsutil" not in text
    assert "gcloud auth login --cred-file" in "\n".join(_commands(circleci, "deploy-web"))
    for workflow in circleci["workflows"].values():
        for name, job, params in _workflow_jobs(workflow):
            commands = "\n".join(_commands(circleci, job, params)) if job in circleci["jobs"] else ""
            if "wif_credentials" in commands:
                assert params.get("context"), f"{name} authenticates without a context (no OIDC token)"


def test_oidc_credential_config_is_an_external_account_the_google_libraries_read(tmp_path):
    import google.auth
    from google.auth import external_account

    env = {"HOME": str(tmp_path), "CIRCLE_OIDC_TOKEN_V2": "header.payload.signature",
           "GCP_WIF_PROVIDER": "projects/123/locations/global/workloadIdentityPools/ci/providers/circleci",
           "GCP_SERVICE_ACCOUNT": "taar-deploy@proj.iam.gserviceaccount.com"}
    result = subprocess.run([sys.executable, "deploy/wif_credentials.py", "config"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    credentials, _ = google.auth.load_credentials_from_file(str(path))  # parses; no network until refresh
    assert isinstance(credentials, external_account.Credentials)
    assert credentials.service_account_email == "taar-deploy@proj.iam.gserviceaccount.com"
    assert Path(json.loads(path.read_text())["credential_source"]["file"]).read_text() == "header.payload.signature"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    missing = subprocess.run([sys.executable, "deploy/wif_credentials.py", "config"], cwd=ROOT,
                             env={**env, "CIRCLE_OIDC_TOKEN_V2": ""}, capture_output=True, text=True)
    assert missing.returncode == 2 and "CIRCLE_OIDC_TOKEN_V2" in missing.stderr


DEPLOY_JOBS = ("upload-release", "deploy-web", "sync-dags")


def _tool_invocations(circleci):
    """``(tool, subcommands, flags)`` of every gcloud/kubectl line the deploy jobs run."""
    found = []
    for job in DEPLOY_JOBS:
        for line in _commands(circleci, job):
            words = shlex.split(line.replace("$(", "").replace(")", ""))
            if not words or words[0] not in ("gcloud", "kubectl"):
                continue
            subs = []
            for word in words[1:]:
                if word.startswith("-") or "$" in word or "/" in word or "=" in word or "." in word:
                    break
                subs.append(word)
            if words[0] == "kubectl" and subs[:0] == [] and words[1] == "-n":  # kubectl -n NS <sub...>
                subs = [w for w in words[3:] if not w.startswith("-") and "/" not in w and "$" not in w][:2]
            flags = {w.split("=", 1)[0] for w in words if w.startswith("--")}
            found.append((words[0], subs, flags))
    return found


def test_deploy_jobs_use_the_pinned_full_cloud_cli_image(circleci):
    image = circleci["executors"]["deploy"]["docker"][0]["image"]
    repo, _, version = image.partition(":")
    assert repo == "gcr.io/google.com/cloudsdktool/google-cloud-cli"
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "pinned to a full-image version (not slim, not latest)"
    # the test job installs the same Cloud CLI version, so the --help checks below test the pinned tools
    installs = " ".join(_commands(circleci, "test"))
    for package in ("google-cloud-cli", "google-cloud-cli-bigtable-emulator", "kubectl",
                    "google-cloud-cli-gke-gcloud-auth-plugin"):
        assert re.search(rf"\b{package}=(1:)?{re.escape(version)}-0\b", installs), package
    for job in DEPLOY_JOBS:
        assert circleci["jobs"][job]["executor"] == "deploy"


def test_every_deploy_command_exists_with_its_flags_in_the_pinned_cli():
    """Each gcloud/kubectl command of the deploy jobs, with ``--help``, on this machine's Cloud CLI of the same
    version as the pinned image (the full image installs gcloud, kubectl and gke-gcloud-auth-plugin)."""
    circleci = yaml.safe_load((ROOT / ".circleci" / "config.yml").read_text())
    version = circleci["executors"]["deploy"]["docker"][0]["image"].rpartition(":")[2]
    local = subprocess.run(["gcloud", "version", "--format=value(\"Google Cloud SDK\")"], capture_output=True,
                           text=True)
    assert local.returncode == 0 and local.stdout.strip() == version, "the local Cloud CLI is the pinned version"
    assert subprocess.run(["gke-gcloud-auth-plugin", "--version"], capture_output=True).returncode == 0
    invocations = _tool_invocations(circleci)
    assert {(tool, " ".join(subs)) for tool, subs, _ in invocations} >= {
        ("gcloud", "auth login"), ("gcloud", "container clusters get-credentials"), ("gcloud", "storage rsync"),
        ("gcloud", "storage cp"), ("kubectl", "set image"), ("kubectl", "rollout status")}
    for tool, subs, flags in invocations:
        result = subprocess.run([tool, *subs, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (tool, subs, result.stderr[-500:])
        for flag in flags:
            assert flag in result.stdout, (tool, subs, flag)


def test_release_uploads_exactly_what_the_dags_use(circleci, monkeypatch):
    """Every release file the gcp DAGs name is uploaded, and nothing else is."""
    from tests.fixtures.dags import load_dagbag, render

    dags = load_dagbag("gcp", monkeypatch).dags
    used = set()
    prefix = "gs://taar-artifacts/taar/v"
    for dag in dags.values():
        for task in dag.tasks:
            job = getattr(task, "job", None)
            if isinstance(job, dict):
                spark = render(dag, job["pyspark_job"])
                used |= {spark["main_python_file_uri"], *spark["python_file_uris"]}
            config = getattr(task, "cluster_config", None)
            if isinstance(config, dict):
                config = render(dag, config)
                used |= {a["executable_file"] for a in config["initialization_actions"]}
                used.add(config["gce_cluster_config"]["metadata"]["taar-wheelhouse"] + "/")
    names = {u.split("/", 5)[5] for u in used if u.startswith(prefix)}
    assert len(names) == len(used)  # every file under the release prefix
    uploaded = {"jobs/" + p.name for p in (ROOT / "jobs").glob("taar_*.py")}
    lines = _commands(circleci, "upload-release")
    assert 'gcloud storage cp jobs/taar_*.py "$DEST/jobs/"' in lines
    assert any("gcloud storage cp dist/taar.zip dist/dataproc-init.sh \"$DEST/\"" in line for line in lines)
    assert any("gcloud storage rsync --recursive dist/wheelhouse \"$DEST/wheelhouse\"" in line for line in lines)
    uploaded |= {"taar.zip", "dataproc-init.sh", "wheelhouse/"}
    jobs_used = {n for n in names if n.startswith("jobs/")}
    item_item = "jobs/taar_item_item.py"  # HOOK(ease15): the job file is merged separately
    assert jobs_used - {item_item} <= uploaded and names - jobs_used == {"taar.zip", "dataproc-init.sh", "wheelhouse/"}
    assert uploaded - names == set()


def test_dataproc_package_holds_the_init_script_and_the_pinned_requirements(circleci):
    lines = _commands(circleci, "package")
    assert any("-c constraints.txt -r requirements/dataproc.txt" in line for line in lines)
    assert any(line.startswith("cp deploy/dataproc-init.sh ") for line in lines)


# --------------------------------------------------------------------------- Dataproc initialisation action


def _init_stubs(tmp_path, role, secret):
    """Stand-ins for the Dataproc metadata reader, gcloud and pip that log their arguments."""
    log = tmp_path / "calls.log"
    metadata = {"taar-wheelhouse": "gs://b/taar/v1/wheelhouse", "dataproc-role": role,
                "taar-locale-noise-key-secret": secret}
    stubs = {
        "metadata": "#!/bin/bash\ncase \"$1\" in\n" + "".join(
            f"  attributes/{k}) {'echo ' + shlex.quote(v) if v else 'exit 1'} ;;\n" for k, v in metadata.items())
        + "  *) exit 1 ;;\nesac\n",
        "gcloud": f"#!/bin/bash\necho \"gcloud $*\" >> {log}\n"
                  "if [ \"$1 $2\" = \"secrets versions\" ]; then printf 's3cr3t key'; fi\n",
        "pip": f"#!/bin/bash\necho \"pip $*\" >> {log}\n",
    }
    for name, text in stubs.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "TAAR_METADATA": str(tmp_path / "metadata"), "TAAR_GCLOUD": str(tmp_path / "gcloud"),
           "TAAR_PIP": str(tmp_path / "pip"), "TAAR_SPARK_ENV": str(tmp_path / "spark-env.sh")}
    return env, log


@pytest.mark.parametrize("role", ["Master", "Worker"])
def test_dataproc_init_installs_offline_and_hands_the_key_to_the_driver_only(tmp_path, role):
    env, log = _init_stubs(tmp_path, role, "projects/p/secrets/noise")
    result = subprocess.run(["bash", str(ROOT / "deploy" / "dataproc-init.sh")], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("gcloud storage cp gs://b/taar/v1/wheelhouse/* ")
    pip = next(c for c in calls if c.startswith("pip "))
    assert "--no-index --find-links" in pip and "constraints.txt" in pip and "requirements.txt" in pip
    assert "s3cr3t" not in result.stdout + result.stderr  # the key is never printed
    spark_env = tmp_path / "spark-env.sh"
    if role == "Master":
        assert "gcloud secrets versions access latest --secret=projects/p/secrets/noise" in calls
        exported = subprocess.run(
            ["bash", "-c", f"source {spark_env}; printf '%s|%s' \"$TAAR_LOCALE_NOISE_KEY\" \"$TAAR_DEPLOY_TARGET\""],
            capture_output=True, text=True).stdout
        assert exported == "s3cr3t key|gcp"
    else:
        assert not spark_env.exists() and not any("secrets" in c for c in calls)


def test_dataproc_init_fails_without_its_wheelhouse(tmp_path):
    env, _ = _init_stubs(tmp_path, "Master", "")
    (tmp_path / "metadata").write_text("#!/bin/bash\nexit 1\n")
    result = subprocess.run(["bash", str(ROOT / "deploy" / "dataproc-init.sh")], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 1 and "taar-wheelhouse" in result.stderr


# --------------------------------------------------------------------------- RELEASING.md names what the DAGs read


class _RecordingVars:
    """``var.value`` / ``var.json`` that record every Variable a template reads."""

    def __init__(self, values, seen):
        self.values, self.seen = values, seen

    def __getattr__(self, name):
        self.seen.add(name)
        return self.values[name]

    def get(self, name, default=None):
        self.seen.add(name)
        return self.values.get(name, default)


def _render_all(dag, template, render, var):
    if isinstance(template, str):
        return render(dag, template, var=var) if "{" in template else template
    if isinstance(template, (list, tuple)):
        return [_render_all(dag, t, render, var) for t in template]
    if isinstance(template, dict):
        return {k: _render_all(dag, v, render, var) for k, v in template.items()}
    return template


def variables_read_by_the_dags(monkeypatch) -> dict[str, set[str]]:
    """Per target, every Airflow Variable the DAGs' templates read (found by rendering every templated field)."""
    from tests.fixtures.dags import JSON_VARIABLES, VARIABLES, load_dagbag, render

    values = {**VARIABLES, "taar_locale_every_days": "1", "taar_allow_missing_days": "0",
              "taar_spark_master": "local[2]", "taar_profile_store": "sqlite:///x",
              "taar_bigtable_table": "taar_profile"}
    found = {}
    for target in ("gcp", "local"):
        seen = set()
        var = {"value": _RecordingVars(values, seen), "json": _RecordingVars(JSON_VARIABLES, seen)}
        for dag in load_dagbag(target, monkeypatch).dags.values():
            for task in dag.tasks:
                for field in task.template_fields:
                    _render_all(dag, getattr(task, field, None), render, var)
        found[target] = seen
    return found


def releasing_settings() -> dict[str, tuple[str, str]]:
    """``name -> (kind, targets)`` from the table of RELEASING.md's "DAG settings" section."""
    text = (ROOT / "RELEASING.md").read_text()
    section = text.split("## DAG settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            for name in re.findall(r"`([^`]+)`", cells[0]):  # a row may name several settings
                rows[name] = (cells[1], cells[2])
    return rows


def test_releasing_names_exactly_the_variables_and_env_the_dags_read(monkeypatch):
    documented = releasing_settings()
    read = variables_read_by_the_dags(monkeypatch)
    variables = {name: targets for name, (kind, targets) in documented.items() if kind == "Variable"}
    assert set(variables) == read["gcp"] | read["local"]
    for name, targets in variables.items():
        on = {t for t in ("gcp", "local") if name in read[t]}
        assert targets == ("both" if on == {"gcp", "local"} else on.pop()), name
    sources = "\n".join(p.read_text() for p in (ROOT / "dags").rglob("*.py"))
    env_read = set(re.findall(r"environ\.get\(\s*[\"'](TAAR_\w+)", sources)) | set(
        re.findall(r"^\w+_ENV = \"(TAAR_\w+)\"", sources, flags=re.M))
    assert {name for name, (kind, _) in documented.items() if kind == "env"} == env_read
    # the release steps use these names
    steps = (ROOT / "RELEASING.md").read_text()
    assert "TAAR_DEPLOY_TARGET=gcp" in steps and "airflow variables import" in steps
