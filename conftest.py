"""Root pytest configuration: the old module paths kept for one release are aliases of the new
modules (their doctests run there), so they are not collected twice."""

collect_ignore = [f"curriculum/{name}.py" for name in
                  ("loader", "stream", "curation", "global_mining", "neighbourhood", "contrastive", "data", "knn",
                   "knn_exact")]
collect_ignore += ["curriculum/cli/__main__.py"]
# the framework scripts run as subprocesses (under torchrun) from tests/test_integrations.py
collect_ignore_glob = ["tests/frameworks/*"]
