from jaxseg.bench.cli import main

main()
