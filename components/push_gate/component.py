"""Push gate: one boolean for ``dsl.If`` from the blessing and the data-quality verdicts."""

from kfp import dsl
from kfp.dsl import Markdown, Output
from kfp.dsl.python_component import PythonComponent


def push_gate(blessed: bool, data_ok: bool, verdict: str, decision: Output[Markdown]) -> bool:
    """Allow the push only when the model is blessed and the data passed its quality checks.

    A single gate task (instead of nested ``dsl.If``) keeps the condition in one place and works the same
    in kfp.local and on Kubeflow.

    Args:
        blessed: the evaluate step's blessing.
        data_ok: the data-quality step's verdict (no quality failure, enough rows).
        verdict: the data-quality verdict, for the record.
        decision: Markdown saying why the push goes ahead or not.
    """
    allowed = bool(blessed) and bool(data_ok)
    reasons = []
    if not blessed:
        reasons.append("the candidate is not blessed (see the evaluation report)")
    if not data_ok:
        reasons.append(f"the data-quality verdict is {verdict!r}")
    with open(decision.path, "w") as f:
        f.write("# Push gate\n\n" + ("push: yes\n" if allowed else "push: no, " + "; ".join(reasons) + "\n"))
    return allowed


def component(image: str) -> PythonComponent:
    """The KFP component running :func:`push_gate` in ``image``."""
    return dsl.component(push_gate, base_image=image, install_kfp_package=False)
