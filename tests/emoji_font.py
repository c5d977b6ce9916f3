"""The emoji font the emoji tests draw with (`LDM_EMOJI_FONT`, else Debian's Noto Color Emoji), and the skip
mark for a machine without it."""
import os
from pathlib import Path

import pytest

from ldm.data import emoji as emoji_data

FONT = Path(os.environ.get("LDM_EMOJI_FONT", emoji_data.DEFAULT_FONT))
needs_font = pytest.mark.skipif(
    not FONT.is_file(), reason=f"emoji font not installed at {FONT} (apt-get install fonts-noto-color-emoji)")
