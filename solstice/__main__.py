from solstice.cli.main import main

raise SystemExit(main())
