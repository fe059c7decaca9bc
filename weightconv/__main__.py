from weightconv.cli import main

raise SystemExit(main())
