from napari_textdiff.cli import main
import sys
sys.exit(main())
