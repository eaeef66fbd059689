from sparsegen.cli import main

raise SystemExit(main())
