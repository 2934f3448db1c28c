"""The Extensions tab's logic: install from a git URL (a local file:// repository made here), update, uninstall,
requirements only on request, enable/disable, and the refusal while the server is exposed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest

from modules.app import create_app
from modules.extensions import installer
from modules.extensions.state import STATE_FILE_NAME
from modules.options import LaunchOptions
from modules.paths import PROJECT_ROOT
from modules.ui import extensions_form, extensions_tab

MANIFEST = """name = "demo-ext"
version = "{version}"
registry_version = 1
entry_point = "main:register"
requirements = ["qrcode>=7"]
"""


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=Test", "-c", "user.email=test@example.com",
                           "-c", "init.defaultBranch=main", *args], cwd=folder, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def make_repository(folder: Path, version: str = "1.0.0") -> str:
    """A git repository holding an extension; returns its file:// URL."""
    folder.mkdir(parents=True)
    git(folder, "init", "-q")
    (folder / "extension.toml").write_text(MANIFEST.format(version=version), encoding="utf-8")
    (folder / "main.py").write_text("def register(registry):\n    pass\n", encoding="utf-8")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "first")
    return folder.resolve().as_uri()


def new_app(data: Path, **flags):
    return create_app(LaunchOptions(data_dir=str(data), nowebui=True, device="cpu", **flags), load_model=False)


@pytest.fixture
def app(tmp_path):
    app = new_app(tmp_path / "data")
    yield app
    app.jobs.shutdown()


# ----------------------------------------------------------------------------------------------- access rule


@pytest.mark.parametrize("flags, refused", [({}, False), ({"listen": True}, True), ({"share": True}, True),
                                            ({"listen": True, "enable_insecure_extension_access": True}, False)])
def test_access_rule(flags, refused):
    refusal = installer.access_refusal(LaunchOptions(**flags))
    assert (refusal is not None) == refused
    if refused:
        assert "--enable-insecure-extension-access" in refusal


def test_install_update_uninstall_are_refused_while_listening(tmp_path):
    app = new_app(tmp_path / "data", listen=True)
    try:
        url = make_repository(tmp_path / "source")
        for action in (lambda: extensions_form.install(app, url),
                       lambda: extensions_form.update(app, "xyz-plot"),
                       lambda: extensions_form.uninstall(app, "xyz-plot", True),
                       lambda: extensions_form.install_requirements(app, "xyz-plot")):
            with pytest.raises(installer.InsecureAccessRefused, match="--listen"):
                action()
        log, message = extensions_form.run_to_end(lambda progress: extensions_form.install(app, url, "", progress))
        assert message.startswith("Error:") and "disabled" in message
        assert not (app.paths.data_dir / "extensions" / "source").exists()
        with gr.Blocks():
            tab = extensions_tab.build_extensions_tab(app)
        assert not tab.install.interactive and not tab.uninstall.interactive and not tab.update.interactive
    finally:
        app.jobs.shutdown()


# ------------------------------------------------------------------------------------- install, update, remove


def test_install_from_a_file_url_then_update_then_uninstall(app, tmp_path):
    source = tmp_path / "source"
    url = make_repository(source)
    log, message = extensions_form.run_to_end(
        lambda progress: extensions_form.install(app, url, "", progress))
    installed = app.paths.data_dir / "extensions" / "source"
    assert "Installed demo-ext 1.0.0" in message and "Restart" in message, message
    assert "Install requirements" in message  # declared, not installed
    assert "Cloning into" in log and (installed / "extension.toml").is_file()
    assert not list((app.paths.data_dir / "extensions").glob(".installing-*"))  # the staging folder is gone
    row = next(row for row in extensions_form.extension_rows(app) if row.name == "demo-ext")
    assert row.status == "installed (restart to load)" and row.version == "1.0.0"
    assert "demo-ext" in extensions_form.table_html(app)

    again = extensions_form.run_to_end(lambda progress: extensions_form.install(app, url, "", progress))[1]
    assert again.startswith("Error:") and "already installed" in again

    assert "up to date" in extensions_form.update(app, "demo-ext")
    (source / "extension.toml").write_text(MANIFEST.format(version="1.1.0"), encoding="utf-8")
    git(source, "commit", "-q", "-am", "second")
    message = extensions_form.update(app, "demo-ext")
    assert message.startswith("Updated demo-ext") and 'version = "1.1.0"' in (installed / "extension.toml").read_text()

    with pytest.raises(ValueError, match="Yes, delete it"):
        extensions_form.uninstall(app, "demo-ext", False)
    assert "Uninstalled demo-ext" in extensions_form.uninstall(app, "demo-ext", True)
    assert not installed.exists()


def test_install_with_a_folder_name_and_bad_urls(app, tmp_path):
    url = make_repository(tmp_path / "source")
    message = extensions_form.install(app, url, "../My Ext!")
    assert (app.paths.data_dir / "extensions" / "My-Ext" / "main.py").is_file(), message
    for bad in ("http://example.com/x.git", "ext::sh -c touch% /tmp/pwned", "--upload-pack=touch /tmp/x", "",
                "/just/a/path", "file://"):
        with pytest.raises(ValueError):
            installer.checked_url(bad)
    assert installer.checked_url("git@github.com:user/repo.git") == "git@github.com:user/repo.git"
    assert installer.folder_name_for("https://github.com/user/sd-webui-cool.git") == "sd-webui-cool"
    assert installer.folder_name_for("git@github.com:user/repo.git") == "repo"
    with pytest.raises(ValueError):
        installer.folder_name_for("https://example.com/...")


def test_a_failing_clone_reports_git_output(app, tmp_path):
    missing = (tmp_path / "no-such-repository").resolve().as_uri()
    log, message = extensions_form.run_to_end(lambda progress: extensions_form.install(app, missing, "", progress))
    assert message.startswith("Error: git clone failed") and "no-such-repository" in message
    assert not (app.paths.data_dir / "extensions" / "no-such-repository").exists()


def test_built_in_extensions_cannot_be_uninstalled_or_pulled(app):
    with pytest.raises(ValueError, match="built in"):
        extensions_form.uninstall(app, "xyz-plot", True)
    assert (PROJECT_ROOT / "extensions" / "xyz-plot" / "xyz.py").is_file()
    with pytest.raises(installer.ExtensionInstallError, match="no .git folder"):
        extensions_form.update(app, "xyz-plot")


# ------------------------------------------------------------------------------------------- requirements


def test_requirements_are_installed_only_on_request(tmp_path):
    folder = tmp_path / "ext"
    folder.mkdir()
    assert installer.pip_install_command(folder, []) is None
    assert installer.pip_install_command(folder, ["qrcode>=7"], python="py") == \
        ["py", "-m", "pip", "install", "--", "qrcode>=7"]
    with pytest.raises(installer.ExtensionInstallError, match="pip options"):
        installer.pip_install_command(folder, ["--index-url=https://evil.example/simple"])
    (folder / "requirements.txt").write_text("qrcode>=7\n")
    assert installer.pip_install_command(folder, [])[-2:] == ["-r", str(folder / "requirements.txt")]


def test_install_requirements_runs_pip_only_when_asked(app):
    assert "declares no requirements" in extensions_form.install_requirements(app, "xyz-plot")
    # the command runs through the same streamed runner as git: a failing command's output becomes the error
    with pytest.raises(installer.ExtensionInstallError, match="boom"):
        installer.run_streamed([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], timeout=30)
    with pytest.raises(installer.ExtensionInstallError, match="timed out"):
        installer.run_streamed([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


# ------------------------------------------------------------------------------------------ enable / disable


def test_enable_disable_is_saved(app):
    assert "xyz-plot" in extensions_form.enabled_names(app)
    message = extensions_form.apply_enabled(app, [name for name in extensions_form.enabled_names(app)
                                                  if name != "xyz-plot"])
    assert "xyz-plot disabled" in message
    saved = json.loads((app.paths.data_dir / STATE_FILE_NAME).read_text())["enabled"]
    assert saved["xyz-plot"] is False
    assert "x/y/z plot" not in [script.name for script in app.extensions.scripts("txt2img")]
    assert "enabled" in extensions_form.set_enabled(app, "xyz-plot", True)
    assert "x/y/z plot" in [script.name for script in app.extensions.scripts("txt2img")]
    assert extensions_form.apply_enabled(app, extensions_form.enabled_names(app)) == "Nothing changed."


def test_the_tab_builds_with_its_controls(app):
    with gr.Blocks() as blocks:
        tab = extensions_tab.build_extensions_tab(app)
        extensions_tab.wire_extensions_tab(app, tab)
    ids = {block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    assert {"extensions_enabled", "extensions_install_url", "extensions_install", "extensions_uninstall",
            "extensions_update", "extensions_install_requirements", "extensions_progress"} <= ids
    assert tab.install.interactive is not False
