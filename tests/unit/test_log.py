"""The suite's log file: the config's logLevel, the size cap, and the
plugins' --version."""

import os

from cnilib.base import log as cnilog
from cnilib.cni import skel


def test_loglevel_key_sets_the_level_unless_the_env_does(tmp_path):
    lg = cnilog.Log("bridge", {"PYCNI_LOG": str(tmp_path / "l")})
    lg.configure({"logLevel": "debug"})
    lg.debug("seen")
    assert lg.lines and lg.lines[0].endswith("debug: seen")
    lg = cnilog.Log("bridge", {"PYCNI_LOG": str(tmp_path / "l"), "PYCNI_LOG_LEVEL": "warning"})
    lg.configure({"logLevel": "debug"})
    lg.debug("not seen")
    lg.info("not seen either")
    assert lg.lines == []


def test_the_file_is_capped_with_one_generation_and_the_line_goes_to_the_new_file(tmp_path, monkeypatch):
    path = tmp_path / "pycni.log"
    monkeypatch.setattr(cnilog, "MAX_BYTES", 100)
    lg = cnilog.Log("bridge", {"PYCNI_LOG": str(path)})
    lg.flush("x" * 150)
    assert path.read_text() == "x" * 150 + "\n"
    lg.flush("after the cap")
    assert path.read_text() == "after the cap\n"
    assert (tmp_path / "pycni.log.1").read_text() == "x" * 150 + "\n"
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"


def test_a_plugin_prints_its_about_line_for_version(capfd):
    plugin = skel.Plugin("fake", add=lambda a: None, delete=lambda a: None, check=lambda a: None)
    assert skel.run(plugin, ["fake", "--version"]) == 0
    out = capfd.readouterr().out
    assert "CNI fake plugin" in out and "1.1.0" in out and out.count("\n") == 1


def test_every_line_is_escaped_so_input_cannot_forge_lines_or_drive_a_terminal(tmp_path):
    """Names from input (a pod's interface or process name, a refused ID)
    reach detail lines and tracebacks: ESC, BEL, newlines and bytes that
    are not UTF-8 are written as escapes, printable text as it is."""
    path = tmp_path / "l.log"
    lg = cnilog.Log("t", {"PYCNI_LOG": str(path)})
    lg.info("renamed %s to %s", "eth0", "\x1b]0;owned\x07")
    lg.warning("pod %s", "naïve/名前\n2026-01-01T00:00:00.000Z bridge[1] ADD forged ok")
    lg.flush("summary cid=\x1b[2J if=et\udcffh0", trace="Traceback\n  ValueError: '\x1b[31m'\n")
    text = path.read_text()
    assert "\x1b" not in text and "\x07" not in text
    lines = text.splitlines()
    assert lines == ["summary cid=\\x1b[2J if=et\\udcffh0",
                     "  renamed eth0 to \\x1b]0;owned\\x07",
                     "  warning: pod naïve/名前\\n2026-01-01T00:00:00.000Z bridge[1] ADD forged ok",
                     "  | Traceback",
                     "  |   ValueError: '\\x1b[31m'"]


def test_cut_bytes_cuts_on_a_character_and_marks_the_cut():
    from cnilib.base.text import cut_bytes
    assert cut_bytes("abc", 3) == "abc"
    assert cut_bytes("\u00e9" * 4, 8) == "\u00e9" * 4
    cut = cut_bytes("\u00e9" * 5, 8)
    assert cut == "\u00e9\u00e9..." and len(cut.encode()) == 7      # never half an é
    assert cut_bytes("\u65e5\u672c" * 3, 10, tail="") == "\u65e5\u672c\u65e5"
