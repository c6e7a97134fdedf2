"""`python -m spae_lab.generate TASK --tokenizer ...`: `spae-lab generate` without the CLI."""

from spae_lab.generate.cli import main

raise SystemExit(main())
