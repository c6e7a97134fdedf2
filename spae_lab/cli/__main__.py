"""`python -m spae_lab.cli ...` (torchrun needs a module to start): the same as `spae-lab ...`."""

from spae_lab.cli.main import main

raise SystemExit(main())
