import sys

from bench.rag import main

main(sys.argv[1:])
