"""The console's screens: the dashboard, the PIN modal and the operations screens.

``OPERATION_SCREENS`` maps each operations screen's name to its class; the
app installs each one as a mode under that name.
"""

from __future__ import annotations

from textual.screen import Screen

from tui.screens.creators import CreatorsScreen
from tui.screens.drops import DropsScreen
from tui.screens.kits import KitsScreen
from tui.screens.pos import PosScreen
from tui.screens.readers import ReadersScreen
from tui.screens.stream import StreamScreen
from tui.screens.system import SystemScreen
from tui.screens.tokens import TokensScreen

OPERATION_SCREENS: dict[str, type[Screen[None]]] = {
    "readers": ReadersScreen,
    "drops": DropsScreen,
    "pos": PosScreen,
    "creators": CreatorsScreen,
    "tokens": TokensScreen,
    "kits": KitsScreen,
    "stream": StreamScreen,
    "system": SystemScreen,
}
