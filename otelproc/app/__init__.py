"""The app side: runs inside a traced service and links its request spans to its process's span.

It imports nothing of the kernel side or the sidecar (tests/unit/app/test_boundaries.py).
"""

from otelproc.app.links import ProcessResourceDetector, disable, enable, process_link

__all__ = ["ProcessResourceDetector", "disable", "enable", "process_link"]
