"""Canary rollouts: the plan, the analysis, the local controller and the Argo Rollouts driver.

Import from the submodules (``freshrec.rollout.plan``, ``.analysis``, ``.controller``, ``.k8s``); this
package imports nothing itself so that ``freshrec --help`` stays fast.
"""
