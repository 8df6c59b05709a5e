"""KFP pipelines: pure factories (``<name>/pipeline.py``) and their compiled YAML (``<name>/<name>.yaml``).

- ``freshrec pipeline run --local [--pipeline NAME]``: kfp.local (SubprocessRunner, this environment);
  artifacts under ``<workdir>/kfp/<run>/<task>/`` (:func:`freshrec.pipelines.local.run_local` in code).
- ``freshrec pipeline compile`` (``make compile``): rewrites the checked-in YAML from the settings
  (``pipeline.image``; ``pipeline.gpu_*`` puts the train step on a GPU node; ``pipeline.pvc_name`` mounts
  the shared state volume). A test keeps the YAML equal to the code.
- ``freshrec pipeline submit --host URL [--recurring CRON] [--token|--token-env] [--namespace]``:
  ``kfp.Client`` run or recurring run (:mod:`freshrec.pipelines.submit`).
"""
