"""Code shared by the ``taar_daily`` and ``taar_weekly`` DAG files (SPEC §10).

A package inside the DAG folder: Airflow 3 puts the DAG bundle's folder on
``sys.path`` in every process that parses or runs a DAG, and ``.airflowignore``
keeps the DAG processor from parsing this package as DAG files.

* :mod:`taar_dags.common`: the deploy target, run-time templates, task defaults,
  the failure callback and the watcher.
* :mod:`taar_dags.local` / :mod:`taar_dags.gcp`: the operators of each target.
* :mod:`taar_dags.tasks`: the target-neutral factories the DAG files call.

Nothing from the ``taar`` packages is imported: the DAGs talk to the jobs through
their command lines only.
"""

#: The TAAR release these DAG files belong to (equal to ``taar.__version__``; a test and CI check it).
#: On gcp the DAGs run the job files and the ETL image of exactly this release (SPEC §11.4).
VERSION = "0.1.0"
RELEASE_TAG = f"v{VERSION}"
