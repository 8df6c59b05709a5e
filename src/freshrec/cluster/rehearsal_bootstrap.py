"""Day 0 of a rehearsal: model version 1, as ``freshrec train --publish`` makes it.

``python -m freshrec.cluster.rehearsal_bootstrap train FOLDER`` (on this machine, once) trains one epoch on
the synthetic dataset the rehearsed pipeline ingests (same generator, same seed: the same users, items and
feature layout) and copies the published stable version to ``FOLDER/v1`` and its drift reference (the
training frame ``run_training`` keeps for every published version) to ``FOLDER/v1.reference.parquet``.

``python -m freshrec.cluster.rehearsal_bootstrap publish SRC WORKDIR`` runs *in the cluster*, in a pod
shaped like the compiled pipeline's push task (its image, namespace and platform mounts): it publishes SRC
into the model repository of ``WORKDIR`` as version 1 labelled stable, with its drift reference as the stable
one (as ``freshrec train --publish`` and the pipeline's push + rollout steps leave it), with the repository's
own code. So day 0 writes where the pipeline writes, TF Serving comes up only if it reads there too, and the
drift CronJob finds a reference even when the canary of the pipeline's v2 is aborted.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def publish(src: str, workdir: str) -> int:
    from freshrec.config import load_settings
    from freshrec.model.references import ReferenceStore
    from freshrec.model.repository import ModelRepository

    settings = load_settings(workdir=Path(workdir))
    repo = ModelRepository(settings.models_dir, settings.model.name)
    references = ReferenceStore(settings.references_dir, settings.model.name)
    version = repo.stable()
    if version is None:
        version = repo.publish(Path(src), {"source": "day 0 (rehearsal)"})
        references.write(version, _reference(Path(src)))
    repo.set_label("stable", version)
    reference = references.promote(version)
    print(f"day-0 model: version {version} labelled stable in {repo.root}; drift reference {reference}")
    return 0 if reference else 1


def _reference(model: Path) -> Path:
    return model.with_name(model.name + ".reference.parquet")


def train(folder: str) -> int:
    from freshrec.config import load_settings
    from freshrec.data.synthetic import generate
    from freshrec.model.references import ReferenceStore
    from freshrec.model.repository import ModelRepository
    from freshrec.training import run_training

    out = Path(folder)
    settings = load_settings(workdir=out / "work", training={"epochs": 1}, data={"dataset": "synthetic"})
    run = run_training(settings, data=generate(), publish=True)
    repo = ModelRepository(settings.models_dir, settings.model.name)
    version = repo.stable() or run.version
    if version is None:
        print(f"day-0 training published nothing: {run}", file=sys.stderr)
        return 1
    target = out / "v1"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(repo.path(version), target)
    frame = ReferenceStore(settings.references_dir, settings.model.name).path(version)
    if not frame.is_file():
        print(f"day-0 training kept no drift reference for v{version} ({frame})", file=sys.stderr)
        return 1
    shutil.copyfile(frame, _reference(target))
    print(f"day-0 model: version {version} -> {target} (+ drift reference)")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "publish":
        sys.exit(publish(sys.argv[2], sys.argv[3]))
    sys.exit(train(sys.argv[2]))
