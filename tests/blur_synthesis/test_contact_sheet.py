"""The contact-sheet script renders one row (sharp | blurry | PSFs) per sample and writes a PNG.

Called in-process through its ``main(argv)`` (what ``python -m deblurdiff.blur_synthesis.contact_sheet``
runs) to spare a second interpreter's start-up of torch on 2 cores.
"""

from PIL import Image

from deblurdiff.blur_synthesis.contact_sheet import main


def test_contact_sheet_writes_a_png(tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["--recipe", "clean-motion", "--rows", "2", "--size", "64", "--output", str(out)]) == 0
    im = Image.open(out)
    assert im.mode == "RGB" and im.width > 3 * 64 and im.height > 2 * 64
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no temp files left behind
    assert "wrote" in capsys.readouterr().out


def test_contact_sheet_bad_recipe_is_one_line_exit_2(tmp_path, capsys):
    assert main(["--recipe", "nope", "--rows", "1", "--size", "32", "--output", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "unknown name" in err
    assert not (tmp_path / "x.png").exists()
