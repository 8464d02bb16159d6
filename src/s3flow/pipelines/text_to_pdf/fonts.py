"""The TrueType font a document is set in: where it is, its metrics, its subsets.

The default fonts are DejaVu Sans Mono and DejaVu Sans (Latin, Greek, Cyrillic
and more), shipped by the Debian package ``fonts-dejavu-core`` that
``scripts/install`` installs. ReportLab parses the font (``TTFontFace``) and cuts
the subsets embedded in the PDF (``makeSubset``). A font is loaded once per
process and shared by every document: it is read-only except for subsetting,
which reads the file through a cursor and is therefore serialised by a lock.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from s3flow.errors import ConfigError

#: The Debian package that ships the default fonts.
FONT_PACKAGE = "fonts-dejavu-core"
SANS_FILE = "DejaVuSans.ttf"
MONO_FILE = "DejaVuSansMono.ttf"
#: Where distributions put DejaVu (Debian/Ubuntu first).
FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/TTF",
    "/usr/share/fonts/truetype",
)


class CharWidths(dict[str, float]):
    """Advance widths in 1/1000 em by character; characters the font lacks get its default."""

    def __init__(self, widths: dict[str, float], default: float) -> None:
        super().__init__(widths)
        self.default = default

    def __missing__(self, key: str) -> float:
        return self.default


@dataclass
class Font:
    """A parsed TrueType font: metrics for layout, subsets for embedding."""

    name: str  # PostScript name, e.g. "DejaVuSansMono"
    path: str
    face: Any  # reportlab.pdfbase.ttfonts.TTFontFace
    widths: CharWidths
    #: The advance of every glyph when they are all equal (a monospaced font), else None.
    fixed_width: float | None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def has_glyph(self, codepoint: int) -> bool:
        """Whether the font draws ``codepoint`` (otherwise its .notdef box is shown)."""
        return codepoint in self.face.charToGlyph

    def make_subset(self, codepoints: list[int]) -> bytes:
        """A TrueType font whose code ``i`` draws ``codepoints[i]`` (at most 256 codes)."""
        with self._lock:
            data: bytes = self.face.makeSubset(codepoints)
        return data

    def descriptor(self) -> dict[str, Any]:
        """FontDescriptor values (PDF glyph space, 1/1000 em)."""
        face = self.face
        return {
            "Ascent": round(face.ascent, 3),
            "Descent": round(face.descent, 3),
            "CapHeight": round(face.capHeight, 3),
            "Flags": (face.flags & ~(1 << 5)) | (1 << 2),  # symbolic: codes are our own
            "FontBBox": [round(v, 3) for v in face.bbox],
            "ItalicAngle": round(face.italicAngle, 3),
            "StemV": round(face.stemV, 3),
            "MissingWidth": round(face.defaultWidth, 3),
        }


_FONTS: dict[str, Font] = {}
_FONTS_LOCK = threading.Lock()


def find_font(monospace: bool, font_file: str | None = None) -> str:
    """The path of the font to use; ConfigError naming the package when it is missing."""
    if font_file:
        path = os.path.expanduser(font_file)
        if not os.path.isfile(path):
            raise ConfigError(f"text-to-pdf: font_file {font_file!r} does not exist")
        return path
    wanted = MONO_FILE if monospace else SANS_FILE
    for directory in FONT_DIRS:
        path = os.path.join(directory, wanted)
        if os.path.isfile(path):
            return path
    raise ConfigError(
        f"text-to-pdf needs the font {wanted}, which is not in {', '.join(FONT_DIRS)}: "
        f"install the Debian package {FONT_PACKAGE} (apt-get install {FONT_PACKAGE}; "
        "scripts/install does it) or set [pipelines.options] font_file to a .ttf file"
    )


def load_font(path: str) -> Font:
    """Parse ``path`` once per process (ConfigError naming ``font_file`` and the file when
    it is not a usable TrueType font: not one at all, truncated, unreadable)."""
    with _FONTS_LOCK:
        font = _FONTS.get(path)
        if font is None:
            font = _FONTS[path] = _parse(path)
    return font


def _parse(path: str) -> Font:
    from reportlab.pdfbase.ttfonts import TTFontFace

    try:
        face = TTFontFace(path)
    except Exception as exc:  # TTFError, OSError; struct.error, IndexError... when truncated
        detail = str(exc) or type(exc).__name__
        raise ConfigError(
            f"text-to-pdf: cannot use font {path}: not a complete TrueType font ({detail}); "
            "set [pipelines.options] font_file to a .ttf file that is, or leave font_file "
            f"out to use DejaVu ({FONT_PACKAGE})"
        ) from exc
    char_widths: dict[int, float] = face.charWidths
    widths = CharWidths({chr(cp): w for cp, w in char_widths.items()}, face.defaultWidth)
    advances = set(char_widths.values()) | {face.defaultWidth}
    name = face.name.decode("latin-1") if isinstance(face.name, bytes) else str(face.name)
    return Font(
        name=name,
        path=path,
        face=face,
        widths=widths,
        fixed_width=advances.pop() if len(advances) == 1 else None,
    )
