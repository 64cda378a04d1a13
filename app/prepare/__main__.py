"""`python -m app.prepare NAME [--models-dir models]`: prepare an embedded model folder."""

from app.prepare.prepare import main

main()
