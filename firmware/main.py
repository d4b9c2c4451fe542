"""Board entry point: MicroPython runs this file after boot.py."""

import nbreader.app

nbreader.app.main()
