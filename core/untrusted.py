"""Text that came from a user or a file, made safe to show or hand on (DESIGN: untrusted text never
loads anything from the network; SECURITY.md).

- `markdown`: prompts, answers, guidelines and names shown with st.markdown (or any Streamlit label,
  which is markdown too) must not load images: a `![x](http://host/pixel.png)` in a prompt would tell
  that host every annotator's IP address and when they looked. Links stay, as links load nothing until
  clicked. Raw HTML is not rendered by st.markdown unless unsafe_allow_html=True, which pages never pass.
- `csv_cell`: a text cell that a spreadsheet would run as a formula (OWASP "CSV injection").
"""
from __future__ import annotations

# U+2060 WORD JOINER: invisible and not a line break. Every markdown image, whether inline
# `![a](u)`, reference `![a][r]`, collapsed `![a][]` or shortcut `![a]`, starts with the two
# characters `![`; with nothing matching that, no parser makes an image, whatever the escapes,
# code spans or nesting around it. Inside code the text still reads `![` (as in Rust's `vec![1]`).
_IMAGE_START, _BROKEN = "![", "!\u2060["

# A spreadsheet treats a cell starting with these as a formula (= + - @) or skips to one (tab, CR).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def markdown(text: str) -> str:
    """`text` for st.markdown with every image turned into plain text plus a link: nothing loads."""
    return text.replace(_IMAGE_START, _BROKEN)


def csv_cell(value):
    """A text cell that starts like a formula gets a leading `'`, so it is shown as text; other values
    (numbers included, negative ones too) are returned unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
