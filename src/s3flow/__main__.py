"""``python -m s3flow``."""

from s3flow.cli import main

main()
