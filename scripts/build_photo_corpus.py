#!/usr/bin/env python3
"""Build the packaged tiny model's photo corpus from Debian's wallpaper packages, bit for bit.

    python scripts/build_photo_corpus.py --output photos/            # download, extract, downscale, verify
    python scripts/build_photo_corpus.py --output photos/ --debs DIR  # .deb files already downloaded

What it builds is fixed by ``corpus/debian-photos.json`` (committed): the packages at exact versions
(and each ``.deb``'s sha256), the photographs chosen from them (why each is in, why the rest of each
package is out), the downscale (long side ≤ 1024 px, Pillow's Lanczos, 8-bit RGB PNG) and, per
resulting photo, the sha256 of its decoded pixels and its author and licence. Output: one PNG per
photo in ``--output``/train/ or ``--output``/validation/ (the manifest's split) plus ``NOTICE.md`` (authors and licences). A photo whose pixels differ from the
manifest is an error (exit 1): the corpus is then not the one the packaged model was trained on.

Needs ``apt-get`` and ``dpkg`` (any Debian or Ubuntu machine); without them it says so, exit 2.
``--record`` rewrites the manifest's hashes and licences from what it built (maintainers only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "corpus" / "debian-photos.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="folder for the photos (created)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help="the corpus manifest (default: %(default)s)")
    parser.add_argument("--debs", type=Path, default=None, help="folder holding the .deb files (default: download)")
    parser.add_argument("--record", action="store_true", help="write the built photos' hashes into the manifest")
    args = parser.parse_args(argv)
    try:
        manifest = json.loads(args.manifest.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: --manifest {args.manifest}: {exc}", file=sys.stderr)
        return 2
    missing = [tool for tool in ("dpkg-deb",) + (() if args.debs else ("apt-get",)) if shutil.which(tool) is None]
    if missing:
        print(f"error: {' and '.join(missing)} not found: the corpus is built from Debian packages; "
              "run this on a Debian or Ubuntu machine", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dd-corpus-") as tmp:
        debs = args.debs or _download(manifest["packages"], Path(tmp) / "debs")
        if debs is None:
            return 2
        roots = _extract(manifest["packages"], debs, Path(tmp) / "x")
        if roots is None:
            return 2
        return _build(manifest, roots, args.output, args.manifest if args.record else None)


def _download(packages: dict, where: Path) -> Path | None:
    where.mkdir(parents=True)
    for name, pkg in packages.items():
        result = subprocess.run(["apt-get", "download", f"{name}={pkg['version']}"], cwd=where,
                                capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"error: apt-get download {name}={pkg['version']}: {last} (run `apt-get update` first?)",
                  file=sys.stderr)
            return None
    return where


def _extract(packages: dict, debs: Path, where: Path) -> dict[str, Path] | None:
    """package name -> the folder its .deb was extracted into; each .deb checked against its sha256."""
    roots = {}
    for name, pkg in packages.items():
        found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:
            print(f"error: --debs {debs}: no {name}_*.deb", file=sys.stderr)
            return None
        deb = found[-1]
        digest = _sha256(deb.read_bytes())
        if pkg.get("deb_sha256") and digest != pkg["deb_sha256"]:
            print(f"error: {deb.name}: sha256 {digest} is not the manifest's {pkg['deb_sha256']} "
                  f"(version {pkg['version']} expected)", file=sys.stderr)
            return None
        pkg["deb_sha256"] = digest
        roots[name] = where / name
        roots[name].mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(roots[name])], check=True)
    return roots


def _build(manifest: dict, roots: dict[str, Path], output: Path, record_to: Path | None) -> int:
    from PIL import Image, ImageOps

    long_side = manifest["downscale"]["long_side"]
    output.mkdir(parents=True, exist_ok=True)
    mismatched = []
    for photo in manifest["photos"]:
        with Image.open(roots[photo["package"]] / photo["path"]) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            scale = long_side / max(im.size)
            if scale < 1:  # never upscale
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
            pixels = _sha256(im.tobytes() + f"{im.width}x{im.height}".encode())
            final = output / photo["split"] / photo["name"]  # train/ and validation/: data.images, data.validation_images
            final.parent.mkdir(exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp")
            im.save(tmp, format="PNG")
            tmp.replace(final)  # no partial file under the final name
        photo.update(_licence(photo, roots[photo["package"]]))
        if record_to is None and photo.get("pixels_sha256") != pixels:
            mismatched.append(photo["name"])
        photo["pixels_sha256"], photo["size"] = pixels, [im.width, im.height]
    (output / "NOTICE.md").write_text(notice(manifest))
    if record_to is not None:
        record_to.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    if mismatched:
        print(f"error: {len(mismatched)} photo(s) differ from the manifest: {', '.join(mismatched)}", file=sys.stderr)
        return 1
    print(f"{len(manifest['photos'])} photos in {output} (pixels match {MANIFEST.name})")
    return 0


def _licence(photo: dict, root: Path) -> dict:
    """Author and licence as the package states them: a KDE wallpaper's metadata.json, else the
    Debian copyright file's stanza for this file."""
    if photo["package"] == "plasma-workspace-wallpapers":
        meta = json.loads((root / Path(photo["path"]).parents[2] / "metadata.json").read_text())["KPlugin"]
        return {"author": ", ".join(a["Name"] for a in meta["Authors"]), "licence": meta["License"],
                "licence_source": str(Path(photo["path"]).parents[2] / "metadata.json")}
    copyright_file = next(root.glob("usr/share/doc/*/copyright"))
    stanza = _copyright_stanza(copyright_file.read_text(), Path(photo["path"]))
    return {"author": stanza["Copyright"], "licence": stanza["License"],
            "licence_source": str(copyright_file.relative_to(root))}


def _copyright_stanza(text: str, path: Path) -> dict:
    """The machine-readable copyright stanza whose ``Files:`` names ``path``'s file (the source tree's
    folders differ from the installed ones, the file names do not)."""
    want = path.name
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if any(Path(f).name == want for f in fields.get("Files", "").split()):
            copyright_ = " ".join(fields.get("Copyright", "").split())
            return {"Copyright": copyright_, "License": fields.get("License", "").split("\n")[0]}
    raise LookupError(f"no copyright stanza names {want}")


def notice(manifest: dict) -> str:
    """NOTICE.md: every photograph with its author, licence and where the licence is stated."""
    lines = ["# Photographs of the deblurdiff tiny model's training corpus", "",
             "From Debian packages (" + ", ".join(f"{n} {p['version']}" for n, p in manifest["packages"].items())
             + f"), downscaled to a long side of {manifest['downscale']['long_side']} px. Each photograph keeps "
             "its licence; the authors are as each package states them.", "",
             "| photo | split | author | licence | package |", "|---|---|---|---|---|"]
    for p in manifest["photos"]:
        lines.append(f"| {p['name']} | {p['split']} | {p.get('author', '?')} | {p.get('licence', '?')} "
                     f"| {p['package']} |")
    return "\n".join(lines) + "\n"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
