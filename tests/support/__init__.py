"""What the tests share: helpers, constants, test servers and receivers, imported as `support.<module>`.

pytest puts tests/ on sys.path (tests/conftest.py is in a directory without __init__.py), for the
unit tests under tests/unit as for the kernel tests. No test module imports another; the fixtures
are in tests/conftest.py. Importing a module here needs no privilege and loads nothing into the
kernel; bench/ imports ports.py and opensearch_cluster.py too (with tests/ on its sys.path).
"""
