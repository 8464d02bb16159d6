"""Options of the ``text-to-pdf`` processor (its ``[pipelines.options]`` table)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from s3flow.settings import text_codec

MM = 72 / 25.4  # points per millimetre

#: Page sizes in points (width, height), portrait.
PAGE_SIZES: dict[str, tuple[float, float]] = {
    "A4": (210 * MM, 297 * MM),
    "Letter": (8.5 * 72, 11 * 72),
}


class TextToPdfOptions(BaseModel):
    """How text becomes PDF pages. Unknown keys are an error naming the key.

    Types are strict: ``title = "yes"`` or ``tab_size = true`` are refused, not
    converted (a whole number is still accepted where a number is).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    page_size: Literal["A4", "Letter"] = Field(default="A4", description="Paper size (portrait).")
    margin_mm: float = Field(
        default=15.0, ge=0, le=80, description="Margin on every side of the page, in millimetres."
    )
    font_size: float = Field(
        default=9.0, ge=4, le=48, description="Body text size in points (line height 1.2x)."
    )
    monospace: bool = Field(
        default=True,
        description="DejaVu Sans Mono (columns and tab stops line up); false: DejaVu Sans.",
    )
    font_file: str | None = Field(
        default=None,
        description="A TrueType (.ttf) file to use instead of DejaVu (for scripts it lacks).",
    )
    encoding: str = Field(
        default="utf-8",
        description="Text encoding of the objects; bytes that do not decode are a permanent "
        "error naming the byte offset.",
    )
    tab_size: int = Field(default=8, ge=1, le=32, description="Tab stops every N columns.")
    compress_level: int = Field(
        default=6, ge=0, le=9, description="zlib level of page contents (0: uncompressed)."
    )
    title: bool = Field(default=True, description="Print the source key at the top of every page.")
    page_numbers: bool = Field(
        default=True, description="Print 'Page N' at the bottom of every page."
    )

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, v: str) -> str:
        return text_codec(v)

    @field_validator("font_file")
    @classmethod
    def _font_file_named(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError(
                "must not be empty: give the path of a TrueType (.ttf) file, or leave "
                "font_file out for DejaVu"
            )
        return v

    @model_validator(mode="after")
    def _room_for_text(self) -> TextToPdfOptions:
        width, height = PAGE_SIZES[self.page_size]
        margin = self.margin_mm * MM
        # At least 10 columns and 3 lines of body text (with the title and page number).
        if width - 2 * margin < 10 * self.font_size * 0.6:
            raise ValueError(
                f"margin_mm = {self.margin_mm} leaves no room for 10 characters of "
                f"font_size {self.font_size} on {self.page_size}"
            )
        if height - 2 * margin < 6 * self.font_size * 1.2:
            raise ValueError(
                f"margin_mm = {self.margin_mm} leaves no room for text lines of "
                f"font_size {self.font_size} on {self.page_size}"
            )
        return self
