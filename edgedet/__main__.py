from edgedet.cli import main

raise SystemExit(main())
