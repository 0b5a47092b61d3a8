"""scripts/build_photo_corpus.py: what it says, in one line and exit 2, when it cannot build the corpus.
(The build itself needs Debian's packages from the registry; its pixel hashes were checked by hand, RESULTS.md.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_photo_corpus.py"


def run(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = None if path is None else {"PATH": path}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=env)


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    return lines[0]


def test_without_debian_tools_it_says_so(tmp_path):
    line = one_line(run("--output", str(tmp_path / "photos"), path=str(tmp_path)))  # no apt-get, no dpkg-deb
    assert "apt-get" in line and "dpkg-deb" in line and "Debian" in line
    assert not (tmp_path / "photos").exists()


def test_a_manifest_that_is_not_json_is_named(tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    line = one_line(run("--output", str(tmp_path / "photos"), "--manifest", str(bad), "--debs", str(tmp_path)))
    assert line.startswith(f"error: --manifest {bad}:")


def test_missing_or_altered_packages_are_named(tmp_path):
    debs = tmp_path / "debs"
    debs.mkdir()
    line = one_line(run("--output", str(tmp_path / "photos"), "--debs", str(debs)))
    assert "no lomiri-wallpapers-16.04_*.deb" in line
    (debs / "lomiri-wallpapers-16.04_20.04.0-2_all.deb").write_bytes(b"not the package")
    line = one_line(run("--output", str(tmp_path / "photos"), "--debs", str(debs)))
    assert "lomiri-wallpapers-16.04_20.04.0-2_all.deb: sha256" in line and "is not the manifest's" in line
    assert not (tmp_path / "photos").exists()  # nothing built from a package that is not the pinned one
