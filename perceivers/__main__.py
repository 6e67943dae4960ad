from perceivers.cli.main import main

raise SystemExit(main())
