import importlib.util
import os

PROBES = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "demo_probes")


def probe_script(name: str):
    """scripts/demo_probes/<name>.py as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(PROBES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
