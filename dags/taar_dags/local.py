"""Operators of the ``local`` deploy target (SPEC §10.5): every job a local process, sensors on files."""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.python import PythonSensor

from taar_dags.common import LOCAL_PYTHON, REPO_ROOT, task_args, var

#: Local sensors look at files the demo generated beforehand: a short timeout, not production's 6 h.
LOCAL_SENSOR = {"poke_interval": 5, "timeout": 120, "mode": "poke"}
#: A local run's jobs see the development data set; two hours is generous even for a large demo.
LOCAL_JOB_TIMEOUT = dt.timedelta(hours=2)


def command(argv: list[str], job: str) -> str:
    """A bash command line for ``argv``; templated arguments are shell-quoted after rendering.

    Variable ``taar_local_extra_args`` (JSON ``{job: "flags"}``) appends flags, e.g. a smaller
    ``--min-locale-clients`` for a few-thousand-client demo.
    """
    quoted = " ".join("{% filter shquote %}" + a + "{% endfilter %}" if "{{" in a else shlex.quote(a) for a in argv)
    extra = "{{ var.json.get('taar_local_extra_args', {}).get(" + repr(job) + ", '') }}"
    return f"cd {shlex.quote(str(REPO_ROOT))} && exec {quoted} {extra}"


def spark_job(task_id: str, script: str, args: list[str], env: dict | None = None) -> BashOperator:
    """A PySpark driver run as a local process in Spark local mode."""
    argv = [LOCAL_PYTHON, f"jobs/{script}.py", *args, "--spark-master", var("taar_spark_master", "local[2]")]
    return BashOperator(
        task_id=task_id, bash_command=command(argv, task_id),
        env={"SPARK_LOCAL_IP": "127.0.0.1", **(env or {})}, append_env=True,
        **task_args("spark", execution_timeout=LOCAL_JOB_TIMEOUT),
    )


def container_job(task_id: str, module: str, args: list[str], **kwargs) -> BashOperator:
    """A container job (``python -m taar_etl.<module>``) run as a local process."""
    return BashOperator(
        task_id=task_id, bash_command=command([LOCAL_PYTHON, "-m", f"taar_etl.{module}", *args], task_id),
        append_env=True, **task_args("container", execution_timeout=LOCAL_JOB_TIMEOUT), **kwargs,
    )


def _local_path(root: str) -> Path:
    path = Path(root)
    return path if path.is_absolute() else REPO_ROOT / path


def partition_exists(source: str, table: str, date: str) -> bool:
    """True when the local Parquet partition of ``table`` for ``date`` holds a file."""
    part = _local_path(source) / table / f"submission_date={date}"
    return part.is_dir() and any(p.suffix == ".parquet" for p in part.iterdir())


def dated_objects_exist(model_store: str, objects: list) -> bool:
    """True when every ``[object, date]`` pair has its dated copy in a local model store."""
    root = _local_path(model_store)
    return all((root / f"{base}.{date.replace('-', '')}.bz2").is_file() for base, date in objects)


def partition_sensor(task_id: str, table: str, date: str) -> PythonSensor:
    return PythonSensor(
        task_id=task_id, python_callable=partition_exists,
        op_kwargs={"source": var("taar_source", "./var/telemetry"), "table": table, "date": date},
        **LOCAL_SENSOR, **task_args("sensor"),
    )


def models_sensor(task_id: str, objects: dict[str, tuple[str, str]]) -> PythonSensor:
    """Waits for ``objects`` (``{key: (object, date template)}``), all in one task."""
    return PythonSensor(
        task_id=task_id, python_callable=dated_objects_exist,
        op_kwargs={"model_store": var("taar_model_store", "./var/models"),
                   "objects": [[base, date] for base, date in objects.values()]},
        **LOCAL_SENSOR, **task_args("sensor"),
    )
