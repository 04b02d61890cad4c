from bench.security import main

main()
