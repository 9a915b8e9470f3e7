"""scripts/install.sh refuses a disk too full for the environment, or an
installer it does not know, before it creates anything (CI once ended pip
half-way with ENOSPC)."""

import os
import subprocess

from core.config import REPO_ROOT


def test_install_checks_free_space_before_creating_the_venv(tmp_path):
  venv = tmp_path / "venv"
  result = subprocess.run(
      ["bash", os.path.join(REPO_ROOT, "scripts", "install.sh")],
      env={**os.environ, "VENV": str(venv), "INSTALL_NEED_MB": str(10**12)},
      capture_output=True, text=True, timeout=60)
  assert result.returncode == 1
  assert "MB free on" in result.stdout
  assert f"about {10**12} MB are needed under {tmp_path}" in result.stderr
  assert not venv.exists()


def test_install_names_an_unknown_installer_before_creating_the_venv(tmp_path):
  venv = tmp_path / "venv"
  result = subprocess.run(
      ["bash", os.path.join(REPO_ROOT, "scripts", "install.sh")],
      env={**os.environ, "VENV": str(venv), "INSTALLER": "conda"},
      capture_output=True, text=True, timeout=60)
  assert result.returncode == 1
  assert "INSTALLER=conda; use uv (the default) or pip" in result.stderr
  assert not venv.exists()
