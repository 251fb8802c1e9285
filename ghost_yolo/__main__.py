"""python -m ghost_yolo: the ghost command."""

from ghost_yolo.cli import main

main()
