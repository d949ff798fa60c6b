"""Installs the peers' software from the package registries, without prompts and idempotently.

Everything goes into `bench-results/peers/` (git-ignored like the rest of `bench-results/`; not in
`.services/`, which `scripts/services down` deletes), or FLEETFLOW_BENCH_PEERS_DIR:

- `node-red/`: an npm prefix with `node-red@4` and `pg`. It is also Node-RED's user directory,
  so that `pg` is one of the directory's `package.json` dependencies, which is where Node-RED's
  function external modules (`functionExternalModules`, a function node's `libs`) load from;
  Node-RED itself is never asked to install anything.
- `venv/`: a Python venv with paho-mqtt (the version the GXP worker pinned) and psycopg2-binary.
"""
import json
import os
import subprocess
import sys

PAHO = "paho-mqtt==2.1.0"
PSYCOPG = "psycopg2-binary==2.9.*"
NODE_RED = "node-red@4"
PG = "pg@8"


def _log(*a):
    print("[bench peers]", *a, file=sys.stderr, flush=True)


def _version(package_json):
    try:
        with open(package_json) as f:
            return json.load(f).get("version", "")
    except (OSError, ValueError):
        return ""


def node_red(root):
    """Returns (Node-RED's directory, its version); installs `node-red@4` and `pg` there with npm
    unless both are already present."""
    prefix = os.path.join(root, "node-red")
    modules = os.path.join(prefix, "node_modules")
    nr = _version(os.path.join(modules, "node-red", "package.json"))
    pg = _version(os.path.join(modules, "pg", "package.json"))
    if not (nr.startswith("4.") and pg.startswith("8.")):
        _log(f"installing {NODE_RED} and {PG} into {prefix} (npm)")
        os.makedirs(prefix, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", prefix, "--no-audit", "--no-fund", "--no-update-notifier",
                        "--loglevel=error", NODE_RED, PG], check=True, stdin=subprocess.DEVNULL)
        nr = _version(os.path.join(modules, "node-red", "package.json"))
        if not nr.startswith("4."):
            raise SystemExit(f"Node-RED 4 is not in {modules} after npm install")
    return prefix, nr


def venv(root):
    """Returns the path of the venv's python; creates the venv and installs paho-mqtt and
    psycopg2-binary with pip unless they import already."""
    path = os.path.join(root, "venv")
    python = os.path.join(path, "bin", "python")
    check = [python, "-c", "import paho.mqtt, psycopg2; assert paho.mqtt.__version__ == '2.1.0'"]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    _log(f"installing {PAHO} and {PSYCOPG} into {path} (pip)")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                    PAHO, PSYCOPG], check=True, stdin=subprocess.DEVNULL)
    subprocess.run(check, check=True)
    return python


def all_peers(root):
    """Installs both; returns {"node_red_dir", "node_red_version", "python"}."""
    os.makedirs(root, exist_ok=True)
    nr_dir, nr_version = node_red(root)
    return {"node_red_dir": nr_dir, "node_red_version": nr_version, "python": venv(root)}
